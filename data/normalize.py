"""Per-key feature normalisation whose statistics are saved with the checkpoint (safetensors).

Modes:
    "min_max":  maps each feature dim to [-1, 1]; dims whose range is < MIN_RANGE use a
                range of 2 centred on their value, so constant dims map to ~0.
    "mean_std": (x - mean) / max(std, MIN_STD).
    "identity": no change.

Statistics reduce every axis except the last (the feature axis): (T, D) -> (D,),
images (T, H, W, C) -> (C,).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from core.io import CheckpointError, atomic_write_bytes, read_safetensors, safetensors_bytes

MODES = ("min_max", "mean_std", "identity")
REQUIRED_STATS = {"min_max": ("min", "max"), "mean_std": ("mean", "std"), "identity": ()}
MIN_RANGE = 1e-4
MIN_STD = 1e-4
FIT_BLOCK_ROWS = 65_536
_FORMAT = "chunkbot.Normalizer/1"
_LOAD_HINT = "expected a safetensors file written by Normalizer.save"


class Normalizer:
    """Per-key normaliser; stats are (D,) float32 CPU tensors keyed by stat name."""

    def __init__(self, modes: Mapping[str, str], stats: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        self._modes: dict[str, str] = {}
        self._stats: dict[str, dict[str, torch.Tensor]] = {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normalizer key {key!r}: unknown mode {mode!r}; allowed modes {list(MODES)}")
            key_stats = {name: torch.as_tensor(t, dtype=torch.float32).cpu() for name, t in stats.get(key, {}).items()}
            for name in REQUIRED_STATS[mode]:
                if name not in key_stats:
                    raise ValueError(
                        f"normalizer key {key!r} (mode {mode!r}): missing stat {name!r}; "
                        f"expected stats {list(REQUIRED_STATS[mode])}, got {sorted(key_stats)}"
                    )
            shapes = {name: tuple(t.shape) for name, t in key_stats.items()}
            if len(set(shapes.values())) > 1 or any(len(s) != 1 for s in shapes.values()):
                raise ValueError(f"normalizer key {key!r}: stat shapes {shapes}; expected equal 1-D (D,) shapes")
            self._modes[key] = mode
            self._stats[key] = key_stats
        unused = sorted(set(stats) - set(modes))
        if unused:
            raise ValueError(f"normalizer stats given for keys {unused} that have no mode; modes {self._modes}")

    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray], modes: Mapping[str, str]) -> Normalizer:
        """Compute min/max/mean/std of every key in ``modes`` over all but the last axis."""
        rows = {k: np.asarray(data[k]) for k in modes if k in data}
        n = min((len(v) for v in rows.values()), default=0)
        if n == 0 or any(len(v) != n for v in rows.values()):  # let fit_blocks report the problem
            return cls.fit_blocks([data], modes)
        step = FIT_BLOCK_ROWS  # float64 temporaries stay a few MB, whatever the data size
        return cls.fit_blocks(({k: v[i : i + step] for k, v in rows.items()} for i in range(0, n, step)), modes)

    @classmethod
    def fit_blocks(cls, blocks: Iterable[Mapping[str, np.ndarray]], modes: Mapping[str, str]) -> Normalizer:
        """Like :meth:`fit`, over data that arrives in blocks (e.g. read from a store larger than RAM).

        Means and variances merge exactly (Chan et al.'s pairwise update, float64), so any blocking gives the
        statistics of the concatenated data."""
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normalizer key {key!r}: unknown mode {mode!r}; allowed modes {list(MODES)}")
        acc: dict[str, dict[str, np.ndarray | int]] = {}
        for block in blocks:
            for key in modes:
                if key not in block:
                    raise ValueError(f"normalizer key {key!r} not in data; available keys {sorted(block)}")
                x = np.asarray(block[key])
                if x.ndim < 2:
                    raise ValueError(f"normalizer key {key!r}: data shape {x.shape}; expected (T, ..., D) with T >= 1")
                flat = x.reshape(-1, x.shape[-1])
                if len(flat) == 0:
                    continue
                if not np.isfinite(flat).all():
                    raise ValueError(f"normalizer key {key!r}: data (shape {x.shape} dtype {x.dtype}) has NaN/inf")
                n, mean = len(flat), flat.mean(axis=0, dtype=np.float64)
                m2 = ((flat - mean) ** 2).sum(axis=0, dtype=np.float64)
                a = acc.get(key)
                if a is None:
                    acc[key] = {"n": n, "mean": mean, "m2": m2, "min": flat.min(axis=0).astype(np.float64), "max": flat.max(axis=0).astype(np.float64)}
                    continue
                if a["mean"].shape != mean.shape:
                    raise ValueError(f"normalizer key {key!r}: feature dim {mean.shape[0]} in one block, {a['mean'].shape[0]} in another")
                total = a["n"] + n
                delta = mean - a["mean"]
                a["mean"] = a["mean"] + delta * (n / total)
                a["m2"] = a["m2"] + m2 + delta**2 * (a["n"] * n / total)
                a["n"] = total
                a["min"] = np.minimum(a["min"], flat.min(axis=0))
                a["max"] = np.maximum(a["max"], flat.max(axis=0))
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for key in modes:
            if key not in acc:
                raise ValueError(f"normalizer key {key!r}: no data; expected (T, ..., D) with T >= 1")
            a = acc[key]
            key_stats = {"min": a["min"], "max": a["max"], "mean": a["mean"], "std": np.sqrt(a["m2"] / a["n"])}
            stats[key] = {name: torch.from_numpy(np.asarray(v, dtype=np.float32)) for name, v in key_stats.items()}
        return cls(modes, stats)

    # ----------------------------------------------------------------- transforms

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (..., D) for ``key``; integer inputs become float32."""
        mode = self._mode(key)
        if mode == "identity":
            return x
        x = self._as_float(key, x)
        if mode == "min_max":
            lo, span = self._min_max(key, x)
            return (x - lo) / span * 2 - 1
        mean, std = self._mean_std(key, x)
        return (x - mean) / std

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        mode = self._mode(key)
        if mode == "identity":
            return x
        x = self._as_float(key, x)
        if mode == "min_max":
            lo, span = self._min_max(key, x)
            return (x + 1) / 2 * span + lo
        mean, std = self._mean_std(key, x)
        return x * std + mean

    def normalize_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise the keys this normaliser knows; pass the rest (e.g. ``*_is_pad``) through."""
        return {k: self.normalize(k, v) if k in self._modes else v for k, v in batch.items()}

    def _mode(self, key: str) -> str:
        if key not in self._modes:
            raise KeyError(f"normalizer has no key {key!r}; known keys {sorted(self._modes)}")
        return self._modes[key]

    def _as_float(self, key: str, x: torch.Tensor) -> torch.Tensor:
        dim = self.feature_dim(key)
        if x.ndim == 0 or x.shape[-1] != dim:
            raise ValueError(
                f"normalizer key {key!r}: input shape {tuple(x.shape)}; expected last dim {dim}"
            )
        return x if x.is_floating_point() else x.float()

    def _stat(self, key: str, name: str, like: torch.Tensor) -> torch.Tensor:
        return self._stats[key][name].to(device=like.device, dtype=like.dtype)

    def _min_max(self, key: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower bound and span; spans < MIN_RANGE become 2, centred on the value."""
        lo, hi = self._stat(key, "min", like), self._stat(key, "max", like)
        span = hi - lo
        narrow = span < MIN_RANGE
        lo = torch.where(narrow, (lo + hi) / 2 - 1, lo)
        return lo, torch.where(narrow, torch.full_like(span, 2.0), span)

    def _mean_std(self, key: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._stat(key, "mean", like), self._stat(key, "std", like).clamp_min(MIN_STD)

    # ----------------------------------------------------------------- introspection

    def modes_dict(self) -> dict[str, str]:
        return dict(self._modes)

    def feature_dim(self, key: str) -> int | None:
        """Feature dim D of ``key``'s stats (None for an identity key without stats)."""
        self._mode(key)
        stats = self._stats[key]
        return int(next(iter(stats.values())).shape[0]) if stats else None

    def check_shapes(self, specs: Mapping[str, int]) -> None:
        """Require ``key -> feature dim`` to match the stats (e.g. against a policy config)."""
        for key, dim in specs.items():
            got = self.feature_dim(key)
            if got is not None and got != dim:
                raise ValueError(f"normalizer key {key!r}: expected feature dim {dim}, got {got} from stats")

    # ----------------------------------------------------------------- persistence

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``"key/stat" -> tensor`` dict (safetensors layout)."""
        return {f"{key}/{name}": t.contiguous() for key, stats in self._stats.items() for name, t in stats.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], modes: Mapping[str, str]) -> Normalizer:
        """Inverse of :meth:`to_tensors`."""
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for flat_name, tensor in tensors.items():
            key, sep, name = flat_name.rpartition("/")
            if not sep or not key:
                raise ValueError(f"normalizer tensor name {flat_name!r}; expected 'key/stat'")
            stats.setdefault(key, {})[name] = tensor
        return cls(modes, stats)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write stats + modes to a safetensors file atomically (temp file in the same dir, then rename)."""
        path = Path(path)
        payload = safetensors_bytes(self.to_tensors(), metadata={"format": _FORMAT, "modes": json.dumps(self._modes)})
        atomic_write_bytes(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Normalizer:
        """Read a file written by :meth:`save`; any problem raises ValueError naming ``path``."""
        path = Path(path)
        try:
            tensors, metadata = read_safetensors(path)
        except CheckpointError as exc:
            raise ValueError(f"{path}: cannot read normalizer ({exc}); {_LOAD_HINT}") from exc
        if metadata.get("format") != _FORMAT or "modes" not in metadata:
            raise ValueError(f"{path}: metadata {metadata} lacks format {_FORMAT!r} and modes; {_LOAD_HINT}")
        try:
            modes = json.loads(metadata["modes"])
            if not isinstance(modes, dict):
                raise ValueError(f"modes metadata is {type(modes).__name__}, not a dict")
            return cls.from_tensors(tensors, modes)
        except ValueError as exc:
            raise ValueError(f"{path}: invalid normalizer ({exc}); {_LOAD_HINT}") from exc

    def __repr__(self) -> str:
        dims = {k: self.feature_dim(k) for k in self._modes}
        return f"Normalizer(modes={self._modes}, dims={dims})"
