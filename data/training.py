"""Training data: from store paths to the windows and normalizer a policy trains on.

`load_datasets` opens and validates one or several stores, checks their keys against the policy config, fills
in its shapes and concatenates them (stores from several envs add the task one-hot: a multi-task policy).
`training_windows` builds the sampler over them (in RAM, or streaming through a resident set under a RAM cap)
and the normalizer fitted on them. policies/training.py (train.py) and the benches use these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.frames import ConcatFrames
from data.normalize import Normalizer
from data.sampler import WindowSampler
from data.store import EpisodeStore, KeySpec, StoreError
from core.observability import observability
from data.stream import StreamingWindows
from policies.base import window_offsets
from policies.io_config import ENV_STATE_KEY, TASK_KEY


def demo_stores(
    dataset: tuple[Path, ...], run_dir: Path, env: str, n_demos: int, image_keys: tuple[str, ...], image_size: int, resume: bool, point_cloud: bool = False
) -> tuple[Path, ...]:
    """The stores to train on: `dataset` when given, else <run_dir>/demos.zarr, collected by the scripted expert
    (with the cameras the policy's image keys name, and the suite's point cloud if it reads one) if it is not there yet."""
    if dataset:
        return tuple(dataset)
    path = run_dir / "demos.zarr"
    if not path.exists():
        from data.collect import CollectConfig, collect
        from envs.cameras import camera_of

        cameras = tuple(camera_of(k) for k in image_keys)
        _, report = collect(CollectConfig(env=env, episodes=n_demos, out=path, cameras=cameras, image_size=image_size, resume=resume, point_cloud=point_cloud))
        print(f"demos: {report.summary()} -> {path}")
    return (path,)


def derivable_keys(store: EpisodeStore, keys: list[str] | tuple[str, ...]) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Those of `keys` the store lacks but its env derives from a stored key (envs.make.derived_keys):
    key -> (source key, function). E.g. Meta-World's `relative` vectors for stores recorded before they existed."""
    from envs.make import derived_keys

    specs = store.key_specs()
    known = derived_keys(str(store.attrs.get("env_id", "")))
    return {k: known[k] for k in keys if k not in specs and k in known and known[k][0] in specs}


def with_derived(arrays: dict[str, np.ndarray], derived: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]) -> dict[str, np.ndarray]:
    """`arrays` plus the derived keys, computed from their sources in `arrays`."""
    return arrays | {k: derive(arrays[source]).astype(np.float32) for k, (source, derive) in derived.items()}


def load_training_data(store_path: Path, policy_cfg: Any, load_vectors: bool = True) -> tuple[EpisodeStore, dict[str, Any], Any]:
    """Open and validate the store, check its keys against the policy, fill the policy's shapes.

    Returns the store, key -> array (state and action keys in RAM unless `load_vectors` is False; image keys
    as lazy frame views) and the filled policy config.
    """
    if ENV_STATE_KEY in policy_cfg.state_keys:
        raise ValueError(f"state_keys {policy_cfg.state_keys}: the {ENV_STATE_KEY!r} placeholder must be resolved for an env first (policies.training.with_env_state_keys)")
    store = EpisodeStore.open(store_path)
    vector_keys = [*policy_cfg.state_keys, policy_cfg.action_key]
    point_keys = [policy_cfg.point_cloud_key] if policy_cfg.point_cloud_key else []
    keys = [*vector_keys, *policy_cfg.image_keys, *point_keys]
    specs = store.key_specs()
    derived = derivable_keys(store, keys)
    missing = [k for k in keys if k not in specs and k not in derived]
    if missing:
        raise StoreError(f"{store_path}: policy needs keys {missing}, store has {sorted(specs)}")
    if derived and not load_vectors:
        raise StoreError(f"{store_path}: keys {sorted(derived)} are not stored; training derives them from {sorted({s for s, _ in derived.values()})} "
                         "in RAM, but streaming (--data-ram-gb) reads stored keys only. Train without --data-ram-gb or collect the demos again")
    stored = [k for k in keys if k not in derived]
    store.check({k: specs[k] for k in stored})
    specs |= {k: KeySpec(derive(np.zeros((1, *specs[source].shape), specs[source].dtype)).shape[1:], "float32") for k, (source, derive) in derived.items()}
    for key in vector_keys:
        if len(specs[key].shape) != 1:
            raise StoreError(f"{store_path}: key {key!r} has per-step shape {specs[key].shape}; expected a 1-D vector (images go in policy.image_keys)")
    image_shapes = {k: specs[k].shape for k in policy_cfg.image_keys}
    for key, shape in image_shapes.items():
        if specs[key].dtype != "uint8" or len(shape) != 3 or shape[2] != 3:
            raise StoreError(f"{store_path}: image key {key!r} is {specs[key].dtype} {shape}; expected uint8 (H, W, 3) frames")
    if len(set(image_shapes.values())) > 1:
        raise StoreError(f"{store_path}: image keys have different shapes {image_shapes}; expected one shared (H, W, 3)")
    for key in point_keys:
        if specs[key].dtype != "float32" or len(specs[key].shape) != 2 or specs[key].shape[1] not in (3, 6):
            raise StoreError(f"{store_path}: point-cloud key {key!r} is {specs[key].dtype} {specs[key].shape}; expected float32 (N, 3) or (N, 6) points")
    state_dims = tuple(specs[k].shape[0] for k in policy_cfg.state_keys)
    action_dim = specs[policy_cfg.action_key].shape[0]
    image_shape = next(iter(image_shapes.values()), ())
    point_cloud_shape = specs[point_keys[0]].shape if point_keys else ()
    filled = {"state_dims": state_dims, "action_dim": action_dim, "image_shape": image_shape, "point_cloud_shape": point_cloud_shape}
    for name, want in filled.items():
        have = getattr(policy_cfg, name)
        if have not in ((), 0, want):
            raise StoreError(f"{store_path}: policy.{name}={have} but the store has {want} (keys {keys})")
    policy_cfg = dataclasses.replace(policy_cfg, **filled, **point_cloud_source(store, policy_cfg), observability=observability(policy_cfg.obs_keys))
    vectors: dict[str, Any] = {}
    if load_vectors:  # the stored vector keys plus the sources of the derived ones, then the derived ones
        to_read = dict.fromkeys([*(k for k in vector_keys if k not in derived), *(source for source, _ in derived.values())])
        vectors = with_derived(store.load(list(to_read)), derived)
        vectors |= store.load(point_keys)  # (T, N, D) float32: a few kB per step, kept in RAM like the vectors
    arrays: dict[str, Any] = {k: vectors[k] for k in [*vector_keys, *point_keys] if k in vectors} | {k: store.frames(k) for k in policy_cfg.image_keys}
    return store, arrays, policy_cfg


def point_cloud_source(store: EpisodeStore, policy_cfg: Any) -> dict[str, Any]:
    """How the store's point cloud was rendered (its `point_cloud` attrs, written by data.collect), as policy config
    fields, so that evaluation renders the same cloud. Empty without a point cloud or for stores that lack them."""
    source = store.attrs.get("point_cloud") if policy_cfg.point_cloud_key else None
    if not source:
        return {}
    return {
        "point_cloud_cameras": tuple(source["cameras"]), "point_cloud_image_size": int(source["image_size"]),
        "point_cloud_crop": tuple(float(x) for x in (*source["crop_low"], *source["crop_high"])),
        "point_cloud_camera_positions": tuple(float(x) for position in source.get("camera_positions", []) for x in position),
    }


@dataclass
class TrainingData:
    """One or several stores, concatenated: what the sampler and normalizer see."""

    paths: tuple[Path, ...]
    env_ids: list[str]
    episode_ends: np.ndarray
    arrays: dict[str, Any]
    policy_cfg: Any

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1])


def load_datasets(paths: tuple[Path, ...], policy_cfg: Any, load_vectors: bool = True) -> TrainingData:
    """`load_training_data` for each store, then concatenated. Stores from several envs add the task one-hot."""
    base_cfg = policy_cfg  # the stores' own keys; the task one-hot is added below
    if TASK_KEY in policy_cfg.state_keys or policy_cfg.task_names:
        base_cfg = dataclasses.replace(policy_cfg, state_keys=tuple(k for k in policy_cfg.state_keys if k != TASK_KEY), state_dims=(), task_names=())
    loaded = [load_training_data(path, base_cfg, load_vectors) for path in paths]
    filled = loaded[0][2]
    for path, (_, _, cfg) in zip(paths[1:], loaded[1:]):
        shapes = [(f, getattr(filled, f), getattr(cfg, f)) for f in ("state_dims", "action_dim", "image_shape") if getattr(filled, f) != getattr(cfg, f)]
        if shapes:
            raise StoreError(f"{path}: does not match {paths[0]}: " + "; ".join(f"{f} {b} vs {a}" for f, a, b in shapes))
    env_ids = [store.attrs["env_id"] for store, _, _ in loaded]
    lengths = [store.n_steps for store, _, _ in loaded]
    ends = np.concatenate([store.episode_ends + offset for (store, _, _), offset in zip(loaded, np.cumsum([0] + lengths[:-1]))])
    if len(loaded) == 1:
        arrays = loaded[0][1]
    else:
        arrays = {k: (np.concatenate([a[k] for _, a, _ in loaded]) if load_vectors else None) for k in loaded[0][1] if k not in filled.image_keys}
        arrays = {k: v for k, v in arrays.items() if v is not None} | {k: ConcatFrames([a[k] for _, a, _ in loaded]) for k in filled.image_keys}
    tasks = list(dict.fromkeys(env_ids))
    if len(tasks) > 1:  # a multi-task policy: the task id is a state key, filled per row from the store's env
        if not load_vectors:
            raise StoreError(f"--data-ram-gb streams a single store; got {len(paths)} stores of {tasks}. Merge them into one store first")
        arrays[TASK_KEY] = np.concatenate([np.tile(np.eye(len(tasks), dtype=np.float32)[tasks.index(env)], (n, 1)) for env, n in zip(env_ids, lengths)])
        filled = dataclasses.replace(filled, state_keys=(*filled.state_keys, TASK_KEY), state_dims=(*filled.state_dims, len(tasks)), task_names=tuple(tasks))
    elif len(paths) > 1 and not load_vectors:
        raise StoreError(f"--data-ram-gb streams a single store; got {len(paths)}. Merge them into one store first")
    return TrainingData(tuple(paths), env_ids, ends, arrays, filled)


def training_windows(data: TrainingData, ram_gb: float | None, seed: int, rotate_every: int) -> tuple[WindowSampler | StreamingWindows, Normalizer]:
    """The sampler of the policy's windows over `data` and the normalizer fitted on it: everything in RAM, or
    (with `ram_gb`) whole episodes streaming from the single store through a resident set (data/stream.py)."""
    cfg = data.policy_cfg
    if ram_gb is None:
        return WindowSampler(data.arrays, data.episode_ends, window_offsets(cfg)), Normalizer.fit(data.arrays, cfg.normalization_modes())
    sampler = StreamingWindows(data.paths[0], [*cfg.state_keys, cfg.action_key], cfg.image_keys, window_offsets(cfg), int(ram_gb * 1e9), seed, rotate_every)
    return sampler, sampler.fit_normalizer(cfg.normalization_modes())
