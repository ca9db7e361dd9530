"""Diffusion Policy hyperparameters. Every field is saved in the checkpoint's config.json."""

from __future__ import annotations

from dataclasses import dataclass

from policies.io_config import PolicyIOConfig


@dataclass(frozen=True)
class DiffusionConfig(PolicyIOConfig):
    # --- chunking ---
    n_obs_steps: int = 2
    """Observation steps the policy conditions on (current one included)."""
    horizon: int = 16
    """Actions predicted per chunk, starting at the oldest observation step."""
    n_action_steps: int = 8
    """Actions executed from each chunk before planning again."""

    # --- network: 1-D conditional UNet with FiLM ---
    down_dims: tuple[int, ...] = (64, 128, 256)
    """Channels per UNet level; len(down_dims)-1 halvings of the horizon."""
    kernel_size: int = 5
    """Temporal convolution width."""
    n_groups: int = 8
    """GroupNorm groups."""
    diffusion_step_embed_dim: int = 128
    """Size of the sinusoidal timestep embedding after its MLP."""

    # --- diffusion ---
    num_train_timesteps: int = 100
    """DDPM training steps."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers beta schedule."""
    prediction_type: str = "epsilon"
    """What the network predicts: epsilon or sample."""
    clip_sample: bool = True
    """Clip the predicted clean sample to [-clip_sample_range, clip_sample_range] while sampling."""
    clip_sample_range: float = 1.0
    """Clip range, in normalized action units."""
    inference_scheduler: str = "ddim"
    """ddim (deterministic, few steps) or ddpm."""
    num_inference_steps: int = 10
    """Denoising steps at inference."""
    mask_padded_actions: bool = False
    """Exclude actions padded past the episode end from the loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_obs_steps < 1 or self.n_action_steps < 1:
            raise ValueError("n_obs_steps and n_action_steps must be >= 1")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"horizon={self.horizon} is too short: executing n_action_steps={self.n_action_steps} after "
                f"n_obs_steps={self.n_obs_steps} needs horizon >= {self.n_obs_steps - 1 + self.n_action_steps}"
            )
        factor = 2 ** (len(self.down_dims) - 1)
        if self.horizon % factor:
            raise ValueError(f"horizon={self.horizon} must be divisible by {factor} for down_dims={self.down_dims}")
        if self.inference_scheduler not in ("ddim", "ddpm"):
            raise ValueError(f"inference_scheduler must be 'ddim' or 'ddpm', got {self.inference_scheduler!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {self.num_inference_steps}")
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"every down_dims entry must be divisible by n_groups={self.n_groups}: {self.down_dims}")

    @property
    def action_window(self) -> int:
        """Actions a training window needs."""
        return self.horizon
