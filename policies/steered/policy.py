"""DSRL: a frozen Diffusion Policy steered through its initial noise (Wagenmaker et al. 2025).

The noise actor maps the observation window to the DDIM sampler's initial latent w (horizon x action_dim),
tanh-squashed to +-noise_magnitude. Deterministic DDIM turns w into the action chunk. The base is a
black box: only `base.predict_action_chunk(obs, noise=w)` is used, and its weights never change.

Checkpoint layout: policies/wrapped.py (model.safetensors holds the actor; base/ the Diffusion Policy).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from core.io import CheckpointError
from policies.base import Policy
from policies.diffusion.config import DETERMINISTIC_SAMPLERS
from policies.diffusion.policy import DiffusionPolicy
from policies.mlp import mlp
from policies.steered.config import SteeredConfig
from policies.wrapped import FrozenBasePolicy


class NoiseActor(nn.Module):
    """Tanh-Gaussian actor over the latent: features (B, F) -> latent (B, latent_dim) in +-magnitude."""

    def __init__(self, config: SteeredConfig) -> None:
        super().__init__()
        self.magnitude = config.noise_magnitude
        self.log_std_min, self.log_std_max = config.log_std_min, config.log_std_max
        self.net = mlp(config.obs_feature_dim, 2 * config.latent_dim, config.hidden_dim, config.n_layers, config.layer_norm, config.activation)

    @torch.no_grad()
    def init_log_std(self, value: float) -> None:
        """Start with the same std for every state and dimension: exp(value) (0.0 gives the base's N(0, 1) scale)."""
        if not self.log_std_min < value < self.log_std_max:
            raise ValueError(f"log_std_init {value} must lie in ({self.log_std_min}, {self.log_std_max})")
        last = self.net[-1]
        half = last.out_features // 2
        last.weight[half:].zero_()
        last.bias[half:].fill_(math.atanh(2 * (value - self.log_std_min) / (self.log_std_max - self.log_std_min) - 1))

    def forward(self, features: torch.Tensor, eps: torch.Tensor | None = None, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (latent, log_prob). `eps`: the standard-normal draw (sampled when None)."""
        mean, log_std = self.net(features).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        if deterministic:
            u = mean
        else:
            u = mean + log_std.exp() * (torch.randn_like(mean) if eps is None else eps)
        squashed = torch.tanh(u)
        gaussian_log_prob = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = gaussian_log_prob - torch.log(self.magnitude * (1 - squashed.pow(2)) + 1e-6).sum(-1)
        return squashed * self.magnitude, log_prob


class SteeredPolicy(FrozenBasePolicy):
    policy_type: ClassVar[str] = "dsrl"
    config_class: ClassVar[type] = SteeredConfig
    trained_attr: ClassVar[str] = "actor"

    def __init__(self, config: SteeredConfig, base: DiffusionPolicy) -> None:
        super().__init__(config, base)
        self.actor = NoiseActor(config)

    @classmethod
    def check_base(cls, config: SteeredConfig, base: Policy) -> None:
        """The base must be a Diffusion Policy with a deterministic sampler and the shapes the config records."""
        if not isinstance(base, DiffusionPolicy):
            raise CheckpointError(f"DSRL steers a Diffusion Policy; the base is a {base.policy_type} policy")
        if not base.deterministic_sampling:
            raise CheckpointError(
                f"DSRL needs a deterministic sampler; the base samples with {base.sampler.name!r} "
                f"(set policy.inference_scheduler in the base's config.json to one of {list(DETERMINISTIC_SAMPLERS)} "
                f"that fits its objective {base.config.objective!r})"
            )
        super().check_base(config, base)

    def latent(self, obs: dict[str, torch.Tensor], eps: torch.Tensor | None = None) -> torch.Tensor:
        """The actor's latent for an observation window: sampled with `eps` (drawn when None), or its mean
        when the config says `deterministic` and no `eps` is given."""
        features = self.state_features(obs)
        if eps is not None:
            eps = eps.reshape(features.shape[0], -1)
        return self.actor(features, eps=eps, deterministic=eps is None and self.config.deterministic)[0]

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        """`noise`: the actor's standard-normal draw (B, horizon, action_dim); the same noise gives the same chunk."""
        latent = self.latent(obs, eps=noise)
        return self.base.predict_action_chunk(obs, noise=latent.view(self.base.noise_shape(latent.shape[0])))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError("a steered policy is trained with RL: python train.py dsrl --base <checkpoint> ...")
