"""Residual policy: a frozen chunked base (Diffusion Policy or VQ-BeT) plus a bounded per-step correction.

Each step the base supplies its next action from its chunk queue (a black box, through `select_action`),
and the residual MLP reads (normalized observation window, normalized base action) and outputs
delta = residual_scale * tanh(.) in normalized action units. The executed action is
unnormalize(base + delta) clipped to the env's action bounds. The last layer starts at zero, so an
untrained residual reproduces the base exactly (ResiP, Ankile et al. 2024; ResFiT, 2025).

Checkpoint layout: policies/wrapped.py (model.safetensors holds the residual MLP; base/ the base).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from core.io import CheckpointError
from core.window import ObsWindow
from policies.base import Policy
from policies.mlp import mlp
from policies.residual.config import ResidualConfig
from policies.wrapped import FrozenBasePolicy


class ResidualActor(nn.Module):
    """(features, normalized base action) -> pre-tanh correction; zero at initialisation."""

    def __init__(self, config: ResidualConfig) -> None:
        super().__init__()
        self.net = mlp(config.obs_feature_dim + config.action_dim, config.action_dim, config.hidden_dim, config.n_layers, config.layer_norm, config.activation)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, base_action], dim=-1))


class ResidualPolicy(FrozenBasePolicy):
    policy_type: ClassVar[str] = "residual"
    config_class: ClassVar[type] = ResidualConfig
    trained_attr: ClassVar[str] = "residual"
    acts_per_step: ClassVar[bool] = True

    def __init__(self, config: ResidualConfig, base: Policy) -> None:
        super().__init__(config, base)
        self.residual = ResidualActor(config)
        self.register_buffer("action_low", torch.tensor(config.action_low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.tensor(config.action_high, dtype=torch.float32), persistent=False)

    def init_episode_state(self) -> None:
        super().init_episode_state()
        self._history: ObsWindow[torch.Tensor] = ObsWindow(self.config.n_obs_steps)

    def action_bounds(self) -> tuple[list[float], list[float]]:
        return list(self.config.action_low), list(self.config.action_high)

    @classmethod
    def check_base(cls, config: ResidualConfig, base: Policy) -> None:
        if base.policy_type != config.base_policy_type:
            raise CheckpointError(f"residual config expects a {config.base_policy_type} base, got a {base.policy_type} policy")
        super().check_base(config, base)

    def reset(self) -> None:
        super().reset()
        self.base.reset()
        self._history.clear()

    # ---- the correction -------------------------------------------------------------------------
    def correction(self, features: torch.Tensor, base_action_norm: torch.Tensor) -> torch.Tensor:
        """The bounded correction in normalized action units."""
        return self.config.residual_scale * torch.tanh(self.residual(features, base_action_norm))

    def combine(self, base_action_norm: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Normalized base action + correction -> env action, clipped to the env's bounds."""
        action = self.normalizer.unnormalize(self.config.action_key, base_action_norm + delta)
        return torch.maximum(torch.minimum(action, self.action_high), self.action_low)

    def window_features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Track the observation window like `select_action` does and return its features."""
        self._history.push({k: obs[k] for k in self.config.state_keys})
        return self.state_features(self._history.stacked(lambda steps: torch.stack(steps, dim=1)))

    # ---- contract ---------------------------------------------------------------------------------
    @torch.no_grad()
    def select_action(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        base_action = self.base.select_action(obs)
        features = self.window_features(obs)
        base_norm = self.normalizer.normalize(self.config.action_key, base_action)
        return self.combine(base_norm, self.correction(features, base_norm))

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        """The base's chunk with each action corrected from the given (current) observation window.

        Open loop: `select_action` corrects each step from the observation of that step, which is what the
        residual was trained for and what eval.py and the policy server run (acts_per_step). This chunk is
        for analysis only.
        """
        chunk = self.base.predict_action_chunk(obs, noise)
        features = self.state_features(obs)
        base_norm = self.normalizer.normalize(self.config.action_key, chunk)
        expanded = features[:, None].expand(-1, chunk.shape[1], -1)
        return self.combine(base_norm, self.correction(expanded, base_norm))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError("a residual policy is trained with RL: python train.py residual --base <checkpoint> ...")
