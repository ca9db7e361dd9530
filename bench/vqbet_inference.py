"""VQ-BeT inference options on trained checkpoints: code-sampling temperature and chunk averaging.

    python -m bench.vqbet_inference --runs bench_runs/basketball-v3-vqbet-10demos-6000steps-seed0-3d2e4b41 ... \
        --out bench/results/vqbet_inference_6000.json

Each run's last checkpoint is evaluated as trained and with each variant (only inference-time config fields
change; the weights are the same), 50 seeded episodes each (seeds 100000+), in the run's train_config.json env.
Failed episodes are counted by the Meta-World stages they reached, to show where a variant changes the outcome.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from bench.common import print_table, require_known, write_results
from envs.rollout import evaluate
from policies import Policy

# Inference-only VQBeTConfig fields: changing them does not touch the weights.
VARIANTS: dict[str, dict] = {
    "as trained": {},
    "temperature 0": {"temperature": 0.0},
    "average overlapping chunks": {"average_overlapping_chunks": True},
}


@dataclass(frozen=True)
class Args:
    runs: tuple[Path, ...]
    """VQ-BeT run dirs (their checkpoints/last is evaluated)."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    """Names from VARIANTS."""
    episodes: int = 50
    num_threads: int = 2
    out: Path | None = None


def main(argv: list[str] | None = None) -> dict:
    args = tyro.cli(Args, args=argv)
    require_known(args.variants, VARIANTS, "variants")
    torch.set_num_threads(args.num_threads)
    rows = []
    for run in args.runs:
        env = json.loads((run / "train_config.json").read_text())["env"]
        policy = Policy.from_pretrained(run / "checkpoints" / "last")
        if policy.policy_type != "vqbet":
            raise SystemExit(f"error: {run} holds a {policy.policy_type} checkpoint; this bench varies VQ-BeT inference options")
        trained = policy.config
        for name in args.variants:
            policy.config = dataclasses.replace(trained, **VARIANTS[name])
            result = evaluate(policy, env, args.episodes, seed_start=100_000, n_envs=10, progress=False).to_dict()
            failures = Counter("+".join(e.get("stages_reached", [])) or "no stage" for e in result["episodes"] if not e["success"])
            rows.append({"run": str(run), "env": env, "variant": name, "success_rate": result["success_rate"], "ci95": [round(c, 3) for c in result["ci95"]], "n": result["n_episodes"], "failures_by_stage": dict(failures)})
            print(rows[-1], flush=True)
    print_table(rows, ["env", "variant", "success_rate", "ci95", "n"])
    return write_results(
        args.out, "vqbet_inference",
        f"VQ-BeT last checkpoints, inference-only config changes; {args.episodes} episodes seeds 100000+; success = the env's success at any step within its step limit",
        rows,
    )


if __name__ == "__main__":
    main()
