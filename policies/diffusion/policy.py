"""Diffusion Policy (Chi et al. 2023): state and camera observations, action chunking.

Training: a denoiser (`backbone`: unet, mlp or transformer; policies/diffusion/backbones.py) learns the
`objective` (ddpm noise prediction or rectified flow; policies/diffusion/sampling.py) on normalized action
chunks, conditioned on the flattened normalized observation window (states plus `policies.vision` camera
features). Inference integrates from an initial latent with the configured sampler.
`predict_action_chunk(obs, noise)` takes that latent explicitly: DSRL steers the policy through it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from einops import rearrange
from torch import nn

from data.normalize import Normalizer
from policies.base import Policy
from policies.diffusion.backbones import make_denoiser
from policies.diffusion.config import DETERMINISTIC_SAMPLERS, DiffusionConfig
from policies.diffusion.sampling import Sampler, ddpm_kwargs, training_target

# Config fields added in checkpoint format 4, with the values that reproduce what a format-3 checkpoint computed.
FORMAT_4_FIELDS = {
    "backbone": "unet", "objective": "ddpm", "level2_samples": 1, "mlp_hidden_dim": 512, "mlp_blocks": 3,
    "transformer_dim": 256, "transformer_layers": 8, "transformer_heads": 4, "transformer_dropout": 0.01,
}


class DiffusionPolicy(Policy):
    policy_type: ClassVar[str] = "diffusion"
    config_class: ClassVar[type] = DiffusionConfig
    fields_added: ClassVar[dict[int, dict]] = {4: FORMAT_4_FIELDS}

    def __init__(self, config: DiffusionConfig, normalizer: Normalizer) -> None:
        super().__init__(config, normalizer)
        # registered under the backbone's name, so state-dict keys read unet.*, mlp.* or transformer.*
        self.add_module(config.backbone, make_denoiser(config))
        self.train_scheduler = DDPMScheduler(**ddpm_kwargs(config))
        self.sampler = Sampler(config, config.inference_scheduler, config.num_inference_steps)
        self.compiled_sampling = None  # set by policies.diffusion.compile.compile_sampling

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self, self.config.backbone)

    @property
    def deterministic_sampling(self) -> bool:
        """Whether the chunk is a fixed function of (observation, initial noise), as DSRL needs."""
        return self.sampler.name in DETERMINISTIC_SAMPLERS

    def set_sampler(self, name: str | None = None, steps: int | None = None) -> None:
        """Switch the inference sampler and/or its steps (e.g. eval.py --sampler dpm_solver --num-inference-steps 3).

        Raises ValueError when the sampler does not fit the objective the model was trained with."""
        self.sampler = Sampler(self.config, name or self.sampler.name, steps or self.sampler.steps)
        self.compiled_sampling = None

    # ---- conditioning ----------------------------------------------------------------------------
    def global_cond(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized observation window (B, n_obs_steps, ...) per key -> (B, n_obs_steps * obs_feature_dim)."""
        return rearrange(self.obs_window_features(obs), "b t d -> b (t d)")

    # ---- training --------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        batch = self.normalizer.normalize_batch(batch)
        cond = self.global_cond({k: batch[k][:, : cfg.n_obs_steps] for k in cfg.obs_keys})
        actions = batch[cfg.action_key]
        valid = ~batch[f"{cfg.action_key}_is_pad"] if cfg.mask_padded_actions else None
        if cfg.level2_samples > 1:  # several noised draws per encoded observation
            cond, actions = cond.repeat_interleave(cfg.level2_samples, 0), actions.repeat_interleave(cfg.level2_samples, 0)
            valid = valid.repeat_interleave(cfg.level2_samples, 0) if valid is not None else None
        # optional fixed `noise` / `timesteps` (a reproducible validation loss, the DDP gradient test); else drawn
        noise = batch["noise"] if "noise" in batch else torch.randn_like(actions)
        noisy, times, target = training_target(cfg, self.train_scheduler, actions, noise, batch.get("timesteps"))
        pred = self.denoiser(noisy, times, cond)
        loss = F.mse_loss(pred, target, reduction="none")
        if valid is not None:
            loss = loss * valid[..., None]
            loss = loss.sum() / (valid.sum() * loss.shape[-1]).clamp(min=1)
        else:
            loss = loss.mean()
        return loss, {"loss": loss.item()}

    # ---- inference -------------------------------------------------------------------------------
    def noise_shape(self, batch_size: int) -> tuple[int, int, int]:
        return (batch_size, self.config.horizon, self.config.action_dim)

    def sampler_core(self) -> DiffusionPolicy:
        return self

    @torch.no_grad()
    def sample_normalized(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Integrate `noise` (B, horizon, action_dim) into a normalized action chunk."""
        if self.compiled_sampling is not None:
            out = self.compiled_sampling(cond, noise)
            if out is not None:
                return out
        return self.sample_eager(cond, noise)

    def sample_eager(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The sampling loop itself (what policies/diffusion/compile.py traces)."""
        denoiser = self.denoiser
        # everything that depends only on (time, observation) for every step in one batched call
        contexts = denoiser.step_contexts(self.sampler.timesteps.to(cond.device), cond)
        return self.sampler.run(lambda x, i: denoiser.denoise(x, contexts[i]), noise)

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        cond = self.global_cond(self.normalize_obs(obs))
        shape = self.noise_shape(cond.shape[0])
        if noise is None:
            noise = torch.randn(shape, device=cond.device, dtype=cond.dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape} (B, horizon, action_dim)")
        actions = self.sample_normalized(cond, noise.to(cond.dtype))
        return self.normalizer.unnormalize(cfg.action_key, actions)
