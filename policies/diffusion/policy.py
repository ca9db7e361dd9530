"""Diffusion Policy (Chi et al. 2023): state and camera observations, action chunking.

Training: DDPM noise prediction on normalized action chunks, conditioned on the flattened normalized
observation window (states plus `policies.vision` camera features). Inference: DDIM (default, deterministic given the initial noise) or DDPM.
`predict_action_chunk(obs, noise)` takes an explicit initial latent: DSRL steers the policy through it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from einops import rearrange

from data.normalize import Normalizer
from policies.base import Policy
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.unet import ConditionalUnet1D


class DiffusionPolicy(Policy):
    policy_type: ClassVar[str] = "diffusion"
    config_class: ClassVar[type] = DiffusionConfig

    def __init__(self, config: DiffusionConfig, normalizer: Normalizer) -> None:
        super().__init__(config, normalizer)
        self.unet = ConditionalUnet1D(
            action_dim=config.action_dim,
            global_cond_dim=config.obs_feature_dim * config.n_obs_steps,
            down_dims=config.down_dims,
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
            step_embed_dim=config.diffusion_step_embed_dim,
        )
        scheduler_kwargs = dict(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            clip_sample=config.clip_sample,
            clip_sample_range=config.clip_sample_range,
            prediction_type=config.prediction_type,
        )
        self.train_scheduler = DDPMScheduler(**scheduler_kwargs)
        if config.inference_scheduler == "ddim":
            self.sample_scheduler = DDIMScheduler(**scheduler_kwargs, set_alpha_to_one=True, steps_offset=0)
        else:
            self.sample_scheduler = DDPMScheduler(**scheduler_kwargs)
        self.sample_scheduler.set_timesteps(config.num_inference_steps)

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
        # optional fixed `noise` / `timesteps` (a reproducible validation loss, the DDP gradient test); else drawn
        noise = batch["noise"] if "noise" in batch else torch.randn_like(actions)
        timesteps = batch["timesteps"] if "timesteps" in batch else torch.randint(0, cfg.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, timesteps)
        pred = self.unet(noisy, timesteps, cond)
        target = noise if cfg.prediction_type == "epsilon" else actions
        loss = F.mse_loss(pred, target, reduction="none")
        if cfg.mask_padded_actions:
            valid = ~batch[f"{cfg.action_key}_is_pad"]
            loss = loss * valid[..., None]
            loss = loss.sum() / (valid.sum() * loss.shape[-1]).clamp(min=1)
        else:
            loss = loss.mean()
        return loss, {"loss": loss.item()}

    # ---- inference -------------------------------------------------------------------------------
    def noise_shape(self, batch_size: int) -> tuple[int, int, int]:
        return (batch_size, self.config.horizon, self.config.action_dim)

    @torch.no_grad()
    def sample_normalized(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Denoise `noise` (B, horizon, action_dim) into a normalized action chunk."""
        scheduler = self.sample_scheduler
        timesteps = scheduler.timesteps.to(cond.device)
        batch = cond.shape[0]
        # FiLM parameters for every denoising step in one batched call: (steps * B) rows, then split.
        films = self.unet.film(timesteps.repeat_interleave(batch), cond.repeat(len(timesteps), 1))
        films_per_step = [f.split(batch) for f in films]
        x = noise
        for i, t in enumerate(timesteps):
            pred = self.unet.denoise(x, [f[i] for f in films_per_step])
            x = scheduler.step(pred, t, x).prev_sample
        return x

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
