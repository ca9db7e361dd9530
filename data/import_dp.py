"""Import a diffusion_policy ReplayBuffer zarr store into an episode store, one episode at a time.

    python -m data.import_dp pusht_cchi_v7_replay.zarr demos/pusht.zarr --env pusht/PushT --fps 10
    python -m data.import_dp dp_store.zarr demos/mine.zarr --env metaworld/drawer-open-v3 --fps 80 --map state:obs --map img:image_front

diffusion_policy layout (zarr format 2 as DP writes it, or format 3):
    data/<key>          (n_steps, ...) arrays, episodes concatenated over time
    meta/episode_ends   (n_episodes,) cumulative ends
and no attributes of ours: the env id and fps come from --env and --fps.

What the import does:
- Copies every data key (or those in --keys), renamed by --map src:dst.
- Images: float arrays with per-step shape (H, W, 3) and values in 0..255 (Push-T's `img` is float32) become
  uint8; uint8 ones are copied. Anything else is refused with the key and what was found.
- Codecs: whatever numcodecs reads (Blosc, Zstd, LZ4, GZip, uncompressed) and, when the `imagecodecs` package is
  installed, DP's image caches (Jpeg2k). A missing codec stops the import with its name and the package.
- Memory: arrays under 64 MiB are read once; larger ones one episode slice at a time.
- Output: written to a temporary sibling and renamed when complete, then validated, so an interrupted import
  leaves no store at `out`.

We recommend converting (this module) over opening DP stores in place: the converted store has per-frame image
chunks with checksums (fast random windows for training), our metadata (env id, fps, source) and a validation pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro
import zarr
from zarr.storage import LocalStore

from data.store import EpisodeStore, StoreError, write_store_atomically

READ_WHOLE_BYTES = 64 << 20
"""Arrays smaller than this are read once; larger ones one episode at a time (bounded RAM)."""

CODEC_PACKAGES = {"imagecodecs_": "imagecodecs", "jpeg2k": "imagecodecs", "blosc2": "numcodecs"}
"""Codec id prefix -> the package that provides it, for the missing-codec message."""


class DPFormatError(StoreError):
    """A diffusion_policy store that does not have the expected layout, or cannot be decoded here."""


@dataclass(frozen=True)
class ImportDPConfig:
    src: tyro.conf.Positional[Path]
    """diffusion_policy zarr store (a directory with data/ and meta/episode_ends)."""
    out: tyro.conf.Positional[Path]
    """Episode store to write (must not exist unless --overwrite)."""
    env: str
    """Env id of the demos, <suite>/<task> (e.g. metaworld/drawer-open-v3); DP stores do not record it."""
    fps: float
    """Control frequency of the demos in Hz; DP stores do not record it."""
    map: tuple[str, ...] = ()
    """Key renames src:dst, e.g. --map state:obs img:image_front. Unmapped keys keep their names."""
    keys: tuple[str, ...] = ()
    """Source keys to import (default: every data key)."""
    overwrite: bool = False
    """Replace an existing store at `out`."""


def register_optional_codecs() -> None:
    """Make imagecodecs' numcodecs codecs (Jpeg2k, ...) readable when that package is installed."""
    try:
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        return
    register_codecs(verbose=False)


def codec_error(src: Path, where: str, exc: Exception) -> DPFormatError | None:
    """A DPFormatError naming the codec and its package when `exc` says a codec is not available."""
    match = re.search(r"codec not available: '*([\w.-]+)", str(exc))
    if match is None:
        return None
    codec = match.group(1)
    package = next((pkg for prefix, pkg in CODEC_PACKAGES.items() if codec.startswith(prefix)), None)
    hint = f"install the {package} package (pip install {package})" if package else "install the package that registers it with numcodecs"
    return DPFormatError(f"{src}: {where} is compressed with codec {codec!r}, which is not installed; {hint}")


def open_dp_store(src: Path) -> tuple[dict[str, zarr.Array], np.ndarray]:
    """data key -> array and the episode ends of a ReplayBuffer-layout zarr store, checked for consistency."""
    register_optional_codecs()
    if not src.is_dir():
        raise DPFormatError(f"{src}: no such directory; expected a diffusion_policy zarr store")
    try:
        root = zarr.open_group(LocalStore(src, read_only=True), mode="r")
    except Exception as exc:
        raise DPFormatError(f"{src}: not a readable zarr group (expected .zgroup or zarr.json): {type(exc).__name__}: {exc}") from exc
    for name, kind in (("data", zarr.Group), ("meta/episode_ends", zarr.Array)):
        try:
            node = root[name]
        except KeyError:
            raise DPFormatError(f"{src}: missing {name}; expected diffusion_policy's data/<key> arrays and meta/episode_ends") from None
        except Exception as exc:
            raise codec_error(src, name, exc) or DPFormatError(f"{src}: cannot read {name}: {exc}") from exc
        if not isinstance(node, kind):
            raise DPFormatError(f"{src}: {name} is a {type(node).__name__}; expected a zarr {kind.__name__.lower()}")
    arrays: dict[str, zarr.Array] = {}
    data = root["data"]
    for key in sorted(p.name for p in (src / "data").iterdir() if p.is_dir()):  # listing via zarr would parse every codec at once
        try:
            node = data[key]
        except Exception as exc:
            raise codec_error(src, f"data/{key}", exc) or DPFormatError(f"{src}: cannot open data/{key}: {exc}") from exc
        if isinstance(node, zarr.Array):
            arrays[key] = node
    if not arrays:
        raise DPFormatError(f"{src}: data/ holds no arrays")
    ends = np.asarray(root["meta/episode_ends"][:])
    if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer) or len(ends) == 0:
        raise DPFormatError(f"{src}: meta/episode_ends has shape {ends.shape} dtype {ends.dtype}; expected a non-empty 1-D integer array")
    ends = ends.astype(np.int64)
    steps = np.diff(np.concatenate([[0], ends]))
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        before = int(ends[i - 1]) if i > 0 else 0
        raise DPFormatError(f"{src}: meta/episode_ends is not strictly increasing: episode_ends[{i}]={int(ends[i])} after {before}; expected cumulative episode ends")
    for key, arr in arrays.items():
        if arr.shape[0] != ends[-1]:
            raise DPFormatError(f"{src}: data/{key} has {arr.shape[0]} steps but meta/episode_ends[-1] is {int(ends[-1])}; expected every data array to hold exactly the committed steps")
    return arrays, ends


def parse_map(pairs: tuple[str, ...], known: list[str], src: Path) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        if pair.count(":") != 1 or not all(pair.split(":")):
            raise DPFormatError(f"--map {pair!r}: expected src:dst, e.g. img:image_front")
        old, new = pair.split(":")
        if old not in known:
            raise DPFormatError(f"{src}: --map {pair!r} names data key {old!r}, which the store does not have; keys: {known}")
        mapping[old] = new
    return mapping


def as_store_array(key: str, x: np.ndarray, where: str) -> np.ndarray:
    """Float (H, W, 3) frames in 0..255 -> uint8; everything else unchanged."""
    if x.ndim == 4 and x.shape[-1] == 3 and x.dtype.kind == "f":
        lo, hi = float(np.min(x)), float(np.max(x))
        if lo < 0 or hi > 255:
            raise DPFormatError(f"{where}: float frames {x.shape} range {lo:.3g}..{hi:.3g}; expected pixel values in 0..255 (or uint8)")
        return np.rint(x).astype(np.uint8)
    return x


def import_dp(cfg: ImportDPConfig) -> EpisodeStore:
    if "/" not in cfg.env:
        raise DPFormatError(f"--env {cfg.env!r}: expected <suite>/<task>, e.g. metaworld/drawer-open-v3")
    arrays, ends = open_dp_store(cfg.src)
    unknown = [k for k in cfg.keys if k not in arrays]
    if unknown:
        raise DPFormatError(f"{cfg.src}: --keys {unknown} not in the store; data keys: {sorted(arrays)}")
    arrays = {k: a for k, a in arrays.items() if not cfg.keys or k in cfg.keys}
    mapping = parse_map(cfg.map, sorted(arrays), cfg.src)
    names = {k: mapping.get(k, k) for k in arrays}
    if len(set(names.values())) < len(names):
        raise DPFormatError(f"--map gives two keys the same name: {names}")
    whole: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        if arr.nbytes < READ_WHOLE_BYTES:
            whole[key] = read_slice(cfg.src, key, arr, 0, int(ends[-1]))

    def episodes() -> Iterator[dict[str, np.ndarray]]:
        start = 0
        for i, end in enumerate(ends.tolist()):
            episode: dict[str, Any] = {}
            for key, arr in arrays.items():
                x = whole[key][start:end] if key in whole else read_slice(cfg.src, key, arr, start, end)
                episode[names[key]] = as_store_array(key, x, f"{cfg.src}:data/{key} episode {i}")
            yield episode
            start = end

    store = write_store_atomically(
        cfg.out, episodes(), env_id=cfg.env, fps=cfg.fps, source=f"diffusion_policy zarr {cfg.src.name} (data.import_dp)",
        extra_attrs={"dp_source": str(cfg.src), "dp_keys": names}, overwrite=cfg.overwrite,
    )
    store.check()
    return store


def read_slice(src: Path, key: str, arr: zarr.Array, start: int, end: int) -> np.ndarray:
    try:
        return np.asarray(arr[start:end])
    except Exception as exc:
        raise codec_error(src, f"data/{key}", exc) or DPFormatError(f"{src}: cannot read data/{key}[{start}:{end}]: {type(exc).__name__}: {exc}") from exc


def main() -> None:
    cfg = tyro.cli(ImportDPConfig)
    try:
        store = import_dp(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {store.path}: {store.n_episodes} episodes, {store.n_steps} steps, keys {store.keys}")


if __name__ == "__main__":
    main()
