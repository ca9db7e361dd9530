"""The policy contract shared by every policy type, and checkpoint save/load.

A policy works on observation windows of `n_obs_steps` and predicts chunks of `horizon` actions, of which
`select_action` executes `n_action_steps` before planning again. Normalization lives inside the policy:
inputs and outputs of `predict_action_chunk` and `select_action` are in env units. The contract, including
the capabilities a policy declares (acts_per_step, noise_shape, sampler_core, set_sampler, action_bounds,
trains_in_phases), is written down in docs/policies.md. Every policy type registers itself by its
`policy_type`; `policy_class` and `policy_class_for_config` look it up.

Checkpoint directory (written by `save_pretrained`, read by `from_pretrained`):
    config.json             {"policy_type": ..., "format_version": 6, "config": {every hyperparameter}}
    model.safetensors       the inference weights (the EMA weights when training used EMA)
    normalizer.safetensors  per-key normalization statistics and modes
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from core.io import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    config_from_dict,
    config_to_dict,
    load_safetensors,
    read_json,
)
from core.window import ObsWindow
from data.normalize import Normalizer
from policies.pointcloud import PointCloudEncoder
from policies.vision import MultiCameraEncoder

FORMAT_VERSION = 6
# Version 1 predates cameras: its policies were state-only. Reading one adds exactly that, as explicit
# fields (no cameras; the vision fields are then unused), so old checkpoints load and mean what they meant.
V1_TO_V2_FIELDS = {
    "image_keys": [], "image_shape": [], "crop_shape": [], "vision_keypoints": 32, "vision_feature_dim": 64, "vision_backbone_weights": None,
}
# Version 2 predates multi-task policies: every one was single-task.
V2_TO_V3_FIELDS = {"task_names": []}
# Version 5 adds the choice of camera trunk; every earlier camera policy used ResNet-18.
V4_TO_V5_FIELDS = {"vision_encoder": "resnet18"}
# Version 6 adds point clouds (none before) and the observability derived from the keys ("": not recorded).
V5_TO_V6_FIELDS = {
    "point_cloud_key": None, "point_cloud_shape": [], "point_cloud_cameras": [], "point_cloud_image_size": 0, "point_cloud_crop": [], "point_cloud_camera_positions": [],
    "point_encoder": "dp3", "point_hidden_dims": [64, 128, 256], "point_feature_dim": 64, "observability": "",
}
# Later versions add fields per policy type: `Policy.fields_added` (e.g. version 4's diffusion backbones).
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"

_REGISTRY: dict[str, type[Policy]] = {}
"""policy_type -> Policy subclass; filled by Policy.__init_subclass__ (import `policies` to register every type)."""


def policy_class(policy_type: str) -> type[Policy]:
    """The registered class of a policy type; unknown names fail with the list of known ones."""
    import policies  # noqa: F401  (registers every policy type)

    if policy_type not in _REGISTRY:
        raise KeyError(f"unknown policy type {policy_type!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[policy_type]


def policy_class_for_config(config: Any) -> type[Policy]:
    """The registered class whose `config_class` is the type of `config`."""
    import policies  # noqa: F401

    for cls in _REGISTRY.values():
        if type(config) is cls.config_class:
            return cls
    raise KeyError(f"no policy type takes a {type(config).__name__}; known: { {t: c.config_class.__name__ for t, c in sorted(_REGISTRY.items())} }")


def make_policy(config: Any, normalizer: Normalizer) -> Policy:
    """A fresh (untrained) policy of the type that `config` configures."""
    return policy_class_for_config(config)(config, normalizer)


def window_offsets(config: Any) -> dict[str, list[int]]:
    """Sampler window per key, relative to the current step t: the policy declares what it trains on.

    Observations cover t-n_obs_steps+1 .. t; actions cover the same start and run `horizon` steps.
    """
    first = 1 - config.n_obs_steps
    offsets = {key: list(range(first, 1)) for key in config.obs_keys}
    offsets[config.action_key] = list(range(first, first + config.action_window))
    return offsets


class Policy(nn.Module):
    """Base class: observation history, action queue, and strict checkpoint I/O."""

    policy_type: ClassVar[str]
    config_class: ClassVar[type]
    acts_per_step: ClassVar[bool] = False
    """True when each action depends on that step's own observation (a residual correction): `select_action`
    is the policy, and a chunk predicted from one observation is not. Servers answer such policies one action
    per request (docs/deploy.md); chunked policies answer with a chunk."""
    trains_in_phases: ClassVar[bool] = False
    """True when some parameters get no gradient in some training steps (VQ-BeT's tokenizer, then its GPT):
    DistributedDataParallel then needs find_unused_parameters."""
    fields_added: ClassVar[dict[int, dict[str, Any]]] = {}
    """Config fields this type gained in a checkpoint format version, with the values that reproduce what older
    checkpoints computed. Loading an older config adds them; the fingerprint leaves them out at those values."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "policy_type" in cls.__dict__:
            _REGISTRY[cls.policy_type] = cls

    def __init__(self, config: Any, normalizer: Normalizer) -> None:
        if (config.state_keys and not config.state_dims) or config.action_dim < 1:
            raise ValueError(f"{type(config).__name__}.state_dims and action_dim must be set (train.py fills them from the store)")
        if config.image_keys and not config.image_shape:
            raise ValueError(f"{type(config).__name__}.image_shape must be set for image keys {config.image_keys} (train.py fills it from the store)")
        if config.point_cloud_key and not config.point_cloud_shape:
            raise ValueError(f"{type(config).__name__}.point_cloud_shape must be set for {config.point_cloud_key!r} (train.py fills it from the store)")
        super().__init__()
        self.config = config
        self.normalizer = normalizer
        self.vision: MultiCameraEncoder | None = None
        if config.image_keys:
            self.vision = MultiCameraEncoder(
                config.image_keys, tuple(config.image_shape), config.resolved_crop_shape, config.vision_keypoints, config.vision_feature_dim,
                config.vision_encoder,
            )
        self.points: PointCloudEncoder | None = None
        if config.point_cloud_key:
            self.points = PointCloudEncoder(
                config.point_cloud_key, tuple(config.point_cloud_shape), config.point_encoder, tuple(config.point_hidden_dims), config.point_feature_dim
            )
        self.init_episode_state()

    # ---- contract --------------------------------------------------------------------------------
    def init_episode_state(self) -> None:
        """Create what `select_action` carries from step to step: the observation window and the action queue."""
        self._obs_history: ObsWindow[torch.Tensor] = ObsWindow(self.config.n_obs_steps)
        self._action_queue: deque[torch.Tensor] = deque()

    def reset(self) -> None:
        """Clear the observation history and the action queue (call at every episode start)."""
        self._obs_history.clear()
        self._action_queue.clear()

    def fork(self) -> Policy:
        """A policy that shares this one's weights but has its own episode state (for serving several robots)."""
        forked = copy.copy(self)
        forked._modules = dict(self._modules)  # a wrapper swaps its base for the base's fork in its own dict
        forked.init_episode_state()
        return forked

    def noise_shape(self, batch_size: int) -> tuple[int, ...] | None:
        """Shape of the `noise` that `predict_action_chunk(obs, noise)` takes (the same noise gives the same
        chunk), or None when it takes none."""
        return None

    def sampler_core(self) -> Policy | None:
        """The Diffusion Policy whose sampling loop produces this policy's chunks (itself, or a wrapper's base),
        or None (e.g. VQ-BeT). Compiled inference (policies/diffusion/compile.py) targets it."""
        return None

    def set_sampler(self, name: str | None = None, steps: int | None = None) -> None:
        """Switch the chunk sampler or its steps; raises ValueError where the policy has none to switch."""
        raise ValueError(f"a {self.policy_type} policy has no diffusion sampler to change (--sampler / --num-inference-steps)")

    def action_bounds(self) -> tuple[list[float], list[float]] | None:
        """(low, high) that this policy clips its actions to, when it records them (the residual); else None."""
        return None

    def predict_action_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        """obs[key]: (B, n_obs_steps, *shape) in env units -> actions (B, horizon, action_dim) in env units."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a normalized-on-the-fly batch of sampler windows."""
        raise NotImplementedError

    @torch.no_grad()
    def select_action(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs[key]: (B, *shape) for the current step -> action (B, action_dim).

        Plans a chunk when the queue is empty and executes its steps n_obs_steps-1 ..
        n_obs_steps-1+n_action_steps-1, the ones aligned with now and the future.
        """
        self._obs_history.push({k: obs[k] for k in self.config.obs_keys})
        if not self._action_queue:
            chunk = self.predict_action_chunk(self._obs_history.stacked(lambda steps: torch.stack(steps, dim=1)))
            start = self.config.n_obs_steps - 1
            self._action_queue.extend(chunk[:, start : start + self.config.n_action_steps].unbind(dim=1))
        return self._action_queue.popleft()

    def normalize_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Env-unit observations -> normalized state keys; images and points pass through to their encoders."""
        return {k: self.normalizer.normalize(k, obs[k]) for k in self.config.state_keys} | {k: obs[k] for k in self.config.sensor_keys}

    def obs_window_features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized obs window per key -> per-step features (B, n_obs_steps, obs_feature_dim): states, cameras, points."""
        parts = [self.state_window(obs)] if self.config.state_keys else []
        if self.vision is not None:
            parts.append(self.vision({k: obs[k] for k in self.config.image_keys}))
        if self.points is not None:
            parts.append(self.points(obs))
        return torch.cat(parts, dim=-1)

    def state_window(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized obs window per key (B, n_obs_steps, dim) -> concatenated (B, n_obs_steps, state_dim)."""
        parts = []
        for key, dim in zip(self.config.state_keys, self.config.state_dims):
            x = obs[key]
            if x.ndim != 3 or x.shape[1] != self.config.n_obs_steps or x.shape[2] != dim:
                raise ValueError(f"observation {key!r} has shape {tuple(x.shape)}, expected (B, {self.config.n_obs_steps}, {dim})")
            parts.append(x)
        return torch.cat(parts, dim=-1)

    def state_features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Observation windows in env units (B, n_obs_steps, dim) per key -> normalized, flat (B, n_obs_steps * state_dim)."""
        normalized = {k: self.normalizer.normalize(k, obs[k]) for k in self.config.state_keys}
        return self.state_window(normalized).flatten(1)

    def fingerprint(self) -> str:
        """sha256 of what this policy computes: policy type, full config, weights and normalizer statistics.

        Independent of file layout, so a re-saved copy of a checkpoint has the same fingerprint.
        """
        config = config_to_dict(self.config)
        if not config.get("image_keys"):  # camera fields do nothing without cameras: state-only hashes as in format 1
            config = {k: v for k, v in config.items() if k not in V1_TO_V2_FIELDS | V4_TO_V5_FIELDS}
        if config.get("vision_encoder") == V4_TO_V5_FIELDS["vision_encoder"]:  # ResNet-18 cameras hash as in format 4
            config.pop("vision_encoder")
        if not config.get("task_names"):  # single-task policies hash as in format 2
            config.pop("task_names", None)
        config.pop("observability", None)  # derived from the keys: it changes nothing that is computed
        if not config.get("point_cloud_key"):  # point-cloud fields do nothing without a point cloud: hash as in format 5
            config = {k: v for k, v in config.items() if k not in V5_TO_V6_FIELDS}
        for fields in self.fields_added.values():  # fields at their pre-existing behaviour hash as before they existed
            config = {k: v for k, v in config.items() if not (k in fields and v == fields[k])}
        digest = hashlib.sha256(json.dumps([self.policy_type, config], sort_keys=True).encode())
        tensors = {f"weights/{k}": v for k, v in self.state_dict().items()}
        tensors |= {f"normalizer/{k}": v for k, v in self.normalizer.to_tensors().items()}
        for name in sorted(tensors):
            t = tensors[name].detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update(json.dumps(self.normalizer.modes_dict(), sort_keys=True).encode())
        return digest.hexdigest()

    def window_offsets(self) -> dict[str, list[int]]:
        return window_offsets(self.config)

    def check_ready(self) -> None:
        """Raise if this policy cannot act yet (e.g. a VQ-BeT still in its tokenizer phase)."""

    def finish_training_phases(self) -> None:
        """Mark every training phase as done, so untrained weights can act (benchmarks, tests)."""

    def optim_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups; policies with parts that train differently override this."""
        return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay}]

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write config, weights (default: this module's) and normalizer into `directory`, atomically per file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = weights if weights is not None else self.state_dict()
        atomic_save_safetensors(directory / WEIGHTS_FILE, state, metadata={"policy_type": self.policy_type})
        self.normalizer.save(directory / NORMALIZER_FILE)
        atomic_write_json(
            directory / CONFIG_FILE,
            {"policy_type": self.policy_type, "format_version": FORMAT_VERSION, "config": config_to_dict(self.config)},
        )

    @staticmethod
    def load_config(directory: str | Path) -> tuple[type[Policy], Any]:
        path = Path(directory) / CONFIG_FILE
        payload = read_json(path)
        if not isinstance(payload, dict):
            raise CheckpointError(f"{path}: expected a JSON object with policy_type, format_version and config, got {type(payload).__name__}")
        for field in ("policy_type", "format_version", "config"):
            if field not in payload:
                raise CheckpointError(f"{path}: missing field {field!r}")
        version = payload["format_version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(f"{path}: format_version {version!r}, this code reads 1 to {FORMAT_VERSION}")
        policy_type = payload["policy_type"]
        try:
            cls = policy_class(policy_type if isinstance(policy_type, str) else repr(policy_type))
        except KeyError as e:
            raise CheckpointError(f"{path}: {e.args[0]}") from None
        if version < FORMAT_VERSION and isinstance(payload["config"], dict):
            older = (V1_TO_V2_FIELDS if version == 1 else {}) | (V2_TO_V3_FIELDS if version <= 2 else {}) | (V4_TO_V5_FIELDS if version <= 4 else {})
            older |= V5_TO_V6_FIELDS if version <= 5 else {}
            for added_in, fields in cls.fields_added.items():
                older |= fields if version < added_in else {}
            payload["config"] = older | payload["config"]
        return cls, config_from_dict(cls.config_class, payload["config"], where=str(path))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Policy:
        """Load any registered policy type from a checkpoint dir. Every file must be present and match."""
        import policies  # noqa: F401  (registers all policy types)

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"no checkpoint directory at {directory}")
        policy_cls, config = Policy.load_config(directory)
        if cls is not Policy and not issubclass(policy_cls, cls):
            raise CheckpointError(f"{directory} holds a {policy_cls.policy_type} policy, not a {cls.policy_type} one")
        return policy_cls.load_from_dir(directory, config).to(map_location).eval()

    @classmethod
    def load_from_dir(cls, directory: Path, config: Any) -> Policy:
        """Build this policy type from its parsed config and the files in `directory`.

        Wrapper policies (DSRL, residual) override this to load the base checkpoint they contain.
        """
        policy = cls(config, load_normalizer(directory))
        state = load_safetensors(directory / WEIGHTS_FILE)
        load_state_dict_strict(policy, state, str(directory / WEIGHTS_FILE))
        return policy


def load_normalizer(directory: Path) -> Normalizer:
    try:
        return Normalizer.load(directory / NORMALIZER_FILE)
    except (ValueError, OSError) as e:
        raise CheckpointError(str(e)) from e


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """`load_state_dict` that names every missing, unexpected or mis-shaped tensor."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{where} does not match the model built from config.json: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )
    module.load_state_dict(state, strict=True)
