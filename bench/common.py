"""Shared pieces of the bench scripts: machine description and the JSON output convention."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from core.io import atomic_write_json


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu}, torch {torch.__version__}"


def write_results(out: Path | None, bench: str, protocol: str, results: list[dict[str, Any]], **extra: Any) -> dict:
    payload = {"bench": bench, "git": git_commit(), "machine": machine(), "protocol": protocol, "results": results, **extra}
    if out is not None:
        atomic_write_json(out, payload)
        print(f"wrote {out}")
    return payload


def require_known(names: tuple[str, ...] | list[str], known: Any, what: str) -> None:
    """Exit with a message listing the valid `what` when any of `names` is not in `known`."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown {what} {unknown}; valid: {list(known)}")


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        return
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return json.dumps(v) if isinstance(v, (list, tuple)) else str(v)


def cpu_seconds() -> float:
    """User + sys CPU time of this process, all threads, plus its finished child processes (image loader workers)."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def train_measured(cfg: Any) -> float:
    """`policies.training.train(cfg)` once per run dir (resumed if interrupted, skipped when done); returns its training
    CPU-minutes (user + sys of this process / 60), recorded in <run_dir>/train_cpu.json.

    Pass `eval_episodes=0` so the number is training alone; evaluate with `evaluate_checkpoint`."""
    from policies.training import train

    done = cfg.run_dir / "train_cpu.json"
    if not done.exists():
        import dataclasses

        cfg = dataclasses.replace(cfg, resume=(cfg.run_dir / "train_config.json").exists())
        start = cpu_seconds()
        train(cfg)
        atomic_write_json(done, {"train_cpu_minutes": (cpu_seconds() - start) / 60, "resumed": cfg.resume})
    return json.loads(done.read_text())["train_cpu_minutes"]


def evaluate_checkpoint(run_dir: Path, env: str, episodes: int, sampler: tuple[str, int] | None = None, n_envs: int = 10) -> dict:
    """Evaluate the run's last checkpoint (as eval.py: compiled sampling, seeds 100000+), optionally with another
    sampler; cached in <run_dir>/eval_<sampler>.json."""
    from envs.rollout import evaluate
    from policies import Policy
    from policies.diffusion.compile import compile_sampling

    path = run_dir / (f"eval_{sampler[0]}{sampler[1]}.json" if sampler else "eval_final.json")
    if not path.exists():
        policy = Policy.from_pretrained(run_dir / "checkpoints" / "last")
        if sampler is not None:
            policy.set_sampler(*sampler)
        compile_sampling(policy)
        result = evaluate(policy, env, episodes, seed_start=100_000, n_envs=n_envs, progress=False)
        atomic_write_json(path, result.to_dict())
    return json.loads(path.read_text())
