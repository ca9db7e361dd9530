"""Diffusion Policy hyperparameters. Every field is saved in the checkpoint's config.json."""

from __future__ import annotations

from dataclasses import dataclass

from policies.io_config import PolicyIOConfig

BACKBONES = ("unet", "mlp", "transformer")
# Which samplers can integrate a model trained with each objective (policies/diffusion/sampling.py).
SAMPLERS_FOR_OBJECTIVE: dict[str, tuple[str, ...]] = {"ddpm": ("ddim", "ddpm", "dpm_solver", "unipc"), "flow": ("euler",)}
DETERMINISTIC_SAMPLERS = ("ddim", "dpm_solver", "unipc", "euler")


@dataclass(frozen=True)
class DiffusionConfig(PolicyIOConfig):
    # --- chunking ---
    n_obs_steps: int = 2
    """Observation steps the policy conditions on (current one included)."""
    horizon: int = 16
    """Actions predicted per chunk, starting at the oldest observation step."""
    n_action_steps: int = 8
    """Actions executed from each chunk before planning again."""

    # --- denoiser ---
    backbone: str = "unet"
    """Denoiser network: unet (1-D temporal UNet with FiLM), mlp (residual MLP with adaptive LayerNorm over
    the flattened chunk) or transformer (the Diffusion Policy paper's time-series transformer)."""

    # unet
    down_dims: tuple[int, ...] = (64, 128, 256)
    """Channels per UNet level; len(down_dims)-1 halvings of the horizon."""
    kernel_size: int = 5
    """Temporal convolution width."""
    n_groups: int = 8
    """GroupNorm groups."""
    diffusion_step_embed_dim: int = 128
    """Size of the sinusoidal timestep embedding after its MLP (unet and mlp)."""

    # mlp
    mlp_hidden_dim: int = 512
    """Width of the residual MLP (backbone=mlp)."""
    mlp_blocks: int = 3
    """Residual blocks of the MLP (backbone=mlp)."""

    # transformer
    transformer_dim: int = 256
    """Token width (backbone=transformer)."""
    transformer_layers: int = 8
    """Decoder layers (backbone=transformer)."""
    transformer_heads: int = 4
    """Attention heads (backbone=transformer)."""
    transformer_dropout: float = 0.01
    """Dropout in attention and feed-forward layers (backbone=transformer)."""

    # --- diffusion ---
    objective: str = "ddpm"
    """Training objective: ddpm (noise prediction on a discrete DDPM schedule) or flow (rectified flow:
    velocity prediction on straight noise-to-action paths, made for 1-3 sampling steps)."""
    num_train_timesteps: int = 100
    """DDPM training steps; for flow, the scale of the time fed to the network (t in [0, 1] times this)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers beta schedule (objective=ddpm)."""
    prediction_type: str = "epsilon"
    """What the network predicts under objective=ddpm: epsilon or sample (flow always predicts velocity)."""
    clip_sample: bool = True
    """Clip the predicted clean sample (ddpm) or the final chunk (flow) to [-clip_sample_range, clip_sample_range]."""
    clip_sample_range: float = 1.0
    """Clip range, in normalized action units."""
    inference_scheduler: str = "ddim"
    """Sampler. objective=ddpm: ddim, dpm_solver (DPM-Solver++ multistep) or unipc (deterministic, few steps)
    or ddpm (stochastic). objective=flow: euler (deterministic)."""
    num_inference_steps: int = 10
    """Denoising steps at inference."""
    mask_padded_actions: bool = False
    """Exclude actions padded past the episode end from the loss."""
    level2_samples: int = 1
    """Noised action samples per observation in each training batch (Mini-Diffuser's level-2 minibatching):
    the observation encoder runs once per window and the denoiser sees level2_samples draws of it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_obs_steps < 1 or self.n_action_steps < 1:
            raise ValueError("n_obs_steps and n_action_steps must be >= 1")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"horizon={self.horizon} is too short: executing n_action_steps={self.n_action_steps} after "
                f"n_obs_steps={self.n_obs_steps} needs horizon >= {self.n_obs_steps - 1 + self.n_action_steps}"
            )
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid: {list(BACKBONES)}")
        if self.objective not in SAMPLERS_FOR_OBJECTIVE:
            raise ValueError(f"unknown objective {self.objective!r}; valid: {list(SAMPLERS_FOR_OBJECTIVE)}")
        check_sampler(self.objective, self.inference_scheduler, self.num_inference_steps, self.num_train_timesteps)
        if self.prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {self.prediction_type!r}")
        if self.level2_samples < 1:
            raise ValueError(f"level2_samples must be >= 1, got {self.level2_samples}")
        if self.backbone == "mlp" and (self.mlp_hidden_dim < 1 or self.mlp_blocks < 1):
            raise ValueError(f"mlp_hidden_dim and mlp_blocks must be >= 1, got {self.mlp_hidden_dim}, {self.mlp_blocks}")
        if self.backbone == "transformer" and self.transformer_dim % self.transformer_heads:
            raise ValueError(f"transformer_dim={self.transformer_dim} must be divisible by transformer_heads={self.transformer_heads}")
        if self.backbone != "unet":
            return
        factor = 2 ** (len(self.down_dims) - 1)
        if self.horizon % factor:
            raise ValueError(f"horizon={self.horizon} must be divisible by {factor} for down_dims={self.down_dims}")
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"every down_dims entry must be divisible by n_groups={self.n_groups}: {self.down_dims}")

    @property
    def action_window(self) -> int:
        """Actions a training window needs."""
        return self.horizon


def check_sampler(objective: str, sampler: str, steps: int, num_train_timesteps: int) -> None:
    """Raise a ValueError naming the objective and sampler when they do not fit, or when `steps` is out of range."""
    every = sorted({s for samplers in SAMPLERS_FOR_OBJECTIVE.values() for s in samplers})
    if sampler not in every:
        raise ValueError(f"unknown sampler (inference_scheduler) {sampler!r}; valid: {every}")
    if sampler not in SAMPLERS_FOR_OBJECTIVE[objective]:
        raise ValueError(
            f"sampler {sampler!r} cannot sample a model trained with objective {objective!r}; "
            f"valid for {objective!r}: {list(SAMPLERS_FOR_OBJECTIVE[objective])}"
        )
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {steps}")
