"""Shared pieces of the bench scripts: machine description, the JSON output convention, run dirs named by their
training config, and training / evaluation measured in CPU-minutes (over every attempt) and cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.io import atomic_write_json, config_to_dict

if TYPE_CHECKING:
    from policies.training import TrainConfig


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
    """User + sys CPU time of this process, all threads, plus its finished child processes (image loader workers,
    evaluation env workers: their simulation and rendering)."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


# ---- CPU over interrupted attempts -------------------------------------------------------------------


def read_cpu_record(path: Path) -> dict[str, Any]:
    """The CPU record `cpu_attempt` keeps in `path`: {"cpu_s", "attempts", "finished"}; zeros when absent."""
    if not path.exists():
        return {"cpu_s": 0.0, "attempts": 0, "finished": False}
    return json.loads(path.read_text())


@contextmanager
def cpu_attempt(path: Path, flush_every_s: float = 30.0) -> Iterator[dict[str, Any]]:
    """Count this attempt's CPU seconds on top of those of the earlier attempts recorded in `path`.

    The record is rewritten atomically every `flush_every_s` seconds and when the block ends, however it ends, so
    the CPU of an interrupted attempt still counts after a resume (a kill -9 loses at most `flush_every_s`).
    Set `record["finished"] = True` inside the block once the work is done."""
    earlier = read_cpu_record(path)
    record = {"cpu_s": earlier["cpu_s"], "attempts": earlier["attempts"] + 1, "finished": False}
    start = cpu_seconds()

    def flush() -> None:
        cpu_s = earlier["cpu_s"] + cpu_seconds() - start
        record.update(cpu_s=cpu_s, cpu_minutes=cpu_s / 60)
        atomic_write_json(path, dict(record))  # a copy: the caller may set "finished" meanwhile

    stop = threading.Event()

    def flush_periodically() -> None:
        while not stop.wait(flush_every_s):
            flush()

    flusher = threading.Thread(target=flush_periodically, name=f"cpu-record-{path.name}", daemon=True)
    flush()  # the attempt is on record from its start
    flusher.start()
    try:
        yield record
    finally:
        stop.set()
        flusher.join()
        flush()


# ---- run dirs named by their training config ---------------------------------------------------------


def _computed_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a TrainConfig (as JSON) that define what the run computes: all but its run dir and the
    fields that may change on resume (policies.training.RESUMABLE_CHANGES: device, threads, eval and log cadence)."""
    from policies.training import RESUMABLE_CHANGES

    return {k: v for k, v in config.items() if k != "run_dir" and k not in RESUMABLE_CHANGES}


def _run_config(cfg: TrainConfig) -> dict[str, Any]:
    """`cfg` as train() records it in train_config.json (with the env's state keys filled in)."""
    from policies.training import with_env_state_keys

    return config_to_dict(with_env_state_keys(cfg))


def _hash_json(obj: Any, n_hex: int = 10) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n_hex]


def config_hash(cfg: TrainConfig) -> str:
    """10 hex chars of the sha256 of the canonical JSON of everything in a TrainConfig that defines the run."""
    return _hash_json(_computed_fields(_run_config(cfg)))


def with_run_dir(cfg: TrainConfig, parent: Path, name: str) -> TrainConfig:
    """`cfg` training in parent/<name>-<config_hash(cfg)>: a changed config starts a fresh run, an unchanged one
    resumes (or reuses) its own."""
    return dataclasses.replace(cfg, run_dir=parent / f"{name}-{config_hash(cfg)}")


# ---- training and evaluation, measured and cached ----------------------------------------------------


def train_cpu_record(run_dir: Path) -> Path:
    """Where `train_measured` keeps a run's CPU record: beside the run dir, since train() wants a fresh run dir empty."""
    return run_dir.parent / f"{run_dir.name}.train_cpu.json"


def train_measured(cfg: TrainConfig) -> float:
    """`policies.training.train(cfg)` once per run dir (resumed if interrupted, skipped when done); returns its training
    CPU-minutes summed over every attempt (user + sys of this process and its finished children / 60), recorded in
    <run_dir>.train_cpu.json as training goes.

    Pass `eval_episodes=0` so the number is training alone; evaluate with `evaluate_checkpoint`. A run dir holding
    a run of another config is refused (name run dirs with `with_run_dir`)."""
    from policies.training import train

    saved_config = cfg.run_dir / "train_config.json"
    if saved_config.exists() and _computed_fields(json.loads(saved_config.read_text())) != _computed_fields(_run_config(cfg)):
        raise SystemExit(f"error: {cfg.run_dir} holds a run of another training config ({saved_config}); name run dirs with bench.common.with_run_dir")
    record_path = train_cpu_record(cfg.run_dir)
    if not read_cpu_record(record_path)["finished"]:
        with cpu_attempt(record_path) as record:
            summary = train(dataclasses.replace(cfg, resume=saved_config.exists()))
            record["finished"] = summary["steps"] == cfg.steps  # not when stopped early (stop_at)
    return read_cpu_record(record_path)["cpu_s"] / 60


def evaluate_checkpoint(
    run_dir: Path, env: str, episodes: int, sampler: tuple[str, int] | None = None, n_envs: int = 10,
    max_episode_steps: int | None = None, seed_start: int = 100_000,
) -> dict:
    """Evaluate the run's last checkpoint (as eval.py: compiled sampling, seeds `seed_start`+), optionally with another
    sampler. Adds `eval_cpu_s` (every attempt, env workers' simulation and rendering included) and the cache `key`.

    Cached in <run_dir>/eval_<sampler>-<hash of the key>.json, keyed by everything that defines the result: the
    policy's fingerprint (weights, normalizer, config), env, episodes, episode step limit, first seed, sampler and
    parallel envs (each wave of n_envs episodes seeds the sampling noise). A result is reused only for the same key."""
    from envs.make import env_properties
    from envs.rollout import evaluate
    from policies import Policy
    from policies.diffusion.compile import compile_sampling

    checkpoint = (run_dir / "checkpoints" / "last").resolve()
    policy = Policy.from_pretrained(checkpoint)
    key = {
        "checkpoint": checkpoint.name, "policy_fingerprint": policy.fingerprint(), "env": env, "episodes": episodes,
        "max_episode_steps": max_episode_steps or env_properties(env)["max_episode_steps"], "seed_start": seed_start,
        "sampler": list(sampler) if sampler else None, "n_envs": max(1, min(n_envs, episodes)), "compiled_sampling": True,
    }
    tag = f"{sampler[0]}{sampler[1]}" if sampler else "final"
    path = run_dir / f"eval_{tag}-{_hash_json(key)}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    with cpu_attempt(path.with_name(f"{path.stem}.cpu.json")) as record:
        if sampler is not None:
            policy.set_sampler(*sampler)
        compile_sampling(policy)
        result = evaluate(policy, env, episodes, seed_start=seed_start, n_envs=n_envs, max_episode_steps=key["max_episode_steps"], progress=False)
        record["finished"] = True
    atomic_write_json(path, {**result.to_dict(), "eval_cpu_s": record["cpu_s"], "key": key})
    return json.loads(path.read_text())


def cpu_minutes(train_min: float, ev: dict, ndigits: int = 2) -> dict[str, float]:
    """A row's CPU fields: training (every attempt, `train_measured`), this evaluation (`evaluate_checkpoint`), their sum."""
    eval_min = ev["eval_cpu_s"] / 60
    return {"train_cpu_minutes": round(train_min, ndigits), "eval_cpu_minutes": round(eval_min, ndigits), "total_cpu_minutes": round(train_min + eval_min, ndigits)}
