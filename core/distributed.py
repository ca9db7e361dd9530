"""Data-parallel training under `torchrun`: process group, device, per-rank batch slices, rank-0-only side effects.

    torchrun --nproc_per_node 2 train.py default --run-dir runs/ddp          # one machine, 2 processes
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint host0:29500 train.py ...        # multi-node (docs/scaling.md)

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op and `train.py` runs as a
single process. Backend: NCCL when training on CUDA, gloo on CPU.

Batches: every rank draws the same *global* window ids (batch_size * world_size of them) from the shared,
checkpointed numpy stream and gathers only its own contiguous slice. So ranks see disjoint windows at every
step, and W ranks at batch B draw exactly the windows that one process draws at batch W * B.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def rank_slice(self, global_ids: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of a global batch (len(global_ids) must divide evenly)."""
        per_rank, rest = divmod(len(global_ids), self.world_size)
        if rest:
            raise ValueError(f"global batch of {len(global_ids)} does not split over {self.world_size} ranks")
        return global_ids[self.rank * per_rank : (self.rank + 1) * per_rank]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a scalar over ranks (for logging the global loss)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def gather_to_main(self, tensor: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """Every rank's copy of a same-shaped tensor, in rank order (for per-rank RNG states)."""
        if not self.enabled:
            return [tensor]
        local = tensor.to(device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [p.cpu() for p in parts]


def init_distributed(device: str) -> tuple[DistInfo, str]:
    """Join torchrun's process group when launched by it; returns the rank info and this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        if torch.cuda.device_count() <= local_rank:
            raise SystemExit(f"error: rank {rank} needs cuda:{local_rank} but this node has {torch.cuda.device_count()} GPUs")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():  # periodic evaluation runs on rank 0 while the others wait: allow it hours
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=3))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank), device


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_torch_seed(seed: int, rank: int) -> int:
    """Torch seed for a rank's diffusion noise: independent streams per rank, rank 0 of a 1-process run = seed."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
