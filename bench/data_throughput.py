"""Sampler throughput: windows/s at batch 256 from an in-RAM copy of a zarr store, vs one training step.

    python -m bench.data_throughput --out bench/results/data_throughput.json

Protocol: collect (or reuse) scripted push-v3 demos, load the store into RAM, sample random anchors with
the default Diffusion Policy windows (state offsets [-1, 0], action offsets [-1..14]) and convert to torch
tensors, as train.py does. "Never waits on data" means data time is a small fraction of a training step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from bench.common import print_table, write_results
from data.collect import CollectConfig, collect
from data.sampler import WindowSampler
from data.store import EpisodeStore
from policies.base import window_offsets
from policies.diffusion.config import DiffusionConfig


@dataclass(frozen=True)
class Args:
    dataset: Path = Path("demos/push50.zarr")
    """Store to read (collected with 50 push-v3 demos if missing)."""
    batch_size: int = 256
    batches: int = 2000
    threads: int = 2
    out: Path | None = None


def main() -> None:
    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    if not args.dataset.exists():
        collect(CollectConfig(env="metaworld/push-v3", episodes=50, out=args.dataset))
    store = EpisodeStore.open(args.dataset)
    t0 = time.perf_counter()
    arrays = store.load(["state", "action"])
    load_s = time.perf_counter() - t0
    sampler = WindowSampler(arrays, store.episode_ends, window_offsets(DiffusionConfig()))
    rng = np.random.default_rng(0)
    for _ in range(20):
        sampler.sample(rng.integers(0, len(sampler), args.batch_size))
    t0 = time.perf_counter()
    n_windows = 0
    for _ in range(args.batches):
        batch = {k: torch.from_numpy(v) for k, v in sampler.sample(rng.integers(0, len(sampler), args.batch_size)).items()}
        n_windows += len(batch["action"])
    elapsed = time.perf_counter() - t0
    per_batch = elapsed / args.batches
    windows_per_s = n_windows / elapsed
    rows = [
        {"metric": "windows_per_s", "value": windows_per_s, "unit": "windows/s", "batch_size": args.batch_size, "n": args.batches},
        {"metric": "batch_ms", "value": per_batch * 1e3, "unit": "ms", "batch_size": args.batch_size, "n": args.batches},
        {"metric": "store_load_s", "value": load_s, "unit": "s", "n_steps": store.n_steps},
    ]
    print_table(rows, ["metric", "value", "unit", "batch_size", "n"])
    write_results(
        args.out, "data_throughput",
        f"random windows (state [-1,0], action [-1..14]) at batch {args.batch_size} from RAM, numpy gather + torch.from_numpy; "
        f"{store.n_episodes} push-v3 episodes, {store.n_steps} steps",
        [{"policy": "diffusion", "task": "metaworld/push-v3", **r} for r in rows],
    )


if __name__ == "__main__":
    main()
