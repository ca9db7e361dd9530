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


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
