"""Success of state and image Diffusion Policies on robosuite Lift / PickPlaceCan and a Meta-World task.

    python -m bench.camera_success --out bench/results/camera_success.json                 # every row below
    python -m bench.camera_success --rows lift-state can-state --out bench/results/robosuite_state.json
    python -m bench.camera_success --rows lift-image --image-steps 3000 --image-batch 64 --device cuda --out ...

Protocol: 50 scripted demos per env (seeds 0+, failed attempts dropped and counted: the expert's success rate
is reported), one policy per row, the final EMA checkpoint evaluated on 50 seeded episodes (seeds 100000+),
success = the env's info["success"] at any step (robosuite: _check_success(); Meta-World: info["success"]),
episode limits 200 (Lift), 400 (Can), 500 (Meta-World). State rows use the `default` preset (2000 steps,
batch 128) on the `state` key. Image rows read one 84x84 camera (random 76x76 crops) plus `proprio`, and
no object state: the object must be found in the image. On CPU the image rows use --image-steps/--image-batch
and are labelled with them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

import train
from bench.common import print_table, require_known, write_results
from policies import DiffusionConfig

# name -> (env, camera or None)
ROWS: dict[str, tuple[str, str | None]] = {
    "lift-state": ("robosuite/Lift", None),
    "can-state": ("robosuite/PickPlaceCan", None),
    "lift-image": ("robosuite/Lift", "agentview"),
    "button-image": ("metaworld/button-press-topdown-v3", "corner2"),
}


@dataclass(frozen=True)
class Args:
    rows: tuple[str, ...] = tuple(ROWS)
    """Rows to run, from ROWS."""
    n_demos: int = 50
    episodes: int = 50
    image_size: int = 84
    image_steps: int = 3000
    """Training steps of the image rows."""
    image_batch: int = 64
    """Batch of the image rows."""
    device: str = "cpu"
    num_threads: int | None = None
    runs: Path = Path("bench_runs/camera")
    out: Path | None = None


def demos_for(args: Args, env: str, camera: str | None) -> tuple[Path, dict]:
    from data.collect import CollectConfig, collect
    from data.store import EpisodeStore

    tag = env.replace("/", "-") + (f"-{camera}{args.image_size}" if camera else "")
    path = args.runs / "demos" / f"{tag}-{args.n_demos}demos.zarr"
    if not path.exists():
        collect(CollectConfig(env=env, episodes=args.n_demos, out=path, cameras=(camera,) if camera else (), image_size=args.image_size))
    attrs = EpisodeStore.open(path).attrs
    kept, dropped = len(attrs["episode_seeds"]), len(attrs["dropped_seeds"])
    return path, {"expert_success": kept / (kept + dropped), "expert_attempts": kept + dropped}


def run_row(args: Args, name: str) -> dict:
    env, camera = ROWS[name]
    demos, expert = demos_for(args, env, camera)
    if camera:
        policy = DiffusionConfig(state_keys=("proprio",), image_keys=(f"image_{camera}",))
        steps, batch = args.image_steps, args.image_batch
    else:
        policy, steps, batch = DiffusionConfig(), train.PRESETS["default"][1].steps, train.PRESETS["default"][1].batch_size
    run_dir = args.runs / f"{name}-{args.n_demos}demos-{steps}steps-b{batch}"
    if not (run_dir / "eval.json").exists():
        cfg = dataclasses.replace(
            train.PRESETS["default"][1], env=env, dataset=(demos,), policy=policy, steps=steps, batch_size=batch, eval_episodes=args.episodes,
            run_dir=run_dir, resume=(run_dir / "train_config.json").exists(), device=args.device, num_threads=args.num_threads, save_every=250,
        )
        start = time.perf_counter()
        train.train(cfg)
        (run_dir / "bench_wall_s.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    ev = json.loads((run_dir / "eval.json").read_text())
    wall = (run_dir / "bench_wall_s.txt").read_text().strip() if (run_dir / "bench_wall_s.txt").exists() else None
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return {
        "row": name, "env": env, "obs": f"{camera} {args.image_size}px + proprio" if camera else "state", "train_steps": steps, "batch": batch,
        "success_rate": ev["success_rate"], "ci95": [round(c, 3) for c in ev["ci95"]], "n": ev["n_episodes"], **expert,
        "final_loss": log[-1]["loss"], "data_wait_frac": log[-1]["data_wait_frac"], "samples_per_s": log[-1]["samples_per_s"],
        "wall_s_last_session": float(wall) if wall else None, "run_dir": str(run_dir), "device": args.device,
    }


def main() -> None:
    args = tyro.cli(Args)
    require_known(args.rows, ROWS, "rows")
    rows = [run_row(args, name) for name in args.rows]
    print_table(rows, ["row", "obs", "train_steps", "batch", "success_rate", "ci95", "expert_success", "data_wait_frac", "samples_per_s", "device"])
    write_results(
        args.out, "camera_success",
        f"{args.n_demos} scripted demos per env; Diffusion Policy; final EMA checkpoint; {args.episodes} episodes, seeds 100000+; "
        "success = env info['success'] at any step (robosuite _check_success; Meta-World info['success']); limits Lift 200, Can 400, Meta-World 500",
        rows,
    )


if __name__ == "__main__":
    main()
