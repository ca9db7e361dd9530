"""Critic ensembles for off-policy RL: every head computed in one batched matmul per layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from policies.mlp import ACTIVATIONS


class EnsembleLinear(nn.Module):
    """`n` independent Linear layers applied as one baddbmm: (n, B, in) -> (n, B, out)."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_dim)  # nn.Linear's default init, per head
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class QEnsemble(nn.Module):
    """`n_heads` Q-networks on concatenated inputs: forward(*inputs (B, d_i)) -> (n_heads, B)."""

    def __init__(self, in_dim: int, n_heads: int, hidden_dim: int, n_layers: int, layer_norm: bool = True, activation: str = "relu") -> None:
        super().__init__()
        self.n_heads = n_heads
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_layers):
            layers.append(EnsembleLinear(n_heads, dim, hidden_dim))
            if layer_norm:
                layers.append(EnsembleLayerNorm(n_heads, hidden_dim))
            layers.append(ACTIVATIONS[activation]())
            dim = hidden_dim
        layers.append(EnsembleLinear(n_heads, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(inputs, dim=-1)
        return self.net(x.expand(self.n_heads, *x.shape)).squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source (Polyak averaging)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
