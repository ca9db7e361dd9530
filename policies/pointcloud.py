"""Point-cloud encoders: (B, T, N, 3 or 6) float32 world-frame points -> (B, T, point_feature_dim).

`dp3` is DP3's encoder (Ze et al. 2024, "DP3 encoder"): a per-point MLP with LayerNorm and ReLU, a max-pool
over the points (order-invariant), then a linear projection with LayerNorm. Points enter in metres as they
are rendered; no normalisation (as DP3). The registry `POINT_ENCODERS` sits beside `policies.vision`'s
`VISION_ENCODERS`; `PolicyIOConfig.point_encoder` names one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class DP3Encoder(nn.Module):
    """Per-point MLP (Linear, LayerNorm, ReLU per width), max over points, Linear + LayerNorm to `out_dim`."""

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU()]
            width = hidden
        self.per_point = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(width, out_dim), nn.LayerNorm(out_dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """(M, N, D) -> (M, out_dim)."""
        return self.project(self.per_point(points).amax(dim=1))


POINT_ENCODERS: dict[str, Callable[[int, tuple[int, ...], int], nn.Module]] = {"dp3": DP3Encoder}
"""point_encoder name -> constructor (in_dim, hidden_dims, out_dim) of a (M, N, D) -> (M, out_dim) module."""


class PointCloudEncoder(nn.Module):
    """Encodes one point-cloud key per observation step."""

    def __init__(self, key: str, shape: tuple[int, int], encoder: str, hidden_dims: tuple[int, ...], feature_dim: int) -> None:
        super().__init__()
        self.key = key
        self.shape = tuple(shape)
        self.net = POINT_ENCODERS[encoder](shape[1], tuple(hidden_dims), feature_dim)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs[key]: (B, T, N, D) -> (B, T, feature_dim)."""
        points = obs[self.key]
        if points.ndim != 4 or tuple(points.shape[2:]) != self.shape:
            raise ValueError(f"point cloud {self.key!r} has shape {tuple(points.shape)}, expected (B, T, {self.shape[0]}, {self.shape[1]})")
        if not points.is_floating_point():
            raise ValueError(f"point cloud {self.key!r} has dtype {points.dtype}, expected float32 points in metres")
        encoded = self.net(points.flatten(0, 1))
        return encoded.view(points.shape[0], points.shape[1], -1)
