"""Exponential moving average of weights, with the warm-up schedule of diffusion_policy."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps `self.model`, an averaged copy of a model, and updates it after every optimizer step.

    decay(step) = min(max_decay, 1 - (1 + step / inv_gamma) ** -power), so early averages follow the
    weights closely and later ones smooth over ~1 / (1 - max_decay) steps.
    """

    def __init__(self, model: nn.Module, power: float = 0.75, inv_gamma: float = 1.0, max_decay: float = 0.9999) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma, self.max_decay = power, inv_gamma, max_decay
        self.num_updates = 0

    def decay(self) -> float:
        value = 1.0 - (1.0 + self.num_updates / self.inv_gamma) ** -self.power
        return max(0.0, min(self.max_decay, value))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.decay()
        pairs = list(zip(self.model.parameters(), model.parameters()))
        trained = [(e, p.detach()) for e, p in pairs if p.requires_grad]
        if trained:
            torch._foreach_lerp_([e for e, _ in trained], [p for _, p in trained], 1.0 - decay)
        for ema_p, p in pairs:  # frozen parts (e.g. a finished tokenizer) are copied, not averaged
            if not p.requires_grad:
                ema_p.copy_(p)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
        self.num_updates += 1
