"""Streaming image windows from a zarr store: frames are read on demand, batches are built in worker processes.

Low-dim keys are small and live in RAM (`EpisodeStore.load`). Image keys can be many GB, so the sampler gets
a `data.frames.LazyFrames` view instead: indexing it reads only the frames a batch needs.
`step_batch_loader` builds batch `s` from a generator seeded by (seed, s), so any number of workers, any
prefetch depth and a resumed run all see the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from core.distributed import DistInfo
from data.sampler import WindowSampler
from data.stream import StreamingWindows


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
