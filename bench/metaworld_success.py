"""Success rates on Meta-World tasks across the difficulty splits, with the DP3 paper's protocol.

    python -m bench.metaworld_success --out bench/results/metaworld_success.json
    python -m bench.metaworld_success --policies vqbet --tasks drawer-open-v3 pick-place-v3 --vqbet-steps 1500 --out ...

Protocol (DP3, Ze et al. 2024): 10 scripted demos per task, goal-observable Meta-World, state observations
here (DP3's figures are for point clouds / images), each policy with its train.py preset (`default` for
Diffusion Policy, `vqbet` for VQ-BeT) and the same demos, for the preset's steps unless overridden. We report
the FINAL checkpoint's success over 50 seeded episodes (seeds 100000..100049), success = info["success"] at any
step of a 500-step episode, with Wilson 95% CIs, the split means and each run's `train_cpu_minutes` (training
user + sys CPU of this process / 60; the budget is 15 per task). Runs live in bench_runs/<task>-<policy>-.../
and finished ones are reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from policies.training import PRESETS, with_env_state_keys
from bench.common import evaluate_checkpoint, print_table, train_measured, write_results
from core.io import config_to_dict

# Difficulty splits of Seo et al. (2022), as used by DP3.
SPLITS: dict[str, list[str]] = {
    "easy": ["button-press-topdown-v3", "drawer-open-v3", "door-open-v3", "window-close-v3", "reach-v3", "plate-slide-v3"],
    "medium": ["basketball-v3", "sweep-into-v3", "bin-picking-v3", "box-close-v3", "coffee-push-v3", "hammer-v3"],
    "hard": ["pick-place-v3", "assembly-v3", "push-v3", "pick-out-of-hole-v3", "push-back-v3"],
    "very_hard": ["shelf-place-v3", "stick-pull-v3", "disassemble-v3", "stick-push-v3", "pick-place-wall-v3"],
}
DEFAULT_TASKS = ("button-press-topdown-v3", "drawer-open-v3", "basketball-v3", "sweep-into-v3", "pick-place-v3", "assembly-v3", "shelf-place-v3", "stick-pull-v3")
# Published split means (success %), DP3 paper Table: image Diffusion Policy and DP3.
PUBLISHED = {"diffusion_policy_image": {"easy": 83.6, "medium": 31.1, "hard": 9.0, "very_hard": 26.6}, "dp3": {"easy": 90.9, "medium": 61.6, "hard": 31.7, "very_hard": 49.0}}


PRESET_FOR_POLICY = {"diffusion": "default", "vqbet": "vqbet"}


@dataclass(frozen=True)
class Args:
    policies: tuple[str, ...] = ("diffusion", "vqbet")
    """Policies to compare, each trained with its train.py preset."""
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n_demos: int = 10
    diffusion_steps: int | None = None
    """Training steps for Diffusion Policy (default: the `default` preset's)."""
    vqbet_steps: int | None = None
    """Training steps for VQ-BeT (default: the `vqbet` preset's)."""
    episodes: int = 50
    seed: int = 0
    runs: Path = Path("bench_runs")
    out: Path | None = None


def split_of(task: str) -> str:
    for split, tasks in SPLITS.items():
        if task in tasks:
            return split
    raise ValueError(f"{task} is not in any split of bench.metaworld_success.SPLITS")


def run_task(args: Args, policy: str, task: str) -> dict:
    """Collect demos once per task (shared by the policies), train, evaluate; reuse finished runs."""
    demos = args.runs / "demos" / f"{task}-{args.n_demos}demos.zarr"
    if not demos.exists():
        from data.collect import CollectConfig, collect

        collect(CollectConfig(env=f"metaworld/{task}", episodes=args.n_demos, out=demos))
    base = with_env_state_keys(dataclasses.replace(PRESETS[PRESET_FOR_POLICY[policy]][1], env=f"metaworld/{task}"))
    steps = (args.diffusion_steps if policy == "diffusion" else args.vqbet_steps) or base.steps
    # the preset's hash in the name: a run of an older preset is never reused for a newer one
    recipe = hashlib.sha256(json.dumps([config_to_dict(base.policy), base.batch_size, base.lr], sort_keys=True).encode()).hexdigest()[:8]
    run_dir = args.runs / f"{task}-{policy}-{args.n_demos}demos-{steps}steps-seed{args.seed}-{recipe}"
    cfg = dataclasses.replace(base, env=f"metaworld/{task}", dataset=(demos,), steps=steps, eval_episodes=0, seed=args.seed, run_dir=run_dir)
    cpu_min = train_measured(cfg)
    ev = evaluate_checkpoint(run_dir, f"metaworld/{task}", args.episodes)
    return {
        "policy": policy, "task": task, "split": split_of(task), "success_rate": ev["success_rate"], "ci95": [round(c, 3) for c in ev["ci95"]],
        "n": ev["n_episodes"], "train_steps": steps, "train_cpu_minutes": round(cpu_min, 2), "run_dir": str(run_dir),
    }


def main() -> None:
    args = tyro.cli(Args)
    rows = [run_task(args, policy, task) for task in args.tasks for policy in args.policies]
    print_table(rows, ["task", "split", "policy", "success_rate", "ci95", "n", "train_steps", "train_cpu_minutes"])
    split_means = {
        policy: {s: 100 * float(np.mean([r["success_rate"] for r in rows if r["split"] == s and r["policy"] == policy])) for s in SPLITS if any(r["split"] == s for r in rows)}
        for policy in args.policies
    }
    print("\nsplit means (%):")
    for policy, means in split_means.items():
        print(f"  {policy:>10}: " + ", ".join(f"{k} {v:.1f}" for k, v in means.items()))
    for name, means in PUBLISHED.items():
        print(f"  {name:>10}: " + ", ".join(f"{k} {v:.1f}" for k, v in means.items()) + "  (published, DP3 paper)")
    results = [
        {"policy": r["policy"], "task": f"metaworld/{r['task']}", "n_demos": args.n_demos, "metric": "success_rate", "value": r["success_rate"], "ci95": r["ci95"], "n": r["n"], "split": r["split"], "train_steps": r["train_steps"], "train_cpu_minutes": r["train_cpu_minutes"], "run_dir": r["run_dir"]}
        for r in rows
    ]
    write_results(
        args.out, "metaworld_success",
        f"{args.n_demos} scripted demos/task (seeds 0+), state policies with their train.py presets (steps per row), final checkpoint (EMA), "
        f"{args.episodes} episodes seeds 100000+, success = info['success'] at any step within 500 steps",
        results, split_means_pct=split_means, published_split_means_pct=PUBLISHED,
    )


if __name__ == "__main__":
    main()
