"""Fields every policy config shares: which store keys it reads, their sizes, and their normalization."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyIOConfig:
    state_keys: tuple[str, ...] = ("state",)
    """Low-dim observation keys in the store, concatenated per step in this order."""
    state_dims: tuple[int, ...] = ()
    """Feature size of each state key, same order as `state_keys` (train.py fills it from the store)."""
    action_key: str = "action"
    """Action key in the store."""
    action_dim: int = 0
    """Action size (train.py fills it from the store)."""
    state_norm: str = "min_max"
    """Normalization of states: min_max (to [-1, 1]), mean_std or identity."""
    action_norm: str = "min_max"
    """Normalization of actions; min_max keeps actions in the [-1, 1] range the policies clip to."""

    def __post_init__(self) -> None:
        if len(self.state_dims) not in (0, len(self.state_keys)):
            raise ValueError(f"state_dims {self.state_dims} must give one size per state key {self.state_keys}")

    @property
    def state_dim(self) -> int:
        return sum(self.state_dims)

    def normalization_modes(self) -> dict[str, str]:
        return {k: self.state_norm for k in self.state_keys} | {self.action_key: self.action_norm}


# Fields that a policy wrapping a frozen base (DSRL, residual) copies from the base's config.
WRAPPED_BASE_FIELDS = ("state_keys", "state_dims", "action_key", "action_dim", "state_norm", "action_norm", "n_obs_steps", "horizon", "n_action_steps")


def base_fields(base_config: object) -> dict:
    return {f: getattr(base_config, f) for f in WRAPPED_BASE_FIELDS}
