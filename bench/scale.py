"""Scaling out: DDP training throughput, evaluation-sweep throughput, RAM while streaming a store larger than a cap.

    python -m bench.scale --out bench/results/scale.json
    python -m bench.scale --parts stream --out /tmp/stream.json

Parts:
- ddp: `train.py default` (state Diffusion Policy, default UNet) on 10 push-v3 demos, `--steps` steps; samples/s
  from the last train_log line (global: every rank's windows). One process (2 torch threads, and 1 thread) vs
  `torchrun --nproc_per_node 2` (1 thread each) at the same effective batch, and at twice it.
- sweep: `eval.py sweep` of the ddp part's checkpoint over push-v3 and reach-v3 x 4 seed blocks x 5 episodes
  (40 episodes of 100 steps; the 60-step policy rarely succeeds, so episodes run to the limit) with 1, 2
  and 4 workers; episodes/s = 40 / sweep wall time, process start-up included.
- stream: a low-dim store `store_gb` GB large (512-D float32 state + 4-D action, 500-step episodes of random
  data), trained for `stream_steps` steps with `--data-ram-gb cap_gb` (resident set rotating every 20 steps), a
  small DP; peak RSS (ru_maxrss) of the training process, next to the same training on a 10-episode store
  (the baseline: torch, model, optimizer) and, for contrast, without the cap on the large store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from bench.common import print_table, write_results

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Args:
    parts: tuple[str, ...] = ("ddp", "sweep", "stream")
    """Which measurements to run."""
    steps: int = 60
    """Training steps per ddp configuration."""
    batch_size: int = 128
    """Effective batch of the ddp comparison."""
    runs: Path = Path("bench_runs/scale")
    """Scratch directory (stores, runs, sweeps)."""
    store_gb: float = 2.0
    """Size of the large low-dim store (stream part)."""
    cap_gb: float = 0.5
    """--data-ram-gb of the stream part."""
    stream_steps: int = 100
    """Training steps of each stream run."""
    out: Path | None = None
    """JSON output."""


def sh(cmd: list[str], threads: int, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MUJOCO_GL": "egl"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc


def demos(args: Args) -> Path:
    path = args.runs / "push10.zarr"
    if not path.exists():
        sh([sys.executable, "-m", "data.collect", "--env", "metaworld/push-v3", "--episodes", "10", "--out", str(path)], 1)
    return path


def ddp_rows(args: Args) -> list[dict]:
    dataset = demos(args)
    configs = [  # (name, processes, threads per process, per-process batch)
        ("1 process, 2 threads", 1, 2, args.batch_size),
        ("1 process, 1 thread", 1, 1, args.batch_size),
        ("torchrun 2 x 1 thread, same effective batch", 2, 1, args.batch_size // 2),
        ("torchrun 2 x 1 thread, per-process batch kept", 2, 1, args.batch_size),
    ]
    rows = []
    for name, procs, threads, batch in configs:
        run_dir = args.runs / f"ddp-{procs}p-{threads}t-b{batch}"
        shutil.rmtree(run_dir, ignore_errors=True)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable]
        cmd = [*launcher, "train.py", "default", "--env", "metaworld/push-v3", "--dataset", str(dataset), "--run-dir", str(run_dir), "--steps", str(args.steps),
               "--batch-size", str(batch), "--log-every", str(args.steps // 3), "--save-every", str(10 * args.steps), "--eval-episodes", "0", "--num-threads", str(threads)]
        start = time.perf_counter()
        sh(cmd, threads)
        wall = time.perf_counter() - start
        log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        rows.append({"part": "ddp", "config": name, "processes": procs, "threads_per_process": threads, "per_process_batch": batch,
                     "effective_batch": batch * procs, "samples_per_s": log[-1]["samples_per_s"], "steps_per_s": log[-1]["samples_per_s"] / (batch * procs),
                     "final_loss": log[-1]["loss"], "wall_s_with_startup": wall})
    return rows


def sweep_rows(args: Args) -> list[dict]:
    ckpt = args.runs / f"ddp-1p-2t-b{args.batch_size}"
    if not (ckpt / "checkpoints" / "last").exists():
        raise SystemExit(f"error: the sweep part evaluates {ckpt}; run the ddp part first")
    rows = []
    for workers in (1, 2, 4):
        out = args.runs / f"sweep-{workers}w"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "eval.py", "sweep", "--checkpoints", str(ckpt), "--tasks", "metaworld/push-v3", "metaworld/reach-v3", "--seeds", "0", "1", "2", "3",
               "--episodes", "5", "--max-episode-steps", "100", "--workers", str(workers), "--out", str(out)]
        start = time.perf_counter()
        sh(cmd, 1)
        wall = time.perf_counter() - start
        result = json.loads((out / "sweep.json").read_text())
        episodes = sum(s["n"] for s in result["summary"])
        rows.append({"part": "sweep", "workers": workers, "jobs": len(result["jobs"]), "episodes": episodes, "wall_s": wall, "episodes_per_s": episodes / wall,
                     "env_steps_per_s": episodes * 100 / wall, "success": {s["task"]: s["success_rate"] for s in result["summary"]}})
    return rows


def build_lowdim_store(path: Path, gigabytes: float, episodes: int | None = None) -> dict:
    from data.store import EpisodeStore

    episode_len, state_dim = 500, 512
    step_bytes = (state_dim + 4) * 4
    n_episodes = episodes or int(gigabytes * 1e9 // (step_bytes * episode_len))
    if path.exists() and EpisodeStore.open(path).n_episodes == n_episodes:
        return {"episodes": n_episodes, "raw_gb": n_episodes * episode_len * step_bytes / 1e9}
    shutil.rmtree(path, ignore_errors=True)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    store = EpisodeStore.create(tmp, env_id="metaworld/push-v3", fps=80, source="bench.scale synthetic")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(episode_len, state_dim)).astype(np.float32)
    for e in range(n_episodes):
        store.append_episode({"state": base + np.float32(e * 1e-3), "action": rng.uniform(-1, 1, (episode_len, 4)).astype(np.float32)})
    os.rename(tmp, path)
    return {"episodes": n_episodes, "raw_gb": n_episodes * episode_len * step_bytes / 1e9}


def train_peak_rss(dataset: Path, run_dir: Path, steps: int, extra: list[str]) -> dict:
    """Train in a fresh process; its peak RSS and wall time."""
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["tiny", "--env", "metaworld/push-v3", "--dataset", str(dataset), "--run-dir", str(run_dir), "--steps", str(steps), "--batch-size", "64",
            "--log-every", str(steps), "--save-every", str(10 * steps), "--eval-episodes", "0", "--policy.down-dims", "64", "128", *extra]
    code = f"import json, resource, train; train.main({args!r}); print(json.dumps({{'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))"
    start = time.perf_counter()
    proc = sh([sys.executable, "-c", code], 1)
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"wall_s": time.perf_counter() - start}


def stream_rows(args: Args) -> list[dict]:
    big = args.runs / "lowdim-big.zarr"
    small = args.runs / "lowdim-small.zarr"
    built = build_lowdim_store(big, args.store_gb)
    build_lowdim_store(small, 0, episodes=10)
    disk_gb = sum(f.stat().st_size for f in big.rglob("*") if f.is_file()) / 1e9
    rows = []
    for name, dataset, extra in (
        ("10-episode store, in RAM (baseline)", small, []),
        (f"{built['raw_gb']:.1f} GB store, --data-ram-gb {args.cap_gb}", big, ["--data-ram-gb", str(args.cap_gb), "--stream-rotate-every", "20"]),
        (f"{built['raw_gb']:.1f} GB store, no cap (loaded whole)", big, []),
    ):
        measured = train_peak_rss(dataset, args.runs / f"stream-{len(rows)}", args.stream_steps, extra)
        rows.append({"part": "stream", "config": name, "store_raw_gb": built["raw_gb"] if dataset == big else None, "store_disk_gb": disk_gb if dataset == big else None,
                     "cap_gb": args.cap_gb if extra else None, "steps": args.stream_steps, **measured})
    return rows


def main() -> None:
    args = tyro.cli(Args)
    args.runs.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if "ddp" in args.parts:
        rows += ddp_rows(args)
        print_table([r for r in rows if r["part"] == "ddp"], ["config", "effective_batch", "samples_per_s", "steps_per_s", "wall_s_with_startup"])
    if "sweep" in args.parts:
        rows += sweep_rows(args)
        print_table([r for r in rows if r["part"] == "sweep"], ["workers", "jobs", "episodes", "wall_s", "episodes_per_s"])
    if "stream" in args.parts:
        rows += stream_rows(args)
        print_table([r for r in rows if r["part"] == "stream"], ["config", "store_raw_gb", "cap_gb", "peak_rss_mb", "wall_s"])
    write_results(
        args.out, "scale",
        "2-core CPU VM. ddp: train.py default DP on 10 push-v3 demos, samples/s = global windows/s of the last logged window; "
        "sweep: eval.py sweep, 40 episodes of 100 steps, wall time incl. process start-up; stream: peak RSS (ru_maxrss) of a fresh training process",
        rows,
    )


if __name__ == "__main__":
    main()
