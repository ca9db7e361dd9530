"""Chunk latency of `predict_action_chunk` at batch 1 (normalization + full denoising loop), CPU threads fixed.

    python -m bench.latency --out bench/results/latency.json

Protocol: randomly initialised policies (latency does not depend on the weights; a VQ-BeT is marked past
its tokenizer phase) with the Meta-World sizes (39-D state, 4-D action) and each policy's default chunking;
20 warm-up calls, then `n` timed calls; p50 and p99 per Diffusion Policy UNet width and scheduler, and
for VQ-BeT at its default size.
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
from policies import DiffusionConfig, Policy, VQBeTConfig, make_policy


@dataclass(frozen=True)
class Args:
    widths: tuple[int, ...] = (32, 64, 128, 256)
    """UNet base widths w to measure; down_dims = (w, 2w, 4w)."""
    schedulers: tuple[str, ...] = ("ddim10",)
    """ddimN or ddpmN entries."""
    vqbet: bool = True
    """Also time VQ-BeT at its default size."""
    threads: int = 2
    n: int = 200
    out: Path | None = None


def build(config) -> Policy:
    rng = np.random.default_rng(0)
    data = {"state": rng.normal(size=(64, 39)).astype(np.float32), "action": rng.uniform(-1, 1, size=(64, 4)).astype(np.float32)}
    policy = make_policy(config, Normalizer.fit(data, {"state": "min_max", "action": "min_max"})).eval()
    if hasattr(policy, "vq_steps_done"):
        policy.vq_steps_done.fill_(config.vq_train_steps)
    return policy


def diffusion_config(down_dims: tuple[int, ...], scheduler: str) -> DiffusionConfig:
    kind, steps = scheduler[:4], int(scheduler[4:])
    return replace(DiffusionConfig(state_dims=(39,), action_dim=4), down_dims=down_dims, inference_scheduler=kind, num_inference_steps=steps)


def time_chunks(policy: Policy, n: int) -> np.ndarray:
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
    variants = [("diffusion", f"down_dims={[w, 2 * w, 4 * w]} {s}", diffusion_config((w, 2 * w, 4 * w), s)) for w in args.widths for s in args.schedulers]
    if args.vqbet:
        variants.append(("vqbet", "default size", replace(VQBeTConfig(state_dims=(39,), action_dim=4))))
    rows, results = [], []
    for policy_type, variant, config in variants:
        policy = build(config)
        ms = time_chunks(policy, args.n)
        params = sum(p.numel() for p in policy.parameters())
        row = {"policy": policy_type, "variant": variant, "params_M": params / 1e6, "actions_per_chunk": config.n_action_steps, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
        rows.append(row)
        print_table([row], list(row))
        for metric, key in (("chunk_latency_ms_p50", "p50_ms"), ("chunk_latency_ms_p99", "p99_ms")):
            results.append({"policy": policy_type, "variant": variant, "params": params, "metric": metric, "value": row[key], "unit": "ms", "n": args.n, "batch_size": 1})
    print()
    print_table(rows, list(rows[0]))
    write_results(args.out, "latency", f"predict_action_chunk at batch 1, {args.threads} torch threads, {args.n} calls after 20 warm-up, random weights, 39-D state, 4-D action, horizon 16", results)


if __name__ == "__main__":
    main()
