"""On-disk episode store: one zarr v3 group laid out like diffusion_policy's ReplayBuffer.

Layout::

    <path>/                 zarr group; attrs: schema_version, env_id, fps, source, extras
      data/<key>            (n_steps, *shape) arrays, episodes concatenated over time
      meta/episode_ends     (n_episodes,) int64 cumulative episode ends

``meta/episode_ends`` is the commit record: appends write it after the data arrays,
so data beyond ``episode_ends[-1]`` is an uncommitted tail (from a crash) that readers
ignore and that opening with ``mode="a"`` truncates.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from data.frames import LazyFrames

SCHEMA_VERSION = 1
REQUIRED_ATTRS = ("schema_version", "env_id", "fps", "source")
LOWDIM_CHUNK_STEPS = 10_000
IMAGE_CHUNK_STEPS = 1  # one compressed chunk per frame: random window reads touch only the frames they need
_SCAN_BLOCK_VALUES = 4_000_000  # validate() reads float arrays in blocks of about this many values
_ALLOWED_DTYPE_KINDS = "biuf"  # bool, signed/unsigned int, float


class StoreError(ValueError):
    """A store on disk, or an episode offered to it, is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class KeySpec:
    """Per-step shape (time axis excluded) and numpy dtype name (e.g. "float32") of a data key."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)


class EpisodeStore:
    """Episodes of time-aligned arrays in one zarr group (see module docstring).

    Build with :meth:`create` or :meth:`open`; the constructor is internal.
    """

    def __init__(self, path: Path, root: zarr.Group, mode: str) -> None:
        self.path = path
        self.mode = mode
        self._root = root
        self._data_group: zarr.Group = _child(root, "data", zarr.Group, path)
        self._ends_array: zarr.Array = _child(root, "meta/episode_ends", zarr.Array, path)
        self._arrays: dict[str, zarr.Array] = dict(self._data_group.arrays())
        ends = self._ends_array[:]
        if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
            raise StoreError(
                f"{path}: meta/episode_ends has shape {ends.shape} dtype {ends.dtype}; "
                "expected a 1-D integer array"
            )
        self._ends = ends.astype(np.int64)
        if len(self._ends) and self._ends[-1] == 0:  # slot resized but never written: an append killed mid-commit
            self._ends = self._ends[:-1]

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        env_id: str,
        fps: float,
        source: str,
        extra_attrs: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> EpisodeStore:
        """Create an empty store (opened in mode "a"); refuse an existing path unless overwrite."""
        path = Path(path)
        attrs = _root_attrs(path, env_id=env_id, fps=fps, source=source, extra_attrs=extra_attrs)
        if os.path.lexists(path):
            if not overwrite:
                raise StoreError(f"{path}: already exists; pass overwrite=True to replace it")
            _remove(path)
        try:
            root = zarr.open_group(LocalStore(path), mode="w-", attributes=attrs)
            root.create_group("data")
            root.create_group("meta").create_array(
                "episode_ends", shape=(0,), chunks=(LOWDIM_CHUNK_STEPS,), dtype="int64", compressors=ZstdCodec(level=0, checksum=True)
            )
        except Exception as exc:
            raise StoreError(f"{path}: cannot create episode store: {exc}") from exc
        return cls(path, root, "a")

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> EpisodeStore:
        """Open an existing store read-only ("r") or for appending ("a", truncates any uncommitted tail)."""
        if mode not in ("r", "a"):
            raise ValueError(f"{path}: mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        root = _open_root(path, mode)
        problems = _attr_problems(dict(root.attrs))
        if problems:
            if not any(a in root.attrs for a in REQUIRED_ATTRS) and "data" in root and "meta" in root:
                problems.append(
                    f"this looks like a diffusion_policy store; convert it with: python -m data.import_dp {path} OUT.zarr --env <suite>/<task> --fps N"
                )
            raise StoreError(f"{path}: " + "; ".join(problems))
        try:
            store = cls(path, root, mode)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{path}: cannot read episode store: {exc}") from exc
        if mode == "a":
            store._truncate_tail()
        return store

    # ----------------------------------------------------------------- properties

    @property
    def attrs(self) -> dict[str, Any]:
        """Copy of the root attributes."""
        return dict(self._root.attrs)

    @property
    def keys(self) -> list[str]:
        """Sorted data keys."""
        return sorted(self._arrays)

    @property
    def episode_ends(self) -> np.ndarray:
        """Copy of the committed cumulative episode ends (int64)."""
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        """Committed steps (= episode_ends[-1], or 0 for an empty store)."""
        return int(self._ends[-1]) if len(self._ends) else 0

    def key_specs(self) -> dict[str, KeySpec]:
        """Per-step shape and dtype of every data key."""
        return {k: KeySpec(a.shape[1:], str(a.dtype)) for k, a in sorted(self._arrays.items())}

    # ----------------------------------------------------------------- writing

    def append_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode (key -> (T, *shape) array), all or nothing.

        The first episode defines keys, shapes and dtypes (float64 is stored as float32).
        Everything is checked before writing; a failure while writing rolls the data
        arrays back to their previous length and re-raises.
        """
        if self.mode != "a":
            raise StoreError(f"{self.path}: opened read-only (mode 'r'); open with mode='a' to append")
        arrays = self._checked_episode(episode)
        self._require_committed_lengths()
        n0, e0 = self.n_steps, self.n_episodes
        n_new = n0 + next(iter(arrays.values())).shape[0]
        created: list[str] = []
        try:
            for key, x in arrays.items():
                if key not in self._arrays:
                    self._arrays[key] = self._create_data_array(key, x.shape[1:], x.dtype)
                    created.append(key)
                arr = self._arrays[key]
                arr.resize((n_new, *x.shape[1:]))
                arr[n0:n_new] = x
            self._ends_array.resize((e0 + 1,))
            self._ends_array[e0] = n_new
        except BaseException as exc:
            try:
                self._rollback(n0, e0, created)
            except Exception as rollback_exc:
                raise StoreError(
                    f"{self.path}: append failed ({exc!r}) and rollback failed ({rollback_exc!r}); "
                    "reopen with mode='a' to drop the uncommitted tail"
                ) from exc
            raise
        self._ends = np.append(self._ends, np.int64(n_new))

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Set root attributes (JSON values); zarr writes the metadata file atomically."""
        self.replace_attrs(self.attrs | dict(attrs))

    def replace_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Replace all root attributes; the required ones (env_id, fps, source, schema_version) are checked."""
        if self.mode != "a":
            raise StoreError(f"{self.path}: opened read-only (mode 'r'); open with mode='a' to change attributes")
        problems = _attr_problems(dict(attrs))
        if problems:
            raise StoreError(f"{self.path}: " + "; ".join(problems))
        self._root.attrs.put(dict(attrs))  # one metadata write, so a kill leaves the old attributes or the new

    def _checked_episode(self, episode: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate an episode against the store; return arrays cast to the stored dtypes."""
        if not isinstance(episode, Mapping) or not episode:
            raise StoreError(
                f"{self.path}: episode is empty or not a mapping ({type(episode).__name__}); "
                "expected a dict of key -> (T, ...) arrays"
            )
        arrays: dict[str, np.ndarray] = {}
        for key, value in episode.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise StoreError(f"{self.path}: episode key {key!r} is invalid; expected a non-empty str without '/'")
            x = np.asarray(value)
            if x.ndim < 1 or x.dtype.kind not in _ALLOWED_DTYPE_KINDS:
                raise StoreError(
                    f"{self.path}: episode key {key!r} has shape {x.shape} dtype {x.dtype}; "
                    "expected a numeric or bool array with a leading time axis"
                )
            arrays[key] = x

        lengths = {k: x.shape[0] for k, x in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise StoreError(
                f"{self.path}: ragged episode, steps per key {lengths}; expected all keys to have the same length"
            )
        if next(iter(lengths.values())) < 1:
            raise StoreError(f"{self.path}: episode has 0 steps (keys {sorted(arrays)}); expected T >= 1")

        specs = self.key_specs()
        if specs:
            missing, extra = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
            if missing or extra:
                raise StoreError(
                    f"{self.path}: episode keys do not match the store: missing {missing}, extra {extra}; "
                    f"expected keys {sorted(specs)}"
                )
        for key, x in arrays.items():
            spec = specs.get(key)
            if spec is None:
                if x.dtype == np.float64:
                    arrays[key] = x = x.astype(np.float32)
            else:
                if x.shape[1:] != spec.shape:
                    raise StoreError(
                        f"{self.path}: episode key {key!r} has per-step shape {x.shape[1:]} "
                        f"(array shape {x.shape}); expected {spec.shape} as in data/{key}"
                    )
                if x.dtype.name != spec.dtype:
                    if not (x.dtype == np.float64 and spec.dtype == "float32"):
                        raise StoreError(
                            f"{self.path}: episode key {key!r} has dtype {x.dtype}; "
                            f"expected {spec.dtype} as in data/{key}"
                        )
                    arrays[key] = x = x.astype(np.float32)
            bad = _first_nonfinite(x)
            if bad is not None:
                t, what = bad
                raise StoreError(
                    f"{self.path}: episode key {key!r} (shape {x.shape} dtype {x.dtype}) has {what} "
                    f"at time index {t}; expected finite values"
                )
        return arrays

    def _require_committed_lengths(self) -> None:
        """Refuse to append to a store whose data arrays disagree with episode_ends."""
        lengths = {k: a.shape[0] for k, a in self._arrays.items()}
        if any(n != self.n_steps for n in lengths.values()):
            raise StoreError(
                f"{self.path}: data array lengths {lengths} differ from n_steps {self.n_steps} "
                "(meta/episode_ends[-1]); expected equal lengths, run validate() for details"
            )

    def _create_data_array(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> zarr.Array:
        steps_per_chunk = IMAGE_CHUNK_STEPS if len(shape) >= 2 else LOWDIM_CHUNK_STEPS
        return self._data_group.create_array(  # zstd with a content checksum: a corrupted chunk fails to read
            key, shape=(0, *shape), chunks=(steps_per_chunk, *shape), dtype=dtype, compressors=ZstdCodec(level=0, checksum=True)
        )

    def _rollback(self, n_steps: int, n_episodes: int, created: list[str]) -> None:
        for key in created:
            del self._data_group[key]
            del self._arrays[key]
        for arr in self._arrays.values():
            if arr.shape[0] != n_steps:
                arr.resize((n_steps, *arr.shape[1:]))
        if self._ends_array.shape[0] != n_episodes:
            self._ends_array.resize((n_episodes,))

    def _truncate_tail(self) -> None:
        """Drop what an interrupted append left behind: data past n_steps and an unwritten episode_ends slot."""
        for arr in self._arrays.values():
            if arr.shape[0] > self.n_steps:
                arr.resize((self.n_steps, *arr.shape[1:]))
        if self._ends_array.shape[0] > len(self._ends):
            self._ends_array.resize((len(self._ends),))

    # ----------------------------------------------------------------- reading

    def get_episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i`` (negative indices count from the end) as key -> (T, *shape) arrays."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"{self.path}: episode index {i} out of range; store has {n} episodes")
        i %= n
        start = int(self._ends[i - 1]) if i > 0 else 0
        return {k: self._read(k, start, int(self._ends[i])) for k in self.keys}

    def load(self, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Committed steps [0:n_steps] of the given keys (default all) as in-RAM numpy arrays."""
        keys = self.keys if keys is None else list(keys)
        unknown = [k for k in keys if k not in self._arrays]
        if unknown:
            raise KeyError(f"{self.path}: unknown data keys {unknown}; available keys {self.keys}")
        return {k: self._read(k, 0, self.n_steps) for k in keys}

    def frames(self, key: str):
        """A lazy view of an image key's committed steps: indexing reads only the frames asked for."""
        if key not in self._arrays:
            raise KeyError(f"{self.path}: unknown data key {key!r}; available keys {self.keys}")
        return LazyFrames(self._arrays[key], self.n_steps, f"{self.path}/data/{key}")

    def read(self, key: str, start: int, end: int) -> np.ndarray:
        """Committed steps [start:end] of one key (e.g. one episode's slice)."""
        if not 0 <= start <= end <= self.n_steps:
            raise IndexError(f"{self.path}: steps [{start}:{end}] outside the committed [0:{self.n_steps}]")
        if key not in self._arrays:
            raise KeyError(f"{self.path}: unknown data key {key!r}; available keys {self.keys}")
        return self._read(key, start, end)

    def _read(self, key: str, start: int, end: int) -> np.ndarray:
        try:
            return self._arrays[key][start:end]
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot read data/{key}[{start}:{end}]: {exc}") from exc

    # ----------------------------------------------------------------- validation

    def validate(self, expected: Mapping[str, KeySpec] | None = None) -> list[str]:
        """Re-read the store from disk and return human-readable problems (empty list = valid).

        ``expected`` (key -> KeySpec) additionally requires those keys with that dtype and
        per-step shape; keys not listed are allowed.
        """
        try:
            root = _open_root(self.path, "r")
            arrays: dict[str, zarr.Array] = dict(_child(root, "data", zarr.Group, self.path).arrays())
            ends = _child(root, "meta/episode_ends", zarr.Array, self.path)[:]
            attrs = dict(root.attrs)
        except StoreError as exc:
            return [str(exc)]
        except Exception as exc:
            return [f"{self.path}: cannot read episode store: {exc}"]

        problems = _attr_problems(attrs)
        ends_ok = ends.ndim == 1 and np.issubdtype(ends.dtype, np.integer)
        if not ends_ok:
            problems.append(
                f"meta/episode_ends: shape {ends.shape} dtype {ends.dtype}; expected a 1-D integer array"
            )
            ends = np.zeros(0, dtype=np.int64)
        if len(ends) and ends[-1] == 0:
            problems.append(
                f"meta/episode_ends: unwritten slot at index {len(ends) - 1} (an append was interrupted); open with mode='a' to drop it"
            )
            ends = ends[:-1]
        problems += _ends_problems(ends)
        n_steps = int(ends[-1]) if len(ends) else 0

        if n_steps > 0 and not arrays:
            problems.append(f"data: no arrays, but meta/episode_ends[-1] = {n_steps}; expected data arrays")
        lengths = {k: a.shape[0] for k, a in sorted(arrays.items())}
        for key, arr in sorted(arrays.items()):
            length = arr.shape[0]
            if length < n_steps:
                problems.append(
                    f"data/{key}: ragged, length {length} < n_steps {n_steps} (meta/episode_ends[-1]); "
                    f"array lengths {lengths}"
                )
            elif length > n_steps:
                problems.append(
                    f"data/{key}: uncommitted tail of {length - n_steps} steps (length {length} > "
                    f"n_steps {n_steps}); open with mode='a' to truncate it"
                )
            if arr.dtype.kind == "f":
                problems += _nonfinite_problems(key, arr, min(length, n_steps), ends)

        for key, spec in (expected or {}).items():
            arr = arrays.get(key)
            if arr is None:
                problems.append(
                    f"data/{key}: missing; expected shape {spec.shape} dtype {spec.dtype} "
                    f"(available keys {sorted(arrays)})"
                )
                continue
            if arr.dtype.name != spec.dtype:
                problems.append(f"data/{key}: dtype {arr.dtype.name}, expected {spec.dtype}")
            if tuple(arr.shape[1:]) != spec.shape:
                problems.append(f"data/{key}: per-step shape {tuple(arr.shape[1:])}, expected {spec.shape}")
        return problems

    def check(self, expected: Mapping[str, KeySpec] | None = None) -> None:
        """Raise StoreError listing every problem found by :meth:`validate`."""
        problems = self.validate(expected)
        if problems:
            raise StoreError(f"{self.path}: invalid episode store:\n  - " + "\n  - ".join(problems))

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({str(self.path)!r}, mode={self.mode!r}, "
            f"n_episodes={self.n_episodes}, n_steps={self.n_steps})"
        )


def write_store_atomically(
    path: str | os.PathLike[str],
    episodes: Iterable[Mapping[str, np.ndarray]],
    *,
    env_id: str,
    fps: float,
    source: str,
    extra_attrs: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> EpisodeStore:
    """Write a whole store in a temp sibling directory, then rename it into place.

    ``episodes`` may be a generator: each episode is appended as it is produced, so only one is in RAM.
    ``extra_attrs`` may be a callable, evaluated after the last episode (e.g. seeds known only then).
    On any exception the temp directory is removed and ``path`` is left untouched.
    Returns the finished store opened read-only.
    """
    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise StoreError(f"{path}: already exists; pass overwrite=True to replace it")
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f"{path.name}.tmp-{tag}")
    try:
        store = EpisodeStore.create(tmp, env_id=env_id, fps=fps, source=source, extra_attrs=None if callable(extra_attrs) else extra_attrs)
        for episode in episodes:
            store.append_episode(episode)
        if callable(extra_attrs):
            store._root.attrs.update(_root_attrs(tmp, env_id=env_id, fps=fps, source=source, extra_attrs=extra_attrs()))
        old = _move_into_place(tmp, path, tag, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        _remove(old)
    return EpisodeStore.open(path, "r")


# --------------------------------------------------------------------- helpers


def replace_store(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished store `tmp` to `path` (replacing an old one only with `overwrite`)."""
    old = _move_into_place(tmp, path, secrets.token_hex(4), overwrite)
    if old is not None:
        _remove(old)


def _move_into_place(tmp: Path, path: Path, tag: str, overwrite: bool) -> Path | None:
    """Rename ``tmp`` to ``path``; return the moved-aside old store (to delete), if any."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return None
    if not overwrite:
        raise StoreError(f"{path}: appeared while writing; pass overwrite=True to replace it")
    old = path.with_name(f"{path.name}.old-{tag}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    return old


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _root_attrs(
    path: Path, *, env_id: str, fps: float, source: str, extra_attrs: dict[str, Any] | None
) -> dict[str, Any]:
    if not isinstance(env_id, str) or not env_id:
        raise StoreError(f"{path}: env_id must be a non-empty str, got {env_id!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
        raise StoreError(f"{path}: fps must be a positive finite number, got {fps!r}")
    if not isinstance(source, str):
        raise StoreError(f"{path}: source must be a str, got {source!r}")
    extra = dict(extra_attrs or {})
    reserved = sorted(set(extra) & set(REQUIRED_ATTRS))
    if reserved:
        raise StoreError(f"{path}: extra_attrs may not set reserved attrs {reserved}")
    for key, value in extra.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{path}: extra attr {key!r}={value!r} is not JSON-serialisable: {exc}") from exc
    return {"schema_version": SCHEMA_VERSION, "env_id": env_id, "fps": float(fps), "source": source, **extra}


def _open_root(path: Path, mode: str) -> zarr.Group:
    """Open the root zarr group, turning every failure into a StoreError naming ``path``."""
    if not os.path.lexists(path):
        raise StoreError(f"no episode store at {path}")
    if not path.is_dir():
        raise StoreError(f"{path}: not a directory; expected a zarr group directory")
    try:
        return zarr.open_group(LocalStore(path, read_only=mode == "r"), mode="r" if mode == "r" else "r+")
    except Exception as exc:
        raise StoreError(
            f"{path}: not a readable zarr group (expected {path / 'zarr.json'} describing a group): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _child(root: zarr.Group, name: str, kind: type, path: Path) -> Any:
    """``root[name]``, required to be a zarr Group or Array (``kind``)."""
    try:
        node = root[name]
    except KeyError:
        raise StoreError(f"{path}: missing {name}; expected a zarr {kind.__name__.lower()} there") from None
    except Exception as exc:
        raise StoreError(f"{path}: cannot read {name}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(node, kind):
        raise StoreError(f"{path}: {name} is a {type(node).__name__}; expected a zarr {kind.__name__.lower()}")
    return node


def _attr_problems(attrs: Mapping[str, Any]) -> list[str]:
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    problems = [f"root attrs missing {missing}; expected all of {list(REQUIRED_ATTRS)}"] if missing else []
    version = attrs.get("schema_version")
    if "schema_version" in attrs and (isinstance(version, bool) or not isinstance(version, int)):
        problems.append(f"root attr schema_version={version!r}; expected an int")
    elif isinstance(version, int) and version > SCHEMA_VERSION:
        problems.append(
            f"root attr schema_version={version} is newer than supported ({SCHEMA_VERSION}); upgrade the code"
        )
    return problems


def _ends_problems(ends: np.ndarray) -> list[str]:
    problems = []
    if len(ends) and ends[0] <= 0:
        problems.append(f"meta/episode_ends: first end is {int(ends[0])}; expected a positive value")
    steps = np.diff(ends)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0)) + 1
        problems.append(
            f"meta/episode_ends: not strictly increasing, episode_ends[{i}]={int(ends[i])} "
            f"<= episode_ends[{i - 1}]={int(ends[i - 1])}"
        )
    return problems


def _first_nonfinite(x: np.ndarray) -> tuple[int, str] | None:
    """(time index, "NaN" or "inf") of the first non-finite value of a float array, else None."""
    if x.dtype.kind != "f":
        return None
    bad_steps = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if not bad_steps.any():
        return None
    t = int(np.argmax(bad_steps))
    return t, "NaN" if np.isnan(x[t]).any() else "inf"


def _nonfinite_problems(key: str, arr: zarr.Array, n_steps: int, ends: np.ndarray) -> list[str]:
    """First NaN/inf of ``arr[:n_steps]``, read block by block, as a problem list."""
    block = max(_SCAN_BLOCK_VALUES // max(1, int(np.prod(arr.shape[1:]))), 1)
    for start in range(0, n_steps, block):
        stop = min(start + block, n_steps)
        try:
            values = arr[start:stop]
        except Exception as exc:  # a corrupt or truncated chunk (zstd checksum, short file)
            return [f"data/{key}: cannot read steps [{start}:{stop}] ({type(exc).__name__}: {exc}); a chunk file is damaged"]
        bad = _first_nonfinite(values)
        if bad is not None:
            t = start + bad[0]
            episode = int(np.searchsorted(ends, t, side="right"))
            ep_start = int(ends[episode - 1]) if episode > 0 else 0
            return [
                f"data/{key}: {bad[1]} at step {t} (episode {episode}, step {t - ep_start} within it); "
                "expected finite values"
            ]
    return []
