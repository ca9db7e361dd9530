"""Evaluate a checkpoint in seeded, vectorized episodes.

    python eval.py runs/push-v3-diffusion-seed0 --episodes 50
    python eval.py runs/push-v3-diffusion-seed0/checkpoints/step_0002500 --episodes 50 --video 3 --out eval.json
    python eval.py sweep --checkpoints runs/a runs/b --tasks metaworld/push-v3 --seeds 0 1 2 --workers 2 --out sweeps/x

Prints success rate, Wilson 95% CI and mean episode length; writes JSON with per-episode seeds, successes,
lengths and initial states, plus the success definition.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

from core.checkpoint import env_of_checkpoint, resolve_checkpoint
from core.io import CheckpointError, atomic_write_json
from envs.rollout import evaluate
from policies.base import Policy
from policies.diffusion.compile import compile_sampling


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: tyro.conf.Positional[Path]
    """A checkpoint dir, or a run dir (its checkpoints/last is used)."""
    episodes: int = 50
    """Seeded episodes to run."""
    env: str | None = None
    """Environment (default: the run's train_config.json env)."""
    seed_start: int = 100_000
    """Episode i uses seed seed_start + i."""
    n_envs: int = 10
    """Parallel envs (spawned subprocesses)."""
    max_episode_steps: int | None = None
    """Step limit per episode (default: the env's)."""
    video: int = 0
    """Write mp4s of the first K episodes."""
    out: Path | None = None
    """JSON output (default: <checkpoint>/eval_<n>ep_seed<seed_start>.json)."""
    device: str = "cpu"
    """torch device."""
    num_inference_steps: int | None = None
    """Override the diffusion sampling steps (default: the checkpoint's)."""
    sampler: str | None = None
    """Override the diffusion sampler (default: the checkpoint's): ddim, dpm_solver, unipc or ddpm for objective
    ddpm; euler for objective flow."""
    latency_ms: float | None = None
    """Run through the deployment executor with this simulated observation-to-action delay (docs/deploy.md)."""
    executor: Literal["prefetch", "sync"] = "prefetch"
    """With --latency-ms: prefetch (time-aligned chunks, asks ahead by the measured latency) or sync (ask, hold, execute)."""
    stitch: Literal["latest", "blend", "ensemble"] = "latest"
    """With --latency-ms: how overlapping chunks combine."""
    progress: bool = True
    """Show a progress bar."""
    compile: bool = True
    """Sample diffusion chunks through the compiled TorchScript graph that the policy server also uses
    (policies/diffusion/compile.py); --no-compile samples eagerly."""


def main() -> None:
    if sys.argv[1:2] == ["sweep"]:  # checkpoints x tasks x seed blocks in parallel processes (envs/sweep.py)
        from envs.sweep import main as sweep_main

        sweep_main(sys.argv[2:])
        return
    cfg = tyro.cli(EvalConfig)
    try:
        ckpt = resolve_checkpoint(cfg.checkpoint)
        policy = Policy.from_pretrained(ckpt, map_location=cfg.device)
        policy.check_ready()
    except (CheckpointError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    if cfg.num_inference_steps is not None or cfg.sampler is not None:
        try:
            policy.set_sampler(cfg.sampler, cfg.num_inference_steps)
        except ValueError as e:
            raise SystemExit(f"error: {ckpt}: {e}") from None
    inference = compile_sampling(policy) if cfg.compile else "eager (--no-compile)"
    print(f"inference: {inference}")
    env = cfg.env or env_of_checkpoint(ckpt)
    if env is None:
        raise SystemExit(f"error: {ckpt} is not inside a run dir with train_config.json; pass --env")
    record = {"checkpoint": str(ckpt), "policy_type": policy.policy_type, "num_inference_steps": cfg.num_inference_steps, "sampler": cfg.sampler, "inference": inference, "torch": torch.__version__}
    if cfg.latency_ms is not None:
        from deploy.sim import evaluate_with_latency

        if cfg.video:
            raise SystemExit("error: --video is not supported with --latency-ms")
        latency = evaluate_with_latency(
            policy, env, cfg.episodes, cfg.latency_ms, cfg.executor, cfg.stitch, seed_start=cfg.seed_start, n_envs=cfg.n_envs,
            max_episode_steps=cfg.max_episode_steps,
        )
        result, record = latency.result, record | latency.to_dict()
        tag = f"_latency{cfg.latency_ms:g}ms_{cfg.executor}"
        print(f"latency {cfg.latency_ms:g} ms ({latency.latency_ticks} ticks), executor {cfg.executor}, stitch {cfg.stitch}: "
              f"{latency.hold_fraction:.1%} of commands were holds, {latency.stale_dropped_per_episode:.1f} stale actions dropped per episode")
    else:
        video_dir = ckpt / "videos" if cfg.video else None
        result = evaluate(
            policy, env, cfg.episodes, seed_start=cfg.seed_start, n_envs=cfg.n_envs,
            max_episode_steps=cfg.max_episode_steps, video_dir=video_dir, n_videos=cfg.video, progress=cfg.progress,
        )
        record |= result.to_dict()
        tag = ""
    out = cfg.out or ckpt / f"eval_{cfg.episodes}ep_seed{cfg.seed_start}{tag}.json"
    atomic_write_json(out, record)
    print(result.summary())
    print(f"success definition: {result.success_definition}")
    for path in result.videos:
        print(f"video: {path}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
