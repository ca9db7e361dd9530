"""Chunk latency of `predict_action_chunk` at batch 1 (normalization + full denoising loop), CPU threads fixed.

    python -m bench.latency --out bench/results/latency.json

Protocol: randomly initialised policies (latency does not depend on the weights) with the default
state/action sizes of Meta-World (39-D state, 4-D action), n_obs_steps=2, horizon=16; 20 warm-up calls,
then `n` timed calls; p50 and p99 reported per UNet width and scheduler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import tyro

from bench.common import print_table, write_results
from data.normalize import Normalizer
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.policy import DiffusionPolicy


@dataclass(frozen=True)
class Args:
    widths: tuple[tuple[int, ...], ...] = ((32, 64, 128), (64, 128, 256), (128, 256, 512), (256, 512, 1024))
    """UNet down_dims to measure."""
    schedulers: tuple[str, ...] = ("ddim10",)
    """ddimN or ddpmN entries."""
    threads: int = 2
    n: int = 200
    out: Path | None = None


def make_policy(down_dims: tuple[int, ...], scheduler: str) -> DiffusionPolicy:
    kind, steps = scheduler[:4], int(scheduler[4:])
    cfg = replace(DiffusionConfig(state_dims=(39,), action_dim=4), down_dims=down_dims, inference_scheduler=kind, num_inference_steps=steps)
    rng = np.random.default_rng(0)
    data = {"state": rng.normal(size=(64, 39)).astype(np.float32), "action": rng.uniform(-1, 1, size=(64, 4)).astype(np.float32)}
    return DiffusionPolicy(cfg, Normalizer.fit(data, {"state": "min_max", "action": "min_max"})).eval()


def time_chunks(policy: DiffusionPolicy, n: int) -> np.ndarray:
    obs = {"state": torch.randn(1, policy.config.n_obs_steps, 39)}
    with torch.inference_mode():
        for _ in range(20):
            policy.predict_action_chunk(obs)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            policy.predict_action_chunk(obs)
            times.append(time.perf_counter() - t0)
    return np.array(times) * 1e3


def main() -> None:
    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    rows, results = [], []
    for dims in args.widths:
        for scheduler in args.schedulers:
            policy = make_policy(dims, scheduler)
            ms = time_chunks(policy, args.n)
            params = sum(p.numel() for p in policy.parameters())
            row = {"down_dims": list(dims), "scheduler": scheduler, "params_M": params / 1e6, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
            rows.append(row)
            print_table([row], list(row))
            for metric, key in (("chunk_latency_ms_p50", "p50_ms"), ("chunk_latency_ms_p99", "p99_ms")):
                results.append({"policy": "diffusion", "down_dims": list(dims), "scheduler": scheduler, "params": params, "metric": metric, "value": row[key], "unit": "ms", "n": args.n, "batch_size": 1})
    print()
    print_table(rows, ["down_dims", "scheduler", "params_M", "p50_ms", "p99_ms"])
    write_results(args.out, "latency", f"predict_action_chunk at batch 1, {args.threads} torch threads, {args.n} calls after 20 warm-up, random weights, 39-D state, 4-D action, horizon 16", results)


if __name__ == "__main__":
    main()
