"""Checkpoint directories that appear all at once: write into a temp dir, rename, then repoint `last`.

    run_dir/checkpoints/step_0001000/   a complete checkpoint (never modified after the rename)
    run_dir/checkpoints/last            symlink to the newest complete one

A process killed mid-save leaves only a `.tmp-*` directory, which the next save removes; `last` always
points at a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from core.io import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    load_safetensors,
    read_json,
)


def commit_checkpoint(ckpt_root: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)`, rename tmp_dir to ckpt_root/name, and point ckpt_root/last at it."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if final.exists():  # a crashed earlier attempt at the same step; the new one replaces it
        shutil.rmtree(final)
    os.rename(tmp, final)
    link_tmp = ckpt_root / f".last-{os.getpid()}"
    link_tmp.unlink(missing_ok=True)
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, ckpt_root / "last")
    for stale in ckpt_root.glob(".tmp-*"):  # leftovers of killed saves
        shutil.rmtree(stale, ignore_errors=True)
    return final


def last_checkpoint(run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last"
    return last.resolve() if last.exists() else None


def env_of_checkpoint(ckpt: Path) -> str | None:
    """The env a checkpoint was trained for, from the train_config.json of its run (or beside it), else None."""
    for candidate in (ckpt / "train_config.json", ckpt.parent.parent / "train_config.json"):
        if candidate.is_file():
            return read_json(candidate).get("env")
    return None


def save_rng_states(path: Path, numpy_rng: np.random.Generator, torch_states: list[torch.Tensor] | None = None) -> dict:
    """Torch RNG goes to a safetensors file; the numpy Generator state is returned for a JSON file.

    `torch_states`: every rank's torch RNG state in rank order (data-parallel runs); default this process's.
    """
    states = torch_states or [torch.get_rng_state()]
    atomic_save_safetensors(path, {_torch_rng_key(rank): state for rank, state in enumerate(states)})
    return numpy_rng.bit_generator.state


def load_rng_states(path: Path, numpy_rng: np.random.Generator, numpy_state: dict, rank: int = 0) -> None:
    tensors = load_safetensors(path)
    if _torch_rng_key(rank) not in tensors:
        raise CheckpointError(f"{path}: no torch RNG state for rank {rank}; the checkpoint was saved by {len(tensors)} process(es)")
    torch.set_rng_state(tensors[_torch_rng_key(rank)])
    numpy_rng.bit_generator.state = numpy_state


def _torch_rng_key(rank: int) -> str:
    return "torch" if rank == 0 else f"torch_rank{rank}"


def prepare_run_dir(run_dir: Path, config: dict, resume: bool, resumable_changes: set[str]) -> None:
    """A fresh run needs an empty dir (runs are never overwritten); --resume needs the same config.

    `resumable_changes`: fields that may differ on resume without changing what the run computes.
    """
    config_path = run_dir / "train_config.json"
    if resume:
        if not config_path.is_file():
            raise SystemExit(f"error: --resume but {run_dir} holds no run (no train_config.json)")
        saved = read_json(config_path)
        def same(old: object, new: object) -> bool:  # a field that became a list (e.g. dataset) matches its old scalar
            return old == new or (isinstance(new, list) and new == ([old] if old is not None else []))

        diff = {k: (saved.get(k), v) for k, v in config.items() if k not in resumable_changes and not same(saved.get(k), v)}
        if diff:
            detail = "; ".join(f"{k}: run has {a!r}, command line has {b!r}" for k, (a, b) in diff.items())
            raise SystemExit(f"error: --resume with a different config than {config_path}: {detail}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"error: run dir {run_dir} already exists; pass --resume to continue it or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_json(config_path, config)


def open_jsonl_log(path: Path, resume: bool, step_key: str, upto: int):
    """Append-mode log; on resume, lines logged after the checkpoint (step_key > upto) are dropped first."""
    if resume and path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)[step_key] <= upto]
        atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())
    return path.open("a")


def resolve_checkpoint(path: Path) -> Path:
    """A policy checkpoint dir (it has config.json), or a run dir (its checkpoints/last); anything else fails clearly."""
    if (path / "config.json").is_file():
        return path
    last = last_checkpoint(path)
    if last is not None:
        return last
    if path.is_dir() and (path / "checkpoints").is_dir():
        raise CheckpointError(f"{path}: run has no complete checkpoint (checkpoints/last is missing)")
    raise CheckpointError(f"{path}: not a checkpoint dir (no config.json) and not a run dir (no checkpoints/last)")
