"""RL finetuning of a weak behaviour-cloned base: success rate versus env steps, several seeds, CI bands.

    python -m bench.rl_finetune --out bench/results/rl_finetune.json          # DSRL-NA, 3 seeds, 100k env steps
    python -m bench.rl_finetune --methods dsrl-na dsrl-sac --seeds 0 --total-env-steps 50000 --out /tmp/rl.json
    python -m bench.rl_finetune --methods residual-offpolicy residual-ppo --out bench/results/rl_residual.json
    python -m bench.rl_finetune --methods residual-offpolicy --base-policy vqbet --seeds 0 --out bench/results/rl_residual_vqbet.json

Protocol:
- Base: a state Diffusion Policy trained on 10 scripted demos for 600 steps with the `default` preset
  (the bench.metaworld_success recipe; built here when missing). The README's runs pass `--base` with the
  54% base built before the preset read Meta-World's relative vectors; check that a new default base is
  still weak (10-60%) on the task before using it.
- Each method runs `train.py <method args> --base <base>` with its defaults: episode limit from the base's
  demos (1.25 x the longest, at least 100; rl/common.py `episode_limit`), sparse success reward, terminate on
  success; evaluation of the finetuned policy every `eval_every` env steps on 50 seeded episodes (seeds
  100000..100049, disjoint from the training seeds), under the same limit, success =
  Meta-World info["success"] at any step. The first point of each curve is the unsteered base.
- Curves: mean over seeds; the band is the Wilson 95% interval of the episodes pooled over seeds at that
  point (the base's point is the same 50 episodes in every run and counts once). Lift = final success -
  base success, in points, per seed and averaged.
- Finished runs in --runs are reused; interrupted ones resume from their last checkpoint.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from bench.common import print_table, require_known, write_results
from core.io import atomic_write_bytes
from envs.rollout import wilson_interval

# Method name -> (train.py arguments before the shared ones, default env-step budget from its issue).
METHODS: dict[str, tuple[list[str], int]] = {
    "dsrl-na": (["dsrl", "--algo", "na"], 100_000),  # exact Q^A bootstrap (the default since it measured +42)
    "dsrl-na-distilled": (["dsrl", "--algo", "na", "--exact-bootstrap", "False"], 100_000),  # the DSRL paper's Q^W bootstrap
    "dsrl-sac": (["dsrl", "--algo", "sac"], 100_000),
    "residual-offpolicy": (["residual", "--algo", "offpolicy"], 200_000),
    "residual-ppo": (["residual", "--algo", "ppo"], 200_000),
}


@dataclass(frozen=True)
class Args:
    task: str = "sweep-into-v3"
    """Meta-World task."""
    methods: tuple[str, ...] = ("dsrl-na",)
    """Methods to run, from METHODS."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """RL seeds (the base is the same for all)."""
    total_env_steps: int | None = None
    """Env-step budget per run (default: the method's, 100k for DSRL and 200k for residual RL)."""
    base_policy: str = "diffusion"
    """Type of the default base: diffusion or vqbet (DSRL needs diffusion)."""
    base: Path | None = None
    """Base checkpoint or run dir (default: bench_runs/<task>-<base_policy>-10demos-600steps-seed0, trained when missing)."""
    runs: Path = Path("bench_runs/rl")
    """Where the RL run dirs go."""
    num_threads: int | None = None
    """torch threads per RL run (e.g. 1 when several bench processes share the cores)."""
    extra: str = ""
    """Extra train.py arguments for every run, as one shell-quoted string: --extra='--residual-scale 0.3 --utd 2'."""
    out: Path | None = None
    """JSON output; the plot goes next to it as .png."""


def ensure_base(args: Args) -> Path:
    if args.base is not None:
        return args.base
    from bench.metaworld_success import Args as SuccessArgs
    from bench.metaworld_success import run_task

    recipe = {"diffusion": "privileged", "vqbet": "vqbet"}[args.base_policy]
    row = run_task(SuccessArgs(n_demos=10, steps=600, episodes=50, max_episode_steps=500), recipe, args.task)
    return Path(row["run_dir"])


def run_one(args: Args, base: Path, method: str, seed: int) -> Path:
    suffix = "" if args.base_policy == "diffusion" else f"-{args.base_policy}base"
    run_dir = args.runs / f"{method}-{args.task}{suffix}-seed{seed}"
    method_args, default_budget = METHODS[method]
    budget = args.total_env_steps or default_budget
    if finished(run_dir, budget):
        return run_dir
    cmd = [sys.executable, "train.py", *method_args, "--base", str(base), "--env", f"metaworld/{args.task}", "--seed", str(seed),
           "--total-env-steps", str(budget), "--run-dir", str(run_dir), *shlex.split(args.extra)]
    if args.num_threads:
        cmd += ["--num-threads", str(args.num_threads)]
    if (run_dir / "train_config.json").exists():
        cmd.append("--resume")
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run_dir


def eval_log(run_dir: Path) -> list[dict]:
    path = run_dir / "eval_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def finished(run_dir: Path, total: int) -> bool:
    return any(r["env_steps"] >= total and r["policy"] != "base" for r in eval_log(run_dir))


def final_state(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "last" / "train_state" / "state.json").read_text())


def summarize(method: str, runs: dict[int, Path]) -> tuple[list[dict], dict, dict]:
    """Per-seed rows, the aggregated row, and the curve (mean and pooled CI per eval point)."""
    rows, curves = [], []
    for seed, run_dir in runs.items():
        log = eval_log(run_dir)
        state = final_state(run_dir)
        base, final = log[0]["success_rate"], log[-1]["success_rate"]
        rows.append({
            "method": method, "seed": seed, "base_success": base, "final_success": final, "lift_points": round(100 * (final - base), 1),
            "best_success": max(r["success_rate"] for r in log[1:]), "env_steps": state["env_steps"], "max_episode_steps": log[-1]["max_episode_steps"],
            "wall_min": round(state["wall_s"] / 60, 1), "eval_wall_min": round(state["eval_wall_s"] / 60, 1), "run_dir": str(run_dir),
        })
        curves.append(log)
    n_points = min(len(c) for c in curves)
    curve = {"env_steps": [], "mean": [], "ci95_low": [], "ci95_high": [], "per_seed": [[r["success_rate"] for r in c[:n_points]] for c in curves]}
    for i in range(n_points):
        points = [c[i] for c in curves]
        if all(p["policy"] == "base" for p in points):  # the base's evaluation is identical in every run: count it once
            points = points[:1]
        successes = sum(round(p["success_rate"] * p["n_episodes"]) for p in points)
        episodes = sum(p["n_episodes"] for p in points)
        lo, hi = wilson_interval(successes, episodes)
        curve["env_steps"].append(float(np.mean([p["env_steps"] for p in points])))
        curve["mean"].append(successes / episodes)
        curve["ci95_low"].append(lo)
        curve["ci95_high"].append(hi)
    lifts = [r["lift_points"] for r in rows]
    aggregate = {
        "method": method, "seeds": len(rows), "base_success": curve["mean"][0], "final_success": curve["mean"][-1],
        "final_ci95": [curve["ci95_low"][-1], curve["ci95_high"][-1]], "mean_lift_points": round(float(np.mean(lifts)), 1),
        "min_lift_points": min(lifts), "env_steps": int(np.mean([r["env_steps"] for r in rows])),
        "wall_min": round(float(np.mean([r["wall_min"] for r in rows])), 1), "target_lift_points": 30, "target_met": bool(np.mean(lifts) >= 30),
    }
    return rows, aggregate, curve


def plot(curves: dict[str, dict], task: str, base_success: float, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: the plot needs matplotlib: pip install -e '.[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, curve in curves.items():
        x = np.array(curve["env_steps"]) / 1000
        (line,) = ax.plot(x, 100 * np.array(curve["mean"]), marker="o", label=f"{method} (mean of {len(curve['per_seed'])} seeds)")
        ax.fill_between(x, 100 * np.array(curve["ci95_low"]), 100 * np.array(curve["ci95_high"]), color=line.get_color(), alpha=0.2)
        for seed_curve in curve["per_seed"]:
            ax.plot(x, 100 * np.array(seed_curve), color=line.get_color(), alpha=0.3, linewidth=0.8)
    ax.axhline(100 * (base_success + 0.3), color="gray", linestyle="--", linewidth=1, label="target: base + 30 points")
    ax.set_xlabel("env steps (thousands)")
    ax.set_ylabel("success rate (%), 50 seeded episodes")
    ax.set_ylim(0, 100)
    ax.set_title(f"RL finetuning on metaworld/{task} (band: pooled Wilson 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    print(f"wrote {path}")


def main() -> None:
    args = tyro.cli(Args)
    require_known(args.methods, METHODS, "methods")
    base = ensure_base(args)
    all_rows, aggregates, curves = [], [], {}
    for method in args.methods:
        label = method if args.base_policy == "diffusion" else f"{method} ({args.base_policy} base)"
        runs = {seed: run_one(args, base, method, seed) for seed in args.seeds}
        rows, aggregate, curves[label] = summarize(label, runs)
        all_rows += rows
        aggregates.append(aggregate)
    print_table(all_rows, ["method", "seed", "base_success", "final_success", "lift_points", "best_success", "env_steps", "wall_min"])
    print()
    print_table(aggregates, ["method", "seeds", "base_success", "final_success", "final_ci95", "mean_lift_points", "env_steps", "wall_min", "target_met"])
    if args.out is not None:
        plot(curves, args.task, aggregates[0]["base_success"], args.out.with_suffix(".png"))
    write_results(
        args.out, "rl_finetune",
        f"metaworld/{args.task}; base {base}; env steps run {({a['method']: a['env_steps'] for a in aggregates})}; eval: 50 episodes "
        f"(seeds 100000+), {'/'.join(str(n) for n in sorted({r['max_episode_steps'] for r in all_rows}))}-step limit, success = Meta-World info['success'] at any step; band = pooled Wilson 95% CI over seeds",
        all_rows, aggregates=aggregates, curves=curves, extra_args=shlex.split(args.extra),
    )


if __name__ == "__main__":
    main()
