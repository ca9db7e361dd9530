"""Small MLP builder shared by the RL actors and critics."""

from __future__ import annotations

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp(in_dim: int, out_dim: int, hidden_dim: int, n_layers: int, layer_norm: bool = True, activation: str = "relu") -> nn.Sequential:
    """`n_layers` hidden layers of Linear (-> LayerNorm) -> activation, then a Linear to `out_dim`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} not in {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_layers):
        layers.append(nn.Linear(dim, hidden_dim))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden_dim))
        layers.append(ACTIVATIONS[activation]())
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)
