"""Success of state and image Diffusion Policies on robosuite Lift / PickPlaceCan and a Meta-World task.

    python -m bench.camera_success --out bench/results/camera_success.json                 # every row below
    python -m bench.camera_success --rows lift-state can-state --out bench/results/robosuite_state.json
    python -m bench.camera_success --rows lift-image --image-recipe conv-mlp-flow --image-steps 8000 --out bench/results/lift_image_conv.json
    python -m bench.camera_success --rows lift-image --image-recipe resnet-unet --image-steps 3000 --device cuda --out ...

Protocol: 50 scripted demos per env (seeds 0+, failed attempts dropped and counted: the expert's success rate
is reported), one policy per row, the final EMA checkpoint evaluated on 50 seeded episodes (seeds 100000+),
success = the env's info["success"] at any step (robosuite: _check_success(); Meta-World: info["success"]),
episode limits 200 (Lift), 400 (Can), 500 (Meta-World). State rows use the `default` preset (2000 steps,
batch 128) on the `state` key. Image rows read one 84x84 camera (random 76x76 crops) plus `proprio`, and
no object state: the object must be found in the image. On CPU the image rows use --image-steps/--image-batch
and are labelled with them. `train_cpu_minutes` = user + sys CPU of the training process and its loader workers,
summed over every attempt of a resumed run; `eval_cpu_minutes` = the same for the evaluation (env workers and
their rendering included); `total_cpu_minutes` = both. Run dirs end in the hash of their training config.

Image recipes: resnet-unet is the paper's (ResNet-18 GroupNorm trunk, 1-D UNet, DDPM, DDIM-10); conv-mlp-flow
is the CPU recipe (4-layer conv trunk, the default preset's MLP denoiser, flow matching, 3 Euler steps).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import tyro

from policies.training import PRESETS
from bench.common import cpu_minutes, evaluate_checkpoint, print_table, require_known, train_measured, with_run_dir, write_results
from policies import DiffusionConfig

# name -> (env, camera or None)
ROWS: dict[str, tuple[str, str | None]] = {
    "lift-state": ("robosuite/Lift", None),
    "can-state": ("robosuite/PickPlaceCan", None),
    "lift-image": ("robosuite/Lift", "agentview"),
    "button-image": ("metaworld/button-press-topdown-v3", "corner2"),
}

# image recipe name -> DiffusionConfig overrides (on top of one camera + proprio)
IMAGE_RECIPES: dict[str, dict] = {
    "resnet-unet": {},
    "conv-mlp-flow": {"vision_encoder": "conv", "backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3},
    # level-2 minibatching: each encoded window is paired with 4 noised action samples (run with --image-batch 16
    # for the same 64 denoiser samples per step as conv-mlp-flow at batch 64, a quarter of the encoder work)
    "conv-mlp-flow-level2": {"vision_encoder": "conv", "backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3, "level2_samples": 4},
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
    image_recipe: str = "conv-mlp-flow"
    """Camera trunk and denoiser of the image rows, from IMAGE_RECIPES."""
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
    preset = PRESETS["default"][1]
    if camera:
        policy = DiffusionConfig(state_keys=("proprio",), image_keys=(f"image_{camera}",), **IMAGE_RECIPES[args.image_recipe])
        steps, batch, recipe = args.image_steps, args.image_batch, args.image_recipe
    else:
        policy, steps, batch, recipe = preset.policy, preset.steps, preset.batch_size, "default preset"  # on robosuite's state
    cfg = dataclasses.replace(
        preset, env=env, dataset=(demos,), policy=policy, steps=steps, batch_size=batch, eval_episodes=0,
        device=args.device, num_threads=args.num_threads, save_every=500,
    )
    cfg = with_run_dir(cfg, args.runs, f"{name}-{args.image_recipe + '-' if camera else ''}{args.n_demos}demos-{steps}steps-b{batch}")
    run_dir = cfg.run_dir
    train_min = train_measured(cfg)
    ev = evaluate_checkpoint(run_dir, env, args.episodes)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return {
        "row": name, "env": env, "obs": f"{camera} {args.image_size}px + proprio" if camera else "state", "recipe": recipe, "train_steps": steps, "batch": batch,
        "success_rate": ev["success_rate"], "ci95": [round(c, 3) for c in ev["ci95"]], "n": ev["n_episodes"], **expert,
        **cpu_minutes(train_min, ev, ndigits=1), "final_loss": log[-1]["loss"], "data_wait_frac": log[-1]["data_wait_frac"],
        "samples_per_s": log[-1]["samples_per_s"], "run_dir": str(run_dir), "device": args.device,
    }


def main() -> None:
    args = tyro.cli(Args)
    require_known(args.rows, ROWS, "rows")
    require_known((args.image_recipe,), IMAGE_RECIPES, "image recipe")
    rows = [run_row(args, name) for name in args.rows]
    print_table(rows, ["row", "obs", "recipe", "train_steps", "batch", "success_rate", "ci95", "train_cpu_minutes", "eval_cpu_minutes", "expert_success", "data_wait_frac", "device"])
    write_results(
        args.out, "camera_success",
        f"{args.n_demos} scripted demos per env; Diffusion Policy; final EMA checkpoint; {args.episodes} episodes, seeds 100000+; "
        "success = env info['success'] at any step (robosuite _check_success; Meta-World info['success']); limits Lift 200, Can 400, Meta-World 500",
        rows,
    )


if __name__ == "__main__":
    main()
