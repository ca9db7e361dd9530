"""Policies that wrap a frozen base policy with a small trained module (DSRL's noise actor, a residual).

Checkpoint directory:
    config.json             policy type and every hyperparameter, incl. the base's fingerprint
    model.safetensors       the trained module only
    normalizer.safetensors  the base's normalizer
    base/                   the base checkpoint; loading recomputes its fingerprint and refuses a mismatch
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from core.io import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    config_to_dict,
    load_safetensors,
)
from policies.base import (
    CONFIG_FILE,
    FORMAT_VERSION,
    NORMALIZER_FILE,
    WEIGHTS_FILE,
    Policy,
    load_state_dict_strict,
)
from policies.io_config import WRAPPED_BASE_FIELDS, require_state_only

BASE_DIR = "base"


class FrozenBasePolicy(Policy):
    trained_attr: ClassVar[str]
    """Name of the trained submodule (the only weights in model.safetensors)."""

    def __init__(self, config: Any, base: Policy) -> None:
        self.check_base(config, base)
        super().__init__(config, base.normalizer)
        self.base = base.requires_grad_(False).eval()

    @classmethod
    def check_base(cls, config: Any, base: Policy) -> None:
        require_state_only(base.config, f"{cls.policy_type} wrapping")
        diff = {f: (getattr(config, f), getattr(base.config, f)) for f in WRAPPED_BASE_FIELDS if getattr(config, f) != getattr(base.config, f)}
        if diff:
            raise CheckpointError(f"{cls.policy_type} config does not match its base: " + "; ".join(f"{k}: {a!r} vs base {b!r}" for k, (a, b) in diff.items()))

    @property
    def trained(self) -> nn.Module:
        return getattr(self, self.trained_attr)

    def train(self, mode: bool = True) -> FrozenBasePolicy:
        super().train(mode)
        self.base.eval()  # the base is frozen, always in inference mode
        return self

    def check_ready(self) -> None:
        self.base.check_ready()

    def fork(self) -> FrozenBasePolicy:
        forked = super().fork()
        forked._modules["base"] = self.base.fork()
        return forked

    def noise_shape(self, batch_size: int) -> tuple[int, ...] | None:
        return self.base.noise_shape(batch_size)

    def sampler_core(self) -> Policy | None:
        return self.base.sampler_core()

    def save_pretrained(self, directory: str | Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        directory = Path(directory)
        self.base.save_pretrained(directory / BASE_DIR)
        atomic_save_safetensors(directory / WEIGHTS_FILE, weights if weights is not None else self.trained.state_dict(), metadata={"policy_type": self.policy_type})
        self.normalizer.save(directory / NORMALIZER_FILE)
        atomic_write_json(directory / CONFIG_FILE, {"policy_type": self.policy_type, "format_version": FORMAT_VERSION, "config": config_to_dict(self.config)})

    @classmethod
    def load_from_dir(cls, directory: Path, config: Any) -> FrozenBasePolicy:
        base = Policy.from_pretrained(directory / BASE_DIR)
        found = base.fingerprint()
        if found != config.base_fingerprint:
            raise CheckpointError(
                f"{directory / BASE_DIR}: base fingerprint {found[:12]} does not match the {config.base_fingerprint[:12]} "
                f"recorded in {directory / CONFIG_FILE}; the {cls.policy_type} policy was trained on a different base"
            )
        policy = cls(config, base)
        load_state_dict_strict(policy.trained, load_safetensors(directory / WEIGHTS_FILE), str(directory / WEIGHTS_FILE))
        return policy
