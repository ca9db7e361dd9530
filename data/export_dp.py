"""Export an episode store to diffusion_policy's ReplayBuffer layout in zarr format 2.

    python -m data.export_dp demos/button.zarr button_dp.zarr

The result opens with zarr-python 2.x, the version diffusion_policy pins (checked with zarr 2.12.0 +
numcodecs 0.12.1 and zarr 2.18.3 + numcodecs 0.15.2, see docs/data.md), as `ReplayBuffer.copy_from_path` reads it:
    data/<key>          (n_steps, ...) arrays; images (H, W, 3) uint8 chunked one frame per chunk
    meta/episode_ends   (n_episodes,) int64
Codecs are numcodecs' Blosc (lz4, byte shuffle for vectors; zstd for frames), which every zarr 2 install reads.
Our attributes (env id, fps, source, ...) go in the root .zattrs, where DP ignores them.
Written to a temporary sibling, then renamed: an interrupted export leaves nothing at `out`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numcodecs
import numpy as np
import tyro
import zarr
from zarr.storage import LocalStore

from data.store import EpisodeStore, StoreError

LOWDIM_CHUNK_STEPS = 10_000


@dataclass(frozen=True)
class ExportDPConfig:
    src: tyro.conf.Positional[Path]
    """Episode store to export."""
    out: tyro.conf.Positional[Path]
    """diffusion_policy zarr store to write (must not exist unless --overwrite)."""
    overwrite: bool = False
    """Replace an existing directory at `out`."""


def export_dp(cfg: ExportDPConfig) -> Path:
    store = EpisodeStore.open(cfg.src)
    store.check()
    if os.path.lexists(cfg.out) and not cfg.overwrite:
        raise StoreError(f"{cfg.out}: already exists; pass --overwrite to replace it")
    tmp = cfg.out.with_name(f"{cfg.out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        root = zarr.open_group(LocalStore(tmp), mode="w-", zarr_format=2)
        root.attrs.put(store.attrs)
        data = root.create_group("data")
        ends = store.episode_ends
        for key, spec in store.key_specs().items():
            image = len(spec.shape) >= 2
            chunk_steps = 1 if image else LOWDIM_CHUNK_STEPS
            compressor = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.NOSHUFFLE) if image else numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
            out = data.create_array(key, shape=(store.n_steps, *spec.shape), chunks=(chunk_steps, *spec.shape), dtype=spec.dtype, compressors=compressor)
            start = 0
            for end in ends.tolist():  # one episode in RAM at a time
                out[start:end] = store.read(key, start, end)
                start = end
        meta = root.create_group("meta").create_array("episode_ends", shape=ends.shape, chunks=(max(len(ends), 1),), dtype="int64", compressors=None)
        meta[:] = ends
        if os.path.lexists(cfg.out):
            shutil.rmtree(cfg.out)
        os.rename(tmp, cfg.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cfg.out


def read_dp_v2(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read a DP store back through zarr's format-2 path (no format auto-detection): data arrays and episode ends."""
    root = zarr.open_group(LocalStore(path, read_only=True), mode="r", zarr_format=2)
    return {k: np.asarray(a[:]) for k, a in root["data"].arrays()}, np.asarray(root["meta/episode_ends"][:])


def main() -> None:
    cfg = tyro.cli(ExportDPConfig)
    try:
        out = export_dp(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {out} (zarr format 2, diffusion_policy ReplayBuffer layout)")


if __name__ == "__main__":
    main()
