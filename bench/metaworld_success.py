"""Success rates on Meta-World tasks across the difficulty splits, with the DP3 paper's protocol.

    python -m bench.metaworld_success --out bench/results/metaworld_success.json
    python -m bench.metaworld_success --tasks drawer-open-v3 pick-place-v3 --steps 1500 --out ...

Protocol (DP3, Ze et al. 2024): 10 scripted demos per task, goal-observable Meta-World, state observations
here (DP3's figures are for point clouds / images). We report the FINAL checkpoint's success over 50 seeded
episodes (seeds 100000..100049), success = info["success"] at any step of a 500-step episode, with Wilson
95% CIs, and the split means. Each task trains in bench_runs/<task>/; finished tasks are reused on rerun.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

import train
from bench.common import print_table, write_results

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


@dataclass(frozen=True)
class Args:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n_demos: int = 10
    steps: int = 2000
    episodes: int = 50
    seed: int = 0
    runs: Path = Path("bench_runs")
    out: Path | None = None


def split_of(task: str) -> str:
    for split, tasks in SPLITS.items():
        if task in tasks:
            return split
    raise ValueError(f"{task} is not in any split of bench.metaworld_success.SPLITS")


def main() -> None:
    args = tyro.cli(Args)
    base = train.PRESETS["default"][1]
    rows, results = [], []
    for task in args.tasks:
        run_dir = args.runs / f"{task}-diffusion-{args.n_demos}demos-seed{args.seed}"
        eval_path = run_dir / "eval.json"
        if not eval_path.exists():
            cfg = dataclasses.replace(
                base, env=f"metaworld/{task}", n_demos=args.n_demos, steps=args.steps, eval_episodes=args.episodes,
                seed=args.seed, run_dir=run_dir, resume=(run_dir / "train_config.json").exists(),
            )
            train.train(cfg)
        ev = json.loads(eval_path.read_text())
        row = {"task": task, "split": split_of(task), "success_rate": ev["success_rate"], "ci95": [round(c, 3) for c in ev["ci95"]], "n": ev["n_episodes"], "steps": args.steps}
        rows.append(row)
        results.append({"policy": "diffusion", "task": f"metaworld/{task}", "n_demos": args.n_demos, "metric": "success_rate", "value": ev["success_rate"], "ci95": ev["ci95"], "n": ev["n_episodes"], "split": row["split"], "train_steps": args.steps, "run_dir": str(run_dir)})
    print_table(rows, ["task", "split", "success_rate", "ci95", "n", "steps"])
    split_means = {s: float(np.mean([r["success_rate"] for r in rows if r["split"] == s])) * 100 for s in SPLITS if any(r["split"] == s for r in rows)}
    print("\nsplit means (%):", {k: round(v, 1) for k, v in split_means.items()})
    print("published (DP3 paper):", PUBLISHED)
    write_results(
        args.out, "metaworld_success",
        f"{args.n_demos} scripted demos/task, state Diffusion Policy (default preset), {args.steps} steps, final checkpoint (EMA), "
        f"{args.episodes} episodes seeds 100000+, success = info['success'] at any step within 500 steps",
        results, split_means_pct=split_means, published_split_means_pct=PUBLISHED,
    )


if __name__ == "__main__":
    main()
