"""1-D temporal UNet conditioned by FiLM on (diffusion timestep embedding, observation features).

Architecture of Chi et al., "Diffusion Policy" (2023): residual blocks of Conv1d-GroupNorm-Mish, each
modulated by a per-channel scale and bias computed from the conditioning vector.

The FiLM parameters depend only on the conditioning, not on the noisy actions, so `film()` computes
them for all denoising steps in one batched call and `denoise()` reuses them: sampling pays for the
conditioning MLPs once per chunk instead of once per step.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000.0) / (half - 1)))
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def step_encoder(dim: int) -> nn.Sequential:
    """Sinusoidal embedding of the diffusion time, then an MLP (the Diffusion Policy paper's)."""
    return nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


def conv_block(c_in: int, c_out: int, kernel_size: int, n_groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.GroupNorm(n_groups, c_out), nn.Mish()
    )


class FiLMResBlock(nn.Module):
    """x -> conv_block -> * scale + bias -> conv_block, plus a residual path."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.out_channels = c_out
        self.block1 = conv_block(c_in, c_out, kernel_size, n_groups)
        self.block2 = conv_block(c_out, c_out, kernel_size, n_groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        scale, bias = film[..., None].chunk(2, dim=1)
        return self.block2(self.block1(x) * scale + bias) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...],
        kernel_size: int,
        n_groups: int,
        step_embed_dim: int,
    ) -> None:
        super().__init__()
        self.step_encoder = step_encoder(step_embed_dim)
        cond_dim = step_embed_dim + global_cond_dim
        dims = [action_dim, *down_dims]

        def res(c_in: int, c_out: int) -> FiLMResBlock:
            return FiLMResBlock(c_in, c_out, cond_dim, kernel_size, n_groups)

        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            sample = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([res(c_in, c_out), res(c_out, c_out), sample]))
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]), res(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for c_out, c_in in reversed(list(zip(down_dims[:-1], down_dims[1:]))):
            self.up.append(
                nn.ModuleList([res(2 * c_in, c_out), res(c_out, c_out), nn.ConvTranspose1d(c_out, c_out, 4, stride=2, padding=1)])
            )
        self.final = nn.Sequential(conv_block(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], action_dim, 1))
        self.res_blocks = [m for m in self.modules() if isinstance(m, FiLMResBlock)]

    def film(self, timesteps: torch.Tensor, global_cond: torch.Tensor) -> list[torch.Tensor]:
        """FiLM (scale, bias) per residual block, each (B, 2 * channels). timesteps: (B,)."""
        cond = torch.cat([self.step_encoder(timesteps), global_cond], dim=-1)
        return [block.cond_encoder(cond) for block in self.res_blocks]

    def denoise(self, sample: torch.Tensor, films: list[torch.Tensor]) -> torch.Tensor:
        """sample: (B, horizon, action_dim) -> prediction of the same shape."""
        x = rearrange(sample, "b t a -> b a t")
        films_iter = iter(films)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, next(films_iter)), next(films_iter))
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, next(films_iter))
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, next(films_iter)), next(films_iter)))
        return rearrange(self.final(x), "b a t -> b t a")

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        return self.denoise(sample, self.film(timesteps, global_cond))
