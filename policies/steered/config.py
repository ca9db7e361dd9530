"""Config of a DSRL-steered Diffusion Policy: the noise actor's hyperparameters plus the base's shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.io_config import PolicyIOConfig, base_fields


@dataclass(frozen=True)
class SteeredConfig(PolicyIOConfig):
    """IO and chunking fields are copied from the base Diffusion Policy and checked against it on load."""

    n_obs_steps: int = 2
    """Observation window of the base (and of the actor)."""
    horizon: int = 16
    """Chunk length of the base; the latent is horizon x action_dim."""
    n_action_steps: int = 8
    """Actions executed per chunk, as in the base."""
    noise_magnitude: float = 1.5
    """The actor's latent is tanh-squashed to [-noise_magnitude, noise_magnitude] per dimension."""
    hidden_dim: int = 256
    """Width of the actor MLP."""
    n_layers: int = 3
    """Hidden layers of the actor MLP."""
    layer_norm: bool = True
    """LayerNorm after each hidden Linear."""
    activation: str = "tanh"
    """Hidden activation (tanh, relu, gelu, silu)."""
    log_std_min: float = -5.0
    """Lower bound of the actor's Gaussian log-std (pre-tanh)."""
    log_std_max: float = 2.0
    """Upper bound of the actor's Gaussian log-std (pre-tanh)."""
    deterministic: bool = False
    """Use the actor's mean latent at inference instead of sampling it. Off by default: the mean of a wide
    tanh-Gaussian is an atypically small latent (norm 3-4 against 7-8 for N(0, I) in 64-D), which DDIM
    decodes into poor chunks; sampling mirrors how the base itself draws its noise."""
    base_fingerprint: str = ""
    """`Policy.fingerprint()` of the base this actor was trained on; loading checks it."""

    @property
    def latent_dim(self) -> int:
        return self.horizon * self.action_dim

    @property
    def obs_feature_dim(self) -> int:
        return self.n_obs_steps * self.state_dim


def for_base(base: Any, **actor: Any) -> SteeredConfig:
    """A config for steering `base` (a DiffusionPolicy): its shapes and fingerprint plus the actor's fields."""
    return SteeredConfig(**base_fields(base.config), base_fingerprint=base.fingerprint(), **actor)
