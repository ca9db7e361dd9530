"""One rank of the DDP gradient-equivalence test (tests/test_distributed.py), launched by torchrun.

    torchrun --standalone --nproc_per_node 2 tests/ddp_grad_worker.py <demos.zarr> <out.safetensors> <per_rank_batch>

Every rank builds the same tiny Diffusion Policy, draws the same global batch (windows, diffusion noise and
timesteps) and trains on its slice under DistributedDataParallel; rank 0 writes the averaged gradients.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from core.distributed import init_distributed, shutdown_distributed  # noqa: E402
from ddp_reference import global_batch, tiny_policy  # noqa: E402


def main() -> None:
    store, out, per_rank = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    dist_info, device = init_distributed("cpu")
    policy = tiny_policy(store)
    model = torch.nn.parallel.DistributedDataParallel(policy)
    batch = global_batch(store, policy, per_rank * dist_info.world_size)
    ids = dist_info.rank_slice(np.arange(per_rank * dist_info.world_size))
    loss, _ = model({k: v[ids] for k, v in batch.items()})
    loss.backward()
    if dist_info.is_main:
        save_file({name: p.grad.contiguous() for name, p in policy.named_parameters() if p.grad is not None}, str(out))
    shutdown_distributed(dist_info)


if __name__ == "__main__":
    main()
