"""Streaming image windows from a zarr store: frames are read on demand, batches are built in worker processes.

Low-dim keys are small and live in RAM (`EpisodeStore.load`). Image keys can be many GB, so the sampler gets
a `LazyFrames` view instead: indexing it reads only the frames a batch needs (one zarr chunk per frame).
`step_batch_loader` builds batch `s` from a generator seeded by (seed, s), so any number of workers, any
prefetch depth and a resumed run all see the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import zarr

from core.distributed import DistInfo
from data.sampler import WindowSampler
from data.stream import StreamingWindows


class LazyFrames:
    """A zarr array (T, H, W, C) that reads frames only when indexed: `frames[index]` for any int array."""

    def __init__(self, array: zarr.Array, n_steps: int, where: str) -> None:
        self.array = array
        self.n_steps = n_steps
        self.where = where
        self.shape = (n_steps, *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return self.n_steps

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        unique, inverse = np.unique(index.reshape(-1), return_inverse=True)
        try:
            frames = self.array.get_orthogonal_selection((unique,))
        except Exception as exc:
            raise OSError(f"{self.where}: cannot read frames {unique[:4].tolist()}...: {exc}") from exc
        return frames[inverse].reshape(*index.shape, *frames.shape[1:])


class ConcatFrames:
    """Several stores' lazy frames as one: global step i lies in the part whose range holds it."""

    def __init__(self, parts: list[LazyFrames]) -> None:
        shapes = {(p.shape[1:], str(p.dtype)) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"frames differ in shape/dtype across stores: {[(p.where, p.shape[1:], str(p.dtype)) for p in parts]}")
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        flat = index.reshape(-1)
        part = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty((len(flat), *self.shape[1:]), self.dtype)
        for p in np.unique(part):
            mask = part == p
            out[mask] = self.parts[p][flat[mask] - self.starts[p]]
        return out.reshape(*index.shape, *self.shape[1:])


class StepBatches(torch.utils.data.Dataset):
    """Item `s` is the batch of optimizer step `s`, as torch tensors."""

    def __init__(self, sampler: WindowSampler | StreamingWindows, batch_size: int, seed: int, dist_info: DistInfo = DistInfo()) -> None:
        self.sampler, self.batch_size, self.seed, self.dist_info = sampler, batch_size, seed, dist_info

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        sampler = self.sampler.sampler_at(step)
        ids = self.dist_info.rank_slice(rng.integers(0, len(sampler), self.batch_size * self.dist_info.world_size))  # global batch, own slice
        return {k: torch.from_numpy(v) for k, v in sampler.sample(ids).items()}


def step_batch_loader(
    sampler: WindowSampler | StreamingWindows, batch_size: int, seed: int, start_step: int, stop_step: int, num_workers: int, pin_memory: bool,
    dist_info: DistInfo = DistInfo(),
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches for steps start_step..stop_step-1, built by `num_workers` spawned processes (0: in this one).

    Under torchrun (`dist_info`) each step's global batch is batch_size * world_size windows and each rank gets its slice."""
    from envs.make import spawn_without_main_module

    loader = torch.utils.data.DataLoader(
        StepBatches(sampler, batch_size, seed, dist_info),
        batch_size=None,
        sampler=range(start_step, stop_step),
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=num_workers > 0,
        multiprocessing_context="spawn" if num_workers else None,  # zarr's IO threads do not survive fork
        generator=torch.Generator().manual_seed(seed),  # worker seeds must not draw from (and shift) the global torch RNG
    )
    with spawn_without_main_module():
        iterator = iter(loader)
    return iterator
