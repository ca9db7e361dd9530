"""Evaluation sweeps: checkpoints x tasks x seed blocks, in parallel worker processes, resumable.

    python eval.py sweep --checkpoints runs/a runs/b --tasks metaworld/push-v3 metaworld/reach-v3 \\
        --seeds 0 1 2 --episodes 20 --workers 2 --out sweeps/push-reach

Each job is one `eval.py` process (its own vector envs, `--envs-per-worker` of them) that writes
`<out>/jobs/<job id>.json` atomically. A job whose JSON is complete and matches its spec is never rerun, so an
interrupted sweep resumes where it stopped; a failed job is reported (log in `<out>/jobs/<id>.log`) and the
others go on. Seed block `s` of a job runs episodes `seed_start + s * episodes + i`, so blocks never overlap
and pooling blocks 0..k-1 gives the episodes of one `k * episodes` evaluation. At the end `<out>/sweep.json`
(every job, plus per checkpoint x task pooled success with a Wilson 95% CI) and `<out>/sweep.md` are written.

Workers are plain subprocesses on this machine. Nothing here is a cluster layer: for several machines, split
the checkpoint list across them (same --out on a shared disk works, job files are per job) and rerun once
anywhere to aggregate.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import tyro

from core.checkpoint import env_of_checkpoint, resolve_checkpoint
from core.io import CheckpointError, atomic_write_bytes, atomic_write_json
from envs.rollout import wilson_interval

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SweepConfig:
    checkpoints: tuple[Path, ...]
    """Checkpoint dirs or run dirs (their checkpoints/last)."""
    out: Path
    """Sweep directory: jobs/, sweep.json, sweep.md. Rerunning with the same --out resumes."""
    tasks: tuple[str, ...] = ()
    """Envs to evaluate every checkpoint in (default: each checkpoint's own training env)."""
    seeds: tuple[int, ...] = (0,)
    """Seed blocks: block s runs episodes with seeds seed_start + s * episodes + i."""
    episodes: int = 10
    """Episodes per job (per checkpoint x task x seed block)."""
    seed_start: int = 100_000
    """First evaluation seed (far from demo seeds)."""
    workers: int = 2
    """Jobs run at once, each in its own process."""
    envs_per_worker: int = 1
    """Vector envs inside each job (1: in the job's process; more: subprocesses)."""
    max_episode_steps: int | None = None
    """Step limit per episode (default: the env's)."""
    threads_per_worker: int = 1
    """torch/OpenMP threads per job process."""
    device: str = "cpu"
    """torch device for every job."""


@dataclass(frozen=True)
class Job:
    checkpoint: str
    task: str
    seed: int
    episodes: int
    seed_start: int
    max_episode_steps: int | None

    @property
    def job_id(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        ckpt = Path(self.checkpoint)
        return f"{ckpt.parent.parent.name}-{ckpt.name}_{self.task.replace('/', '-')}_s{self.seed}_{digest}"

    @property
    def first_seed(self) -> int:
        return self.seed_start + self.seed * self.episodes


def plan_jobs(cfg: SweepConfig) -> list[Job]:
    """Every checkpoint x task x seed block; bad checkpoints fail here, before any process starts."""
    if cfg.episodes < 1 or cfg.workers < 1 or cfg.envs_per_worker < 1:
        raise ValueError(f"episodes, workers and envs_per_worker must be >= 1, got {cfg.episodes}, {cfg.workers}, {cfg.envs_per_worker}")
    if not cfg.checkpoints:
        raise ValueError("no --checkpoints given")
    if len(set(cfg.seeds)) != len(cfg.seeds) or any(s < 0 for s in cfg.seeds):
        raise ValueError(f"--seeds must be distinct non-negative block numbers, got {list(cfg.seeds)}")
    jobs = []
    for path in cfg.checkpoints:
        ckpt = resolve_checkpoint(path).resolve()
        tasks = cfg.tasks or (own_env(ckpt),)
        for task in tasks:
            for seed in cfg.seeds:
                jobs.append(Job(str(ckpt), task, seed, cfg.episodes, cfg.seed_start, cfg.max_episode_steps))
    return jobs


def own_env(ckpt: Path) -> str:
    env = env_of_checkpoint(ckpt)
    if env is None:
        raise CheckpointError(f"{ckpt}: not inside a run dir with train_config.json; pass --tasks")
    return env


def finished(job: Job, path: Path) -> dict | None:
    """The job's result when its file is complete and was made for this exact job, else None."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    seeds = [e.get("seed") for e in result.get("episodes", [])]
    same = result.get("checkpoint") == job.checkpoint and result.get("env") == job.task
    same &= job.max_episode_steps in (None, result.get("max_episode_steps"))
    return result if same and seeds == list(range(job.first_seed, job.first_seed + job.episodes)) else None


def _die_with_parent() -> None:
    """Child side of Popen: get SIGKILL when the sweep process dies, so a killed sweep leaves no orphans."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_job(cfg: SweepConfig, job: Job, jobs_dir: Path) -> dict:
    out = jobs_dir / f"{job.job_id}.json"
    cmd = [
        sys.executable, str(ROOT / "eval.py"), job.checkpoint, "--env", job.task, "--episodes", str(job.episodes),
        "--seed-start", str(job.first_seed), "--n-envs", str(cfg.envs_per_worker), "--device", cfg.device, "--out", str(out), "--no-progress",
    ]
    if job.max_episode_steps:
        cmd += ["--max-episode-steps", str(job.max_episode_steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads_per_worker), "MKL_NUM_THREADS": str(cfg.threads_per_worker)}
    start = time.perf_counter()
    with open(jobs_dir / f"{job.job_id}.log", "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, preexec_fn=_die_with_parent)
    result = finished(job, out)
    if proc.returncode != 0 or result is None:
        tail = (jobs_dir / f"{job.job_id}.log").read_text(errors="replace")[-600:]
        return {"status": "failed", "returncode": proc.returncode, "log_tail": tail}
    return {"status": "done", "wall_s": time.perf_counter() - start}


def aggregate(jobs: list[Job], jobs_dir: Path) -> dict:
    rows, groups = [], {}
    for job in jobs:
        result = finished(job, jobs_dir / f"{job.job_id}.json")
        row = {**asdict(job), "job_id": job.job_id, "status": "done" if result else "missing"}
        if result:
            wins = sum(e["success"] for e in result["episodes"])
            row |= {"successes": wins, "n": len(result["episodes"]), "success_rate": result["success_rate"], "mean_length": result["mean_length"]}
            group = groups.setdefault((job.checkpoint, job.task), {"successes": 0, "n": 0, "lengths": [], "seed_blocks": [], "definition": result["success_definition"]})
            group["successes"] += wins
            group["n"] += len(result["episodes"])
            group["lengths"] += [e["length"] for e in result["episodes"]]
            group["seed_blocks"].append(job.seed)
        rows.append(row)
    summary = [
        {
            "checkpoint": ckpt, "task": task, "successes": g["successes"], "n": g["n"], "success_rate": g["successes"] / g["n"],
            "ci95": wilson_interval(g["successes"], g["n"]), "mean_length": sum(g["lengths"]) / len(g["lengths"]),
            "seed_blocks": sorted(g["seed_blocks"]), "success_definition": g["definition"],
        }
        for (ckpt, task), g in groups.items()
    ]
    return {"jobs": rows, "summary": summary}


def markdown(result: dict) -> str:
    lines = ["| checkpoint | task | success | 95% CI | episodes | mean length |", "|---|---|---|---|---|---|"]
    for s in result["summary"]:
        lo, hi = s["ci95"]
        lines.append(f"| {s['checkpoint']} | {s['task']} | {s['success_rate']:.1%} | {lo:.1%}-{hi:.1%} | {s['n']} | {s['mean_length']:.1f} |")
    missing = [j["job_id"] for j in result["jobs"] if j["status"] != "done"]
    if missing:
        lines.append(f"\n{len(missing)} job(s) without a result: {', '.join(missing)}")
    definitions = sorted({s["success_definition"] for s in result["summary"]})
    lines += ["", *(f"Success: {d}" for d in definitions)]
    return "\n".join(lines) + "\n"


def sweep(cfg: SweepConfig) -> dict:
    jobs = plan_jobs(cfg)
    jobs_dir = cfg.out / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if finished(j, jobs_dir / f"{j.job_id}.json") is None]
    print(f"sweep: {len(jobs)} jobs ({len(jobs) - len(todo)} already done), {cfg.workers} workers x {cfg.envs_per_worker} envs -> {cfg.out}")
    start = time.perf_counter()
    failures = []
    with ThreadPoolExecutor(cfg.workers) as pool:
        for job, status in zip(todo, pool.map(lambda j: run_job(cfg, j, jobs_dir), todo)):
            print(f"  {job.job_id}: {status['status']}" + (f" (exit {status['returncode']})" if status["status"] == "failed" else f" in {status['wall_s']:.1f} s"))
            if status["status"] == "failed":
                failures.append({"job_id": job.job_id, **status})
    wall = time.perf_counter() - start
    result = aggregate(jobs, jobs_dir) | {
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "failures": failures,
        "this_session": {"jobs_run": len(todo), "episodes_run": len(todo) * cfg.episodes, "wall_s": wall},
    }
    atomic_write_json(cfg.out / "sweep.json", result)
    atomic_write_bytes(cfg.out / "sweep.md", markdown(result).encode())
    print(markdown(result))
    return result


def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(SweepConfig, args=argv, prog="eval.py sweep")
    try:
        result = sweep(cfg)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if result["failures"]:
        raise SystemExit(f"error: {len(result['failures'])} job(s) failed; logs in {cfg.out / 'jobs'}; rerun the same command to retry them")
    return result
