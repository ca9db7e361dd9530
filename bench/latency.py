"""Chunk latency of `predict_action_chunk` at batch 1 (normalization + full sampling loop), CPU threads fixed.

    python -m bench.latency --out bench/results/latency.json
    python -m bench.latency --variants mlp-flow-euler3 unet-ddpm-ddim10 --threads 1 --n 300

Protocol: randomly initialised policies (latency does not depend on the weights; a VQ-BeT is marked past
its tokenizer phase) with the Meta-World sizes (39-D state, 4-D action) and each policy's default chunking;
image variants add one 84x84 camera and a 9-D proprio (robosuite Lift's sizes). Each diffusion variant runs
eager and compiled (policies/diffusion/compile.py) in the same process, interleaved in blocks of 10 calls,
after 20 warm-up calls each; p50 and p99 over `n` timed calls per mode. `--success-from` joins each row
with the success its recipe reached in a bench.recipe_sweep JSON, so speed is never read without success.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import tyro

from bench.common import print_table, require_known, write_results
from data.normalize import Normalizer
from policies import DiffusionConfig, Policy, VQBeTConfig, make_policy
from policies.diffusion.compile import compile_sampling, uncompiled

STATE = DiffusionConfig(state_dims=(39,), action_dim=4)
IMAGE = DiffusionConfig(state_keys=("proprio",), state_dims=(9,), action_dim=7, image_keys=("image_agentview",), image_shape=(84, 84, 3))
FLOW = dict(objective="flow", inference_scheduler="euler")
# name -> (config, recipe and sampler in bench.recipe_sweep terms, for --success-from)
VARIANTS: dict[str, tuple[DiffusionConfig, str, str]] = {
    "unet-ddpm-ddim10": (STATE, "unet-ddpm", "ddim-10"),
    "unet-ddpm-dpm_solver3": (replace(STATE, inference_scheduler="dpm_solver", num_inference_steps=3), "unet-ddpm", "dpm_solver-3"),
    "mlp-ddpm-ddim10": (replace(STATE, backbone="mlp"), "mlp-ddpm", "ddim-10"),
    "mlp-ddpm-dpm_solver3": (replace(STATE, backbone="mlp", inference_scheduler="dpm_solver", num_inference_steps=3), "mlp-ddpm", "dpm_solver-3"),
    "mlp-ddpm-ddim3": (replace(STATE, backbone="mlp", num_inference_steps=3), "mlp-ddpm", "ddim-3"),
    "mlp-flow-euler1": (replace(STATE, backbone="mlp", **FLOW, num_inference_steps=1), "mlp-flow", "euler-1"),
    "mlp-flow-euler3": (replace(STATE, backbone="mlp", **FLOW, num_inference_steps=3), "mlp-flow", "euler-3"),
    "mlp-flow-euler10": (replace(STATE, backbone="mlp", **FLOW, num_inference_steps=10), "mlp-flow", "euler-10"),
    # the default preset's inputs on Meta-World: state plus the 12-D relative vectors
    "mlp-flow-euler3-relative": (replace(STATE, state_keys=("state", "relative"), state_dims=(39, 12), backbone="mlp", **FLOW, num_inference_steps=3), "mlp-flow-relative", "euler-3"),
    "unet-flow-euler3-relative": (replace(STATE, state_keys=("state", "relative"), state_dims=(39, 12), **FLOW, num_inference_steps=3), "unet-flow-relative", "euler-3"),
    "transformer-flow-euler3-relative": (replace(STATE, state_keys=("state", "relative"), state_dims=(39, 12), backbone="transformer", **FLOW, num_inference_steps=3), "transformer-flow-relative", "euler-3"),
    "transformer128x4-flow-euler3-relative": (
        replace(STATE, state_keys=("state", "relative"), state_dims=(39, 12), backbone="transformer", transformer_dim=128, transformer_layers=4, **FLOW, num_inference_steps=3),
        "transformer128x4-flow-relative", "euler-3",
    ),
    "mlp1024-flow-euler3": (replace(STATE, backbone="mlp", mlp_hidden_dim=1024, mlp_blocks=4, **FLOW, num_inference_steps=3), "mlp1024-flow", "euler-3"),
    "transformer-flow-euler3": (replace(STATE, backbone="transformer", **FLOW, num_inference_steps=3), "transformer-flow", "euler-3"),
    "image-unet-ddpm-ddim10": (IMAGE, "", ""),
    "image-mlp-flow-euler3": (replace(IMAGE, backbone="mlp", **FLOW, num_inference_steps=3), "", ""),
    "image-conv-mlp-flow-euler3": (replace(IMAGE, vision_encoder="conv", backbone="mlp", **FLOW, num_inference_steps=3), "", ""),
}


@dataclass(frozen=True)
class Args:
    variants: tuple[str, ...] = tuple(VARIANTS)
    """Diffusion variants from bench.latency.VARIANTS."""
    vqbet: bool = True
    """Also time VQ-BeT at its default size."""
    threads: int = 2
    n: int = 200
    success_from: Path | None = None
    """A bench.recipe_sweep JSON: adds each recipe's mean success to its rows."""
    out: Path | None = None


def build(config) -> Policy:
    rng = np.random.default_rng(0)
    data = {k: rng.normal(size=(64, d)).astype(np.float32) for k, d in zip(config.state_keys, config.state_dims)}
    data[config.action_key] = rng.uniform(-1, 1, size=(64, config.action_dim)).astype(np.float32)
    torch.manual_seed(0)
    policy = make_policy(config, Normalizer.fit(data, config.normalization_modes())).eval()
    policy.finish_training_phases()  # random weights, timed as a trained policy
    return policy


def observation(config) -> dict[str, torch.Tensor]:
    obs = {k: torch.randn(1, config.n_obs_steps, d) for k, d in zip(config.state_keys, config.state_dims)}
    obs |= {k: torch.randint(0, 256, (1, config.n_obs_steps, *config.image_shape), dtype=torch.uint8) for k in config.image_keys}
    return obs


def time_modes(policy: Policy, modes: list[str], n: int) -> dict[str, np.ndarray]:
    """Milliseconds per chunk for each mode ('eager' / 'compiled'), interleaved in blocks of 10 calls."""
    obs = observation(policy.config)
    times: dict[str, list[float]] = {m: [] for m in modes}
    compiled_state = None
    with torch.inference_mode():
        for mode in modes:
            if mode == "compiled":
                compile_sampling(policy)
                compiled_state = policy.compiled_sampling
            for _ in range(20):
                policy.predict_action_chunk(obs)
        for block in range(n // 10):
            for mode in modes:
                policy.compiled_sampling = compiled_state if mode == "compiled" else None
                for _ in range(10):
                    t0 = time.perf_counter()
                    policy.predict_action_chunk(obs)
                    times[mode].append(time.perf_counter() - t0)
    uncompiled(policy)
    return {m: np.array(t) * 1e3 for m, t in times.items()}


def sweep_success(path: Path | None) -> dict[tuple[str, str], float]:
    if path is None:
        return {}
    means = json.loads(path.read_text()).get("means", {})
    return {tuple(name.split(" ", 1)): m["mean_success"] for name, m in means.items()}


def main() -> None:
    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    require_known(args.variants, VARIANTS, "variants")
    success = sweep_success(args.success_from)
    rows, results = [], []
    todo = [(name, *VARIANTS[name]) for name in args.variants]
    if args.vqbet:
        todo.append(("vqbet", VQBeTConfig(state_dims=(39,), action_dim=4), "", ""))
    for name, config, recipe, sampler in todo:
        policy = build(config)
        modes = ["eager"] if name == "vqbet" else ["eager", "compiled"]
        ms = time_modes(policy, modes, args.n)
        params = sum(p.numel() for p in policy.parameters())
        for mode, t in ms.items():
            row = {
                "variant": name, "mode": mode, "params_M": params / 1e6, "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
                "success_mean": success.get((recipe, sampler)),
            }
            rows.append(row)
            print_table([row], list(row))
            for metric, key in (("chunk_latency_ms_p50", "p50_ms"), ("chunk_latency_ms_p99", "p99_ms")):
                results.append({
                    "policy": "vqbet" if name == "vqbet" else "diffusion", "variant": name, "mode": mode, "params": params, "metric": metric,
                    "value": row[key], "unit": "ms", "n": len(t), "batch_size": 1, "recipe": recipe, "sampler": sampler, "success_mean": row["success_mean"],
                })
    print()
    print_table(rows, list(rows[0]))
    write_results(
        args.out, "latency",
        f"predict_action_chunk at batch 1, {args.threads} torch threads, {args.n} calls per mode after 20 warm-up, eager and compiled interleaved in blocks of 10, "
        "random weights; state: 39-D state, 4-D action; image: 84x84 camera + 9-D proprio, 7-D action; horizon 16",
        results,
    )


if __name__ == "__main__":
    main()
