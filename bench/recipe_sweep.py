"""Success against training CPU-minutes for Diffusion Policy recipes: backbone x objective x sampler x width.

    python -m bench.recipe_sweep --out bench/results/recipe_sweep.json
    python -m bench.recipe_sweep --recipes mlp-flow mlp-ddpm --tasks drawer-open-v3 pick-place-v3 --out ...

Protocol: the DP3 demo budget (10 scripted demos per task, seeds 0+), state observations, one training
run per (recipe, task) with evaluation switched off, then the final EMA checkpoint is evaluated with each
of the recipe's samplers over the same 50 seeded episodes (seeds 100000+; success = info["success"] at any
step of a 500-step episode). `train_cpu_minutes` is the training's user + sys CPU time (all threads of
this process) / 60, measured with getrusage around `policies.training.train` and summed over every attempt
when a run is interrupted and resumed; nothing else should run meanwhile. `eval_cpu_minutes` is the same for
the sampler's evaluation (its env worker processes included: simulation), `total_cpu_minutes` their sum.
Runs live in bench_runs/sweep/<recipe>/<task>-<hash of the training config>/ (a changed recipe trains afresh)
and finished ones (train, and each sampler's eval keyed by everything that defines it) are reused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from policies.training import PRESETS
from bench.common import cpu_minutes, evaluate_checkpoint, print_table, require_known, train_measured, with_run_dir, write_results
from bench.metaworld_success import SPLITS, split_of
from policies import DiffusionConfig

# name -> (policy overrides of the default preset's DiffusionConfig, train overrides, samplers evaluated as (name, steps))
RECIPES: dict[str, tuple[dict, dict, tuple[tuple[str, int], ...]]] = {
    "unet-ddpm": ({"backbone": "unet", "objective": "ddpm", "inference_scheduler": "ddim", "num_inference_steps": 10}, {"steps": 2000, "batch_size": 128}, (("ddim", 10), ("dpm_solver", 3))),
    "mlp-ddpm": ({"backbone": "mlp", "objective": "ddpm", "inference_scheduler": "ddim", "num_inference_steps": 10}, {"steps": 5000, "batch_size": 256}, (("ddim", 10), ("dpm_solver", 3), ("ddim", 3))),
    "mlp-flow": ({"backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3}, {"steps": 5000, "batch_size": 256}, (("euler", 3), ("euler", 1), ("euler", 10))),
    "mlp-flow-long": ({"backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3}, {"steps": 12000, "batch_size": 256}, (("euler", 3),)),
    "mlp1024-flow": ({"backbone": "mlp", "mlp_hidden_dim": 1024, "mlp_blocks": 4, "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3}, {"steps": 5000, "batch_size": 256}, (("euler", 3),)),
    "mlp-flow-relative": ({"backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3, "state_keys": ("state", "relative")}, {"steps": 5000, "batch_size": 256}, (("euler", 3),)),
    "transformer-flow": ({"backbone": "transformer", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3}, {"steps": 1500, "batch_size": 128}, (("euler", 3),)),
    # Backbones at the default's CPU budget (~5 training CPU-min per task), on the default's state + relative input:
    "unet-flow-relative": ({"backbone": "unet", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3, "state_keys": ("state", "relative")}, {"steps": 1300, "batch_size": 128}, (("euler", 3),)),
    "transformer-flow-relative": ({"backbone": "transformer", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3, "state_keys": ("state", "relative")}, {"steps": 300, "batch_size": 128}, (("euler", 3),)),
    "transformer128x4-flow-relative": ({"backbone": "transformer", "transformer_dim": 128, "transformer_layers": 4, "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3, "state_keys": ("state", "relative")}, {"steps": 1300, "batch_size": 128}, (("euler", 3),)),
}
DEFAULT_TASKS = ("drawer-open-v3", "basketball-v3", "sweep-into-v3", "pick-place-v3", "assembly-v3", "shelf-place-v3", "stick-pull-v3")


@dataclass(frozen=True)
class Args:
    recipes: tuple[str, ...] = ("mlp-flow", "mlp-ddpm")
    """Recipes from bench.recipe_sweep.RECIPES."""
    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Meta-World tasks (v3 names), spread over the difficulty splits."""
    n_demos: int = 10
    episodes: int = 50
    seed: int = 0
    threads: int = 2
    runs: Path = Path("bench_runs/sweep")
    out: Path | None = None


def train_recipe(args: Args, recipe: str, task: str, demos: Path) -> tuple[Path, float]:
    """Train once per training config (reused when done, resumed when interrupted); returns the run dir and the
    training CPU-minutes of every attempt."""
    policy_kw, train_kw, _ = RECIPES[recipe]
    base = PRESETS["default"][1]
    cfg = dataclasses.replace(
        base, env=f"metaworld/{task}", dataset=(demos,), eval_episodes=0, seed=args.seed,
        policy=dataclasses.replace(DiffusionConfig(), **policy_kw), **train_kw,
    )
    cfg = with_run_dir(cfg, args.runs / recipe, task)  # a changed recipe trains afresh in its own dir
    return cfg.run_dir, train_measured(cfg)


def main() -> None:
    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    require_known(args.recipes, RECIPES, "recipes")
    rows = []
    for task in args.tasks:
        demos = args.runs / "demos" / f"{task}-{args.n_demos}demos.zarr"
        if not demos.exists():
            from data.collect import CollectConfig, collect

            collect(CollectConfig(env=f"metaworld/{task}", episodes=args.n_demos, out=demos))
        for recipe in args.recipes:
            run_dir, cpu_min = train_recipe(args, recipe, task, demos)
            for sampler, steps in RECIPES[recipe][2]:
                ev = evaluate_checkpoint(run_dir, f"metaworld/{task}", args.episodes, (sampler, steps))
                row = {
                    "recipe": recipe, "task": task, "split": split_of(task), "sampler": f"{sampler}-{steps}",
                    "success_rate": ev["success_rate"], "ci95": [round(c, 3) for c in ev["ci95"]], **cpu_minutes(cpu_min, ev),
                }
                rows.append(row)
                print_table([row], list(row))
    print()
    print_table(rows, ["recipe", "sampler", "task", "split", "success_rate", "ci95", "train_cpu_minutes", "eval_cpu_minutes"])
    means = {}
    for recipe, sampler in dict.fromkeys((r["recipe"], r["sampler"]) for r in rows):
        sel = [r for r in rows if r["recipe"] == recipe and r["sampler"] == sampler]
        means[f"{recipe} {sampler}"] = {
            "mean_success": float(np.mean([r["success_rate"] for r in sel])),
            "mean_train_cpu_minutes": float(np.mean([r["train_cpu_minutes"] for r in sel])),
            "mean_eval_cpu_minutes": float(np.mean([r["eval_cpu_minutes"] for r in sel])),
            **{s: float(np.mean([r["success_rate"] for r in sel if r["split"] == s])) for s in SPLITS if any(r["split"] == s for r in sel)},
        }
    print("\nmeans:")
    for name, m in means.items():
        print(f"  {name:>28}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()))
    results = [
        {"policy": "diffusion", "recipe": r["recipe"], "sampler": r["sampler"], "task": f"metaworld/{r['task']}", "split": r["split"], "n_demos": args.n_demos,
         "metric": "success_rate", "value": r["success_rate"], "ci95": r["ci95"], "n": args.episodes,
         **{k: r[k] for k in ("train_cpu_minutes", "eval_cpu_minutes", "total_cpu_minutes")}}
        for r in rows
    ]
    write_results(
        args.out, "recipe_sweep",
        f"{args.n_demos} scripted demos/task, state DP recipes (bench/recipe_sweep.py RECIPES), final EMA checkpoint, {args.episodes} episodes seeds 100000+, "
        "success = info['success'] at any step within 500 steps; train_cpu_minutes = training user+sys CPU / 60 over every attempt; "
        "eval_cpu_minutes = that sampler's evaluation (env workers included); total_cpu_minutes = their sum",
        results, means=means, recipes={k: {"policy": v[0], "train": v[1], "samplers": v[2]} for k, v in RECIPES.items() if k in args.recipes},
    )


if __name__ == "__main__":
    main()
