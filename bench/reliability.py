"""Reliability table: faults injected, faults survived, bytes lost; and memory over a long training run.

    python -m bench.reliability --out bench/results/reliability.json

Faults (each trial is independent and seeded):
- append-kill: a process appends episodes to a zarr store forever; SIGKILL after a random delay; the store is
  reopened for appending. Survived = it validates, and every episode seen committed before is intact.
  Bytes lost = bytes of episodes that were committed before the kill and are gone or differ after it.
- checkpoint-kill: `train.py tiny --save-every 1` killed at a random moment. Survived = checkpoints/last
  loads and `--resume` trains on. Bytes lost = bytes of complete (renamed) checkpoints that no longer load.
- sweep-kill: `eval.py sweep` killed once a job finished. Survived = the rerun skips finished jobs and the
  aggregate equals a clean sweep's. Bytes lost = bytes of finished job files that were redone or damaged.
- zarr-flip / safetensors-flip: one random byte of a random chunk / checkpoint file XORed with a random
  non-zero value. Survived = reading fails loudly (StoreError / CheckpointError) or returns exactly the
  original values. "Garbage" = different values returned without an error.
- memory: RSS of a training process sampled every `rss_every` steps over `memory_steps` steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from bench.common import print_table, write_results

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}

APPENDER = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
import numpy as np
from data.store import EpisodeStore
def episode(k):
    rng = np.random.default_rng(k)
    T = 5 + k % 7
    return {{"state": rng.normal(size=(T, 39)).astype(np.float32), "action": np.full((T, 4), k, np.float32),
            "image_cam": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8)}}
path = Path({path!r})
store = EpisodeStore.open(path, "a") if path.exists() else EpisodeStore.create(path, env_id="metaworld/push-v3", fps=80, source="bench")
print("ready", flush=True)
while True:
    store.append_episode(episode(store.n_episodes))
"""


@dataclass(frozen=True)
class Args:
    append_kills: int = 30
    checkpoint_kills: int = 8
    sweep_kills: int = 3
    flips: int = 50
    memory_steps: int = 1500
    rss_every: int = 50
    runs: Path = Path("bench_runs/reliability")
    out: Path | None = None


def episode_bytes(store, k: int) -> int:
    return sum(v.nbytes for v in store.get_episode(k).values())


def append_kills(args: Args, rng: np.random.Generator) -> dict:
    from data.store import EpisodeStore

    path = args.runs / "append.zarr"
    shutil.rmtree(path, ignore_errors=True)
    seen: dict[int, dict[str, np.ndarray]] = {}
    survived = lost = mid_append = 0
    for _ in range(args.append_kills):
        proc = subprocess.Popen([sys.executable, "-c", APPENDER.format(root=str(ROOT), path=str(path))], stdout=subprocess.PIPE, text=True, env=ENV)
        proc.stdout.readline()
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid_append += bool(EpisodeStore.open(path).validate())
        store = EpisodeStore.open(path, "a")
        ok = store.validate() == []
        for k, want in seen.items():
            got = store.get_episode(k) if k < store.n_episodes else None
            if got is None or any(not np.array_equal(got[key], want[key]) for key in want):
                ok = False
                lost += sum(v.nbytes for v in want.values())
        survived += ok
        seen = {k: store.get_episode(k) for k in range(store.n_episodes)}
    return {"fault": "kill -9 during dataset append", "injected": args.append_kills, "survived": survived, "bytes_lost": lost,
            "note": f"{mid_append} kills landed inside an append; {len(seen)} episodes committed in all"}


def push_demos(args: Args) -> Path:
    path = args.runs / "push2.zarr"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "data.collect", "--env", "metaworld/push-v3", "--episodes", "2", "--out", str(path)], cwd=ROOT, env=ENV, check=True, capture_output=True)
    return path


def checkpoint_kills(args: Args, rng: np.random.Generator) -> dict:
    from policies.base import Policy

    run_dir = args.runs / "ckpt-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "train.py", "tiny", "--env", "metaworld/push-v3", "--dataset", str(push_demos(args)), "--run-dir", str(run_dir),
           "--steps", "1000000", "--save-every", "1", "--eval-episodes", "0"]
    survived = lost = 0
    complete: dict[str, int] = {}  # checkpoint name -> bytes, for every checkpoint seen complete before a kill
    for trial in range(args.checkpoint_kills):
        proc = subprocess.Popen(cmd + (["--resume"] if trial else []), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = run_dir / "checkpoints" / "last"
        before = last.resolve().name if last.exists() else None
        while not last.exists() or last.resolve().name == before:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ok = True
        try:
            Policy.from_pretrained(last.resolve())
        except Exception:
            ok = False
        for name, size in complete.items():
            try:
                Policy.from_pretrained(run_dir / "checkpoints" / name)
            except Exception:
                lost += size
                ok = False
        for ckpt in (run_dir / "checkpoints").glob("step_*"):
            complete[ckpt.name] = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        survived += ok
    resumed = subprocess.run(cmd + ["--resume", "--stop-at", str(int(last.resolve().name[5:]) + 2)], cwd=ROOT, env=ENV, capture_output=True)
    return {"fault": "kill -9 during training / checkpoint save", "injected": args.checkpoint_kills, "survived": survived if resumed.returncode == 0 else 0,
            "bytes_lost": lost, "note": f"final --resume exit {resumed.returncode}; {len(complete)} checkpoints checked after every kill"}


def sweep_kills(args: Args) -> dict:
    run_dir = args.runs / "sweep-ckpt"
    if not (run_dir / "checkpoints" / "last").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        subprocess.run([sys.executable, "train.py", "tiny", "--env", "metaworld/push-v3", "--dataset", str(push_demos(args)), "--run-dir", str(run_dir), "--eval-episodes", "0"],
                       cwd=ROOT, env=ENV, check=True, capture_output=True)

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "eval.py", "sweep", "--checkpoints", str(run_dir), "--tasks", "metaworld/push-v3", "metaworld/reach-v3", "--seeds", "0", "1", "2",
                "--episodes", "2", "--max-episode-steps", "20", "--workers", "1", "--out", str(out)]

    clean = args.runs / "sweep-clean"
    shutil.rmtree(clean, ignore_errors=True)
    subprocess.run(cmd(clean), cwd=ROOT, env=ENV, check=True, capture_output=True)
    survived = lost = 0
    for trial in range(args.sweep_kills):
        out = args.runs / f"sweep-killed-{trial}"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(cmd(out), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(list((out / "jobs").glob("*.json")) if (out / "jobs").exists() else []) < trial + 1:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (out / "jobs").glob("*.json")}
        rerun = subprocess.run(cmd(out), cwd=ROOT, env=ENV, capture_output=True)
        redone = sum(size for p, (mtime, size) in done.items() if p.stat().st_mtime_ns != mtime)
        same = rerun.returncode == 0 and json.loads((out / "sweep.json").read_text())["summary"] == json.loads((clean / "sweep.json").read_text())["summary"]
        survived += same and redone == 0
        lost += redone
    return {"fault": "kill -9 during an evaluation sweep", "injected": args.sweep_kills, "survived": survived, "bytes_lost": lost,
            "note": "6 jobs per sweep; killed after 1..n jobs finished"}


def flip_trials(n: int, rng: np.random.Generator, source: Path, scratch: Path, target_of, read, same, errors: tuple[type[Exception], ...]) -> tuple[int, int, int]:
    """Copy `source` to `scratch`, XOR one random byte of `target_of(copy, trial)`, `read` it back.
    Returns (detected: read raised one of `errors`, identical: `same(result)`, garbage: neither)."""
    detected = identical = garbage = 0
    for trial in range(n):
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(source, scratch)
        target = target_of(scratch, trial)
        raw = bytearray(target.read_bytes())
        raw[rng.integers(len(raw))] ^= int(rng.integers(1, 256))
        target.write_bytes(bytes(raw))
        try:
            result = read(scratch)
        except errors:
            detected += 1
            continue
        identical += same(result)
        garbage += not same(result)
    return detected, identical, garbage


def zarr_flips(args: Args, rng: np.random.Generator) -> dict:
    from data.store import EpisodeStore, StoreError

    src = push_demos(args)
    reference = EpisodeStore.open(src).load()

    def read(path: Path) -> dict:
        store = EpisodeStore.open(path)
        store.check()
        return store.load()

    def chunk(path: Path, trial: int) -> Path:
        chunks = sorted(p for p in (path / "data").rglob("c/**/*") if p.is_file())
        return chunks[rng.integers(len(chunks))]

    detected, identical, garbage = flip_trials(
        args.flips, rng, src, args.runs / "flip.zarr", chunk, read, lambda data: all(np.array_equal(data[k], reference[k]) for k in reference), (StoreError, OSError)
    )
    return {"fault": "flipped byte in a zarr data chunk", "injected": args.flips, "survived": detected + identical, "bytes_lost": 0,
            "note": f"{detected} detected, {identical} read back identical, {garbage} returned garbage"}


def safetensors_flips(args: Args, rng: np.random.Generator) -> dict:
    import torch

    from core.io import CheckpointError
    from policies.base import Policy

    ckpt = (args.runs / "sweep-ckpt" / "checkpoints" / "last").resolve()
    reference = Policy.from_pretrained(ckpt).state_dict()
    detected, identical, garbage = flip_trials(
        args.flips, rng, ckpt, args.runs / "flip-ckpt", lambda path, trial: path / ("model.safetensors" if trial % 2 == 0 else "normalizer.safetensors"),
        lambda path: Policy.from_pretrained(path).state_dict(), lambda loaded: all(torch.equal(loaded[k], reference[k]) for k in reference),
        (CheckpointError, ValueError, RuntimeError),
    )
    return {"fault": "flipped byte in a checkpoint safetensors file", "injected": args.flips, "survived": detected + identical, "bytes_lost": 0,
            "note": f"{detected} detected, {identical} loaded identical, {garbage} loaded garbage"}


def memory_over_training(args: Args) -> dict:
    """Train in this process while a thread samples VmRSS; the slope after warm-up says whether memory grows."""
    import train

    run_dir = args.runs / "memory-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mb()))
            time.sleep(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    train.main(["default", "--env", "metaworld/push-v3", "--dataset", str(push_demos(args)), "--run-dir", str(run_dir), "--steps", str(args.memory_steps),
                "--batch-size", "64", "--save-every", "250", "--log-every", "50", "--eval-episodes", "0", "--num-threads", "1"])
    stop.set()
    thread.join()
    t = np.array([s[0] - start for s in samples])
    rss = np.array([s[1] for s in samples])
    later = t > t[-1] * 0.2  # after start-up and the first checkpoint
    slope = float(np.polyfit(t[later], rss[later], 1)[0]) if later.sum() > 2 else float("nan")
    steps_per_s = args.memory_steps / (t[-1] - t[0])
    return {"fault": "long training run (memory)", "steps": args.memory_steps, "rss_start_mb": float(rss[later][0]), "rss_end_mb": float(rss[-1]),
            "rss_max_mb": float(rss.max()), "growth_mb_per_1000_steps": slope / steps_per_s * 1000, "samples": len(samples)}


def main() -> None:
    args = tyro.cli(Args)
    args.runs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = [append_kills(args, rng), checkpoint_kills(args, rng), sweep_kills(args), zarr_flips(args, rng), safetensors_flips(args, rng)]
    print_table(rows, ["fault", "injected", "survived", "bytes_lost", "note"])
    memory = memory_over_training(args)
    print(json.dumps(memory, indent=1))
    write_results(
        args.out, "reliability",
        "faults injected on purpose (see bench/reliability.py docstring); survived = loud failure or exact data, never garbage; "
        "bytes lost = committed data gone or changed after the fault",
        rows + [memory],
    )


if __name__ == "__main__":
    main()
