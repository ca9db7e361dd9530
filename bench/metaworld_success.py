"""The Meta-World table of record: recipes x tasks, beside DP3's and image Diffusion Policy's per-task numbers.

    python -m bench.metaworld_success --recipes pointcloud --tasks all --out bench/results/metaworld_pointcloud.json
    python -m bench.metaworld_success --recipes privileged pointcloud --tasks basketball-v3 shelf-place-v3
    python -m bench.metaworld_success --recipes camera --tasks split:medium split:hard split:very_hard

Protocol (DP3, Ze et al. 2024, where it can be matched): 10 scripted demos per task (seeds 0+, only successful
ones kept), the recipe's train.py preset, the FINAL EMA checkpoint (DP3 reports the mean of its top-5 evaluation
checkpoints over 3 seeds: an advantage for DP3), 50 seeded episodes (seeds 100000..100049) of at most
`max_episode_steps` = 200 steps (DP3's), success = Meta-World info["success"] at any step, Wilson 95% CIs.

Recipes and what they read (`observability`, derived from the keys, is in every row):
- privileged: the `default` preset, `state` + `relative` (object poses and the goal): the upper bound.
- pointcloud: the `pointcloud` preset, `point_cloud` (corner2 depth at DP3's camera position, 512 points) + `proprio`.
- camera: the `image` preset, `image_corner2` (84 px) + `proprio`.
- vqbet: the `vqbet` preset on privileged state.

Splits, and the per-task DP3 / image DP numbers, come from bench/anchors/dp3_metaworld.json (DP3 Table XVIII, all
50 tasks). Split means are taken over the same tasks on both sides; a split is complete when all its tasks ran.
CPU: `train_cpu_minutes` (every attempt of a resumed run), `eval_cpu_minutes` (env workers, rendering included),
`total_cpu_minutes` = their sum, the budget of 15 per task; demo collection is reported apart (`demo_cpu_minutes`).

The bench resumes task by task: each finished (recipe, task) is written to
bench/results/metaworld/<recipe>/<task>.json with its spec, and a task whose file matches the spec is not rerun.
A task whose scripted expert fails (`envs.metaworld.BROKEN_EXPERTS`, empty today: hand-insert-v3 has our own
`HandInsertExpert`, 50/50 seeds within 200 steps) counts as 0%.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from bench.common import (
    config_hash,
    cpu_minutes,
    cpu_seconds,
    evaluate_checkpoint,
    print_table,
    require_known,
    train_measured,
    with_run_dir,
    write_results,
)
from core.io import atomic_write_json
from data.collect import CollectionError
from envs.rollout import failure_stages
from policies.base import policy_class_for_config
from policies.training import PRESETS, TrainConfig, with_env_state_keys

ANCHORS = Path(__file__).parent / "anchors" / "dp3_metaworld.json"
DP3_TABLE: list[dict[str, Any]] = json.loads(ANCHORS.read_text())["tasks"]
SPLIT_NAMES = ("easy", "medium", "hard", "very_hard")
SPLITS: dict[str, list[str]] = {s: [t["task"] for t in DP3_TABLE if t["split"] == s] for s in SPLIT_NAMES}
PUBLISHED = json.loads(ANCHORS.read_text())["split_means"]
DEFAULT_TASKS = ("button-press-topdown-v3", "drawer-open-v3", "basketball-v3", "sweep-into-v3", "pick-place-v3", "assembly-v3", "shelf-place-v3", "stick-pull-v3")


@dataclass(frozen=True)
class Recipe:
    preset: str
    """The train.py preset."""
    point_cloud: bool = False
    """Collect the demos with the suite's point cloud."""
    cameras: tuple[str, ...] = ()
    """Collect the demos with these cameras (84 px)."""


RECIPES = {
    "privileged": Recipe("default"),
    "pointcloud": Recipe("pointcloud", point_cloud=True),
    "camera": Recipe("image", cameras=("corner2",)),
    "vqbet": Recipe("vqbet"),
}


@dataclass(frozen=True)
class Args:
    recipes: tuple[str, ...] = ("privileged",)
    """Recipes to run (RECIPES): privileged, pointcloud, camera, vqbet."""
    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Meta-World v3 tasks; `all` for the 50 of DP3's table, `split:<name>` for one split."""
    n_demos: int = 10
    steps: int | None = None
    """Training steps for every recipe (default: each preset's)."""
    episodes: int = 50
    max_episode_steps: int = 200
    """Evaluation episode limit (DP3's 200; Meta-World's own is 500)."""
    seed: int = 0
    num_threads: int | None = None
    """torch threads for training and evaluation (1 when another job shares the 2 cores: OpenMP threads that wait
    for a descheduled partner spin, and that spinning would count as CPU-minutes)."""
    runs: Path = Path("bench_runs")
    results_dir: Path = Path("bench/results/metaworld")
    """One JSON per finished (recipe, task), committed as it lands; the resume record."""
    out: Path | None = None
    """The assembled table (every finished task of the asked recipes and tasks)."""
    report_only: bool = False
    """Run nothing: assemble --out and print the markdown table from the finished result files."""


def split_of(task: str) -> str:
    for split, tasks in SPLITS.items():
        if task in tasks:
            return split
    raise ValueError(f"{task} is not in DP3's Meta-World table ({ANCHORS})")


def expand_tasks(tasks: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for t in tasks:
        if t == "all":
            out += [row["task"] for row in DP3_TABLE]
        elif t.startswith("split:"):
            require_known([t.removeprefix("split:")], SPLITS, "split")
            out += SPLITS[t.removeprefix("split:")]
        else:
            split_of(t)
            out.append(t)
    return list(dict.fromkeys(out))


def demo_store(args: Args, recipe: Recipe, task: str) -> tuple[Path, float]:
    """Collect the task's demos once per sensor set (shared by the recipes that need it); returns the store and the
    collection's CPU-minutes (recorded beside the store)."""
    from data.collect import CollectConfig, collect

    sensors = ("-pc" if recipe.point_cloud else "") + "".join(f"-{c}" for c in recipe.cameras)
    path = args.runs / "demos" / f"{task}-{args.n_demos}demos{sensors}.zarr"
    record = path.with_name(path.name + ".cpu.json")
    if not path.exists():
        start = cpu_seconds()
        collect(CollectConfig(env=f"metaworld/{task}", episodes=args.n_demos, out=path, point_cloud=recipe.point_cloud, cameras=recipe.cameras,
                              resume=path.with_name(path.name + ".partial").exists()))
        atomic_write_json(record, {"cpu_minutes": (cpu_seconds() - start) / 60})
    return path, json.loads(record.read_text())["cpu_minutes"] if record.exists() else float("nan")


def recipe_config(args: Args, recipe_name: str, task: str) -> TrainConfig:
    """The recipe's preset for `task` as this bench trains it (no dataset or run dir yet)."""
    base = with_env_state_keys(dataclasses.replace(PRESETS[RECIPES[recipe_name].preset][1], env=f"metaworld/{task}"))
    return dataclasses.replace(base, steps=args.steps or base.steps, eval_episodes=0, seed=args.seed, image_size=84, num_threads=args.num_threads)


def train_config(args: Args, recipe_name: str, task: str, demos: Path) -> TrainConfig:
    cfg = dataclasses.replace(recipe_config(args, recipe_name, task), dataset=(demos,))
    return with_run_dir(cfg, args.runs, f"{task}-{recipe_name}-{args.n_demos}demos-{cfg.steps}steps-seed{args.seed}")


def spec(args: Args, recipe_name: str, task: str) -> dict[str, Any]:
    """What defines a (recipe, task) result; a result file with another spec is rerun."""
    return {"recipe": recipe_name, "preset": RECIPES[recipe_name].preset, "task": task, "n_demos": args.n_demos, "episodes": args.episodes,
            "max_episode_steps": args.max_episode_steps, "seed": args.seed, "train_config_hash": config_hash(recipe_config(args, recipe_name, task))}


def anchors(task: str) -> dict[str, float]:
    row = next(r for r in DP3_TABLE if r["task"] == task)
    return {"dp3": row["dp3"], "diffusion_policy_image": row["diffusion_policy_image"]}


def run_task(args: Args, recipe_name: str, task: str) -> dict:
    """One (recipe, task): demos, training, evaluation; the row, also written to results_dir/<recipe>/<task>.json."""
    path = args.results_dir / recipe_name / f"{task}.json"
    want = spec(args, recipe_name, task)
    if path.exists() and (done := json.loads(path.read_text())).get("spec") == want:
        return done
    recipe = RECIPES[recipe_name]
    started = time.time()
    row: dict[str, Any] = {"recipe": recipe_name, "task": task, "split": split_of(task), **anchors(task), "spec": want}
    try:
        demos, demo_cpu = demo_store(args, recipe, task)
    except CollectionError as e:  # the expert fails: no demos, 0% (DP3's table has the task, so ours must too)
        policy_cfg = recipe_config(args, recipe_name, task).policy
        row |= {"success_rate": 0.0, "n_episodes": 0, "ci95": [0.0, 0.0], "obs_keys": list(policy_cfg.obs_keys), "no_demos": str(e),
                "policy": policy_class_for_config(policy_cfg).policy_type}
    else:
        cfg = train_config(args, recipe_name, task, demos)
        train_min = train_measured(cfg)
        ev = evaluate_checkpoint(cfg.run_dir, f"metaworld/{task}", args.episodes, max_episode_steps=args.max_episode_steps)
        row |= {
            "policy": json.loads((cfg.run_dir / "checkpoints" / "last" / "config.json").read_text())["policy_type"],
            "success_rate": ev["success_rate"], "n_episodes": ev["n_episodes"], "ci95": [round(c, 3) for c in ev["ci95"]],
            "obs_keys": ev["obs_keys"], "max_episode_steps": ev["max_episode_steps"], "train_steps": cfg.steps,
            **cpu_minutes(train_min, ev), "demo_cpu_minutes": round(demo_cpu, 2), "run_dir": str(cfg.run_dir),
            "failure_stages": failure_stages([(e["success"], e["stages_reached"]) for e in ev["episodes"]], ev["stages"]),
        }
    from core.observability import observability

    row |= {"observability": observability(row["obs_keys"]), "metric": "success_rate", "value": row["success_rate"], "n": row["n_episodes"],
            "wall_minutes": round((time.time() - started) / 60, 1)}
    atomic_write_json(path, row)
    return row


def split_means(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per split: our mean and DP3's and image DP's over the same tasks, and whether the split is complete."""
    out = {}
    for split in SPLIT_NAMES:
        sel = [r for r in rows if r["split"] == split]
        if sel:
            out[split] = {
                "ours": round(100 * float(np.mean([r["success_rate"] for r in sel])), 1),
                "dp3_same_tasks": round(float(np.mean([r["dp3"] for r in sel])), 1),
                "diffusion_policy_image_same_tasks": round(float(np.mean([r["diffusion_policy_image"] for r in sel])), 1),
                "n_tasks": len(sel), "of": len(SPLITS[split]), "complete": len(sel) == len(SPLITS[split]),
            }
    return out


def markdown(rows: list[dict], means: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The README's table: one line per (recipe, task) beside DP3 and image DP, then the split means."""
    lines = ["| recipe | task | split | observability (keys) | success % (95% CI) | DP3 | image DP | train + eval CPU-min |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["recipe"], SPLIT_NAMES.index(r["split"]), r["task"])):
        ci = f"{100 * r['ci95'][0]:.0f}–{100 * r['ci95'][1]:.0f}"
        cpu = f"{r['train_cpu_minutes']:.1f} + {r['eval_cpu_minutes']:.1f} = {r['total_cpu_minutes']:.1f}" if "total_cpu_minutes" in r else "no demos"
        lines.append(f"| {r['recipe']} | {r['task']} | {r['split']} | {r['observability']} ({' + '.join(r['obs_keys'])}) | {100 * r['success_rate']:.0f} ({ci}) "
                     f"| {r['dp3']:.0f} | {r['diffusion_policy_image']:.0f} | {cpu} |")
    lines += ["", "| recipe | split | tasks run | ours | DP3, same tasks | image DP, same tasks | DP3, all tasks of the split |", "|---|---|---|---|---|---|---|"]
    for recipe, by_split in means.items():
        for split, m in by_split.items():
            lines.append(f"| {recipe} | {split} | {m['n_tasks']} of {m['of']} | {m['ours']:.1f} | {m['dp3_same_tasks']:.1f} | {m['diffusion_policy_image_same_tasks']:.1f} | {PUBLISHED['dp3'][split]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    args = tyro.cli(Args)
    require_known(args.recipes, RECIPES, "recipe")
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    tasks = expand_tasks(args.tasks)
    rows = []
    for recipe in args.recipes:
        for task in tasks:
            if args.report_only:
                path = args.results_dir / recipe / f"{task}.json"
                if path.exists() and (done := json.loads(path.read_text())).get("spec") == spec(args, recipe, task):
                    rows.append(done)
                continue
            rows.append(run_task(args, recipe, task))
            r = rows[-1]
            print(f"{recipe} {task}: {100 * r['success_rate']:.0f}% (DP3 {r['dp3']:.0f}, image DP {r['diffusion_policy_image']:.0f}), "
                  f"{r.get('total_cpu_minutes', 0):.1f} CPU-min", flush=True)
    print_table(rows, ["recipe", "task", "split", "observability", "success_rate", "ci95", "dp3", "diffusion_policy_image", "train_cpu_minutes", "eval_cpu_minutes", "total_cpu_minutes"])
    means = {recipe: split_means([r for r in rows if r["recipe"] == recipe]) for recipe in args.recipes}
    for recipe, by_split in means.items():
        print(f"\n{recipe} split means (%), ours / DP3 / image DP on the same tasks:")
        for split, m in by_split.items():
            print(f"  {split:>9}: {m['ours']:.1f} / {m['dp3_same_tasks']:.1f} / {m['diffusion_policy_image_same_tasks']:.1f}  ({m['n_tasks']} of {m['of']} tasks)")
    print("\n" + markdown(rows, means))
    write_results(
        args.out, "metaworld_success",
        f"{args.n_demos} scripted demos/task (seeds 0+), train.py presets per recipe, FINAL EMA checkpoint (DP3: mean of top-5 eval checkpoints), "
        f"{args.episodes} episodes seeds 100000+, at most {args.max_episode_steps} steps, success = Meta-World info['success'] at any step; "
        "split means over the tasks present, DP3 and image DP (DP3 Table XVIII) over the same tasks",
        rows, split_means_pct=means, published_split_means_pct_all_50=PUBLISHED,
    )


if __name__ == "__main__":
    main()
