"""Denoiser backbones for Diffusion Policy: `unet`, `mlp` and `transformer`, behind one small interface.

Every backbone maps a noisy normalized action chunk `(B, horizon, action_dim)`, a diffusion time `(B,)`
and the flattened observation features `(B, global_cond_dim)` to a prediction of the chunk's shape.

Sampling calls the denoiser several times with the same observation. `step_contexts(timesteps, cond)`
computes whatever depends only on (time, observation) for every sampling step in one batched call, and
`denoise(sample, context)` runs the part that depends on the noisy chunk. `forward` is the two composed,
used in training.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from policies.diffusion.config import BACKBONES, DiffusionConfig
from policies.diffusion.unet import ConditionalUnet1D, SinusoidalPosEmb, step_encoder


class MLPDenoiser(nn.Module):
    """Residual MLP over the flattened chunk; each block's LayerNorm is modulated (scale, shift) by the
    time and observation embedding (adaptive LayerNorm, as in DiT). The modulations depend only on
    (time, observation), so sampling computes them once per chunk for every step."""

    def __init__(self, action_dim: int, horizon: int, global_cond_dim: int, hidden_dim: int, n_blocks: int, step_embed_dim: int) -> None:
        super().__init__()
        self.horizon, self.action_dim, self.hidden_dim = horizon, action_dim, hidden_dim
        self.step_encoder = step_encoder(step_embed_dim)
        # one projection of the condition gives the input bias and every block's (scale, shift)
        self.cond_proj = nn.Sequential(nn.Mish(), nn.Linear(step_embed_dim + global_cond_dim, hidden_dim * (1 + 2 * n_blocks)))
        self.in_proj = nn.Linear(horizon * action_dim, hidden_dim)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim, elementwise_affine=False) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Mish(), nn.Linear(hidden_dim, hidden_dim)) for _ in range(n_blocks)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Mish(), nn.Linear(hidden_dim, horizon * action_dim))

    def step_contexts(self, timesteps: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        """(S,) times and (B, D) features -> S tensors (B, hidden * (1 + 2 * n_blocks))."""
        steps, batch = len(timesteps), cond.shape[0]
        emb = torch.cat([self.step_encoder(timesteps.repeat_interleave(batch)), cond.repeat(steps, 1)], dim=-1)
        return list(self.cond_proj(emb).split(batch))

    def denoise(self, sample: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        parts = context.split(self.hidden_dim, dim=-1)
        h = self.in_proj(sample.flatten(1)) + parts[0]
        for i, (norm, block) in enumerate(zip(self.norms, self.blocks)):
            scale, shift = parts[1 + 2 * i], parts[2 + 2 * i]
            h = h + block(norm(h) * (1 + scale) + shift)
        return self.out(h).view(-1, self.horizon, self.action_dim)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        emb = torch.cat([self.step_encoder(timesteps), global_cond], dim=-1)
        return self.denoise(sample, self.cond_proj(emb))


class TransformerDenoiser(nn.Module):
    """The Diffusion Policy paper's time-series diffusion transformer (its `TransformerForDiffusion` with
    observations as conditioning): action tokens attend causally to each other and, through
    cross-attention, to a time token and one token per observation step. Action token i sees the time
    token and the observation tokens up to step i (the paper's memory mask)."""

    def __init__(self, action_dim: int, horizon: int, obs_feature_dim: int, n_obs_steps: int, dim: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.n_obs_steps = n_obs_steps
        self.action_in = nn.Linear(action_dim, dim)
        self.action_pos = nn.Parameter(torch.zeros(1, horizon, dim))
        self.time_emb = SinusoidalPosEmb(dim)
        self.obs_in = nn.Linear(obs_feature_dim, dim)
        self.cond_pos = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, dim))
        self.cond_encoder = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))
        layer = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, action_dim)
        causal = torch.triu(torch.full((horizon, horizon), float("-inf")), diagonal=1)
        memory = torch.where(torch.arange(1 + n_obs_steps)[None, :] <= torch.arange(horizon)[:, None] + 1, 0.0, float("-inf"))
        self.register_buffer("causal_mask", causal, persistent=False)
        self.register_buffer("memory_mask", memory, persistent=False)
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)

    def memory(self, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        obs = rearrange(cond, "b (t d) -> b t d", t=self.n_obs_steps)
        tokens = torch.cat([self.time_emb(timesteps)[:, None], self.obs_in(obs)], dim=1) + self.cond_pos
        return self.cond_encoder(tokens)

    def step_contexts(self, timesteps: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        steps, batch = len(timesteps), cond.shape[0]
        return list(self.memory(timesteps.repeat_interleave(batch), cond.repeat(steps, 1)).split(batch))

    def denoise(self, sample: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.action_in(sample) + self.action_pos
        x = self.decoder(x, context, tgt_mask=self.causal_mask, memory_mask=self.memory_mask)
        return self.head(self.norm(x))

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        return self.denoise(sample, self.memory(timesteps, global_cond))


class UnetDenoiser(ConditionalUnet1D):
    """The 1-D temporal UNet (policies/diffusion/unet.py); its step contexts are the FiLM parameters."""

    def step_contexts(self, timesteps: torch.Tensor, cond: torch.Tensor) -> list[Any]:
        batch = cond.shape[0]
        films = self.film(timesteps.repeat_interleave(batch), cond.repeat(len(timesteps), 1))
        per_block = [f.split(batch) for f in films]
        return [[f[i] for f in per_block] for i in range(len(timesteps))]


def make_denoiser(config: DiffusionConfig) -> nn.Module:
    cond_dim = config.obs_feature_dim * config.n_obs_steps
    if config.backbone == "unet":
        return UnetDenoiser(config.action_dim, cond_dim, config.down_dims, config.kernel_size, config.n_groups, config.diffusion_step_embed_dim)
    if config.backbone == "mlp":
        return MLPDenoiser(config.action_dim, config.horizon, cond_dim, config.mlp_hidden_dim, config.mlp_blocks, config.diffusion_step_embed_dim)
    if config.backbone == "transformer":
        return TransformerDenoiser(
            config.action_dim, config.horizon, config.obs_feature_dim, config.n_obs_steps,
            config.transformer_dim, config.transformer_layers, config.transformer_heads, config.transformer_dropout,
        )
    raise ValueError(f"unknown backbone {config.backbone!r}; valid: {list(BACKBONES)}")


