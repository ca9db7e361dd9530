"""Per-env base actions for per-step RL on top of a frozen chunked policy.

`Policy.select_action` keeps one observation history and one chunk queue for the whole batch, so every
env must reset together. RL vector envs reset independently. `BaseActionQueues` keeps a history and a
queue per env and calls the base only through `predict_action_chunk`, for the envs whose queue is
empty. It returns exactly the actions `select_action` would give each env on its own.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from core.window import ObsWindow

from policies.base import Policy


class BaseActionQueues:
    def __init__(self, base: Policy, n_envs: int) -> None:
        self.base = base
        cfg = base.config
        self.keys = cfg.state_keys
        self.first = cfg.n_obs_steps - 1
        self.n_action_steps = cfg.n_action_steps
        self.device = next(base.parameters()).device
        self.history: list[ObsWindow[torch.Tensor]] = [ObsWindow(cfg.n_obs_steps) for _ in range(n_envs)]
        self.queues: list[deque[torch.Tensor]] = [deque() for _ in range(n_envs)]

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget history and queued actions of the envs in `mask` (all when None): their episodes restart."""
        for i in range(len(self.queues)) if mask is None else np.flatnonzero(mask):
            self.history[i].clear()
            self.queues[i].clear()

    def windows(self, ids: list[int]) -> dict[str, torch.Tensor]:
        per_env = [self.history[i].stacked(torch.stack, self.keys) for i in ids]
        return {k: torch.stack([w[k] for w in per_env]) for k in self.keys}

    @torch.no_grad()
    def step(self, obs: dict[str, np.ndarray], ids: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Observe the current step of the envs `ids` (default: all; obs rows in that order).

        Returns (base actions (N, A) in env units, features (N, F)). Features: the base's normalized
        observation window, flattened (what the residual sees).
        """
        ids = list(range(len(self.queues))) if ids is None else ids
        for row, i in enumerate(ids):
            current = {k: torch.as_tensor(obs[k][row], dtype=torch.float32, device=self.device) for k in self.keys}
            self.history[i].push(current)
        need = [i for i in ids if not self.queues[i]]
        if need:
            chunk = self.base.predict_action_chunk(self.windows(need))
            for row, i in enumerate(need):
                self.queues[i].extend(chunk[row, self.first : self.first + self.n_action_steps].unbind(0))
        actions = torch.stack([self.queues[i].popleft() for i in ids])
        return actions, self.base.state_features(self.windows(ids))
