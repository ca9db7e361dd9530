"""Config of a residual policy: a small per-step correction on top of a frozen chunked base policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.io_config import PolicyIOConfig, base_fields


@dataclass(frozen=True)
class ResidualConfig(PolicyIOConfig):
    """IO and chunking fields are copied from the base and checked against it on load."""

    n_obs_steps: int = 2
    """Observation window of the base (the residual sees the same window)."""
    horizon: int = 16
    """Chunk length of the base."""
    n_action_steps: int = 8
    """Actions the base executes per chunk."""
    base_policy_type: str = "diffusion"
    """Type of the base policy (diffusion or vqbet)."""
    base_fingerprint: str = ""
    """`Policy.fingerprint()` of the base the residual was trained on; loading checks it."""
    action_low: tuple[float, ...] = ()
    """Lower action bound of the env (per dimension); the corrected action is clipped to it."""
    action_high: tuple[float, ...] = ()
    """Upper action bound of the env (per dimension)."""
    residual_scale: float = 0.1
    """Largest correction per dimension, in normalized action units (the base's actions span [-1, 1])."""
    hidden_dim: int = 256
    """Width of the residual MLP."""
    n_layers: int = 2
    """Hidden layers of the residual MLP."""
    layer_norm: bool = True
    """LayerNorm after each hidden Linear."""
    activation: str = "relu"
    """Hidden activation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.action_dim and (len(self.action_low), len(self.action_high)) != (self.action_dim, self.action_dim):
            raise ValueError(f"action_low/action_high need {self.action_dim} values each, got {self.action_low} / {self.action_high}")

    @property
    def obs_feature_dim(self) -> int:
        return self.n_obs_steps * self.state_dim


def for_base(base: Any, action_low: tuple[float, ...], action_high: tuple[float, ...], **residual: Any) -> ResidualConfig:
    return ResidualConfig(
        **base_fields(base.config), base_policy_type=base.policy_type, base_fingerprint=base.fingerprint(),
        action_low=tuple(float(x) for x in action_low), action_high=tuple(float(x) for x in action_high), **residual,
    )
