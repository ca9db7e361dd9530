"""Deployment on loopback: round-trip latency, throughput under concurrent clients, success versus latency.

    python -m bench.deploy --out bench/results/deploy.json
    python -m bench.deploy --parts latency --episodes 20 --out /tmp/deploy.json

Parts:
- rtt: `python -m deploy.serve` in its own process; one `deploy.client.PolicyClient` sends `requests` one-step
  observations and times each reply (p50, p99). State policy: the Meta-World DP checkpoint below. Image policy:
  an image DP (84x84 camera + proprio, the architecture bench.camera_success trains) with untrained weights:
  inference time does not depend on the weight values.
- throughput: 1, 4 and 16 clients, each on its own connection sending requests back to back for `seconds`;
  replies/s over all clients, per-request p50/p99, and the mean batch the server formed.
- latency: `deploy.sim.evaluate_with_latency` on `task` with injected latency 0/50/100/200 ms, for the
  prefetching executor and the synchronous one (ask, hold, execute). 50 seeded episodes (seeds 100000+),
  success = Meta-World info["success"] at any step, episode limit 500 steps at 80 Hz (12.5 ms per tick).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from bench.common import print_table, write_results


@dataclass(frozen=True)
class Args:
    parts: tuple[str, ...] = ("rtt", "throughput", "latency")
    state_checkpoint: Path = Path("runs/button-press-topdown-v3-diffusion-seed0")
    """State DP run (the default job builds it: bash scripts/run_default.sh)."""
    task: str = "button-press-topdown-v3"
    requests: int = 200
    """Requests per RTT measurement."""
    seconds: float = 10.0
    """Duration of each throughput measurement."""
    episodes: int = 50
    latencies_ms: tuple[float, ...] = (0, 50, 100, 200)
    port: int = 8765
    server_threads: tuple[int, ...] = (1,)
    """torch threads of the server process (deploy.serve --num-threads); several values give one rtt row each."""
    runs: Path = Path("bench_runs/deploy")
    out: Path | None = None


def image_checkpoint(runs: Path) -> Path:
    from data.normalize import Normalizer
    from policies import DiffusionConfig, DiffusionPolicy

    path = runs / "image-dp-untrained"
    if not (path / "config.json").exists():
        cfg = DiffusionConfig(state_keys=("proprio",), state_dims=(9,), action_dim=7, image_keys=("image_agentview",), image_shape=(84, 84, 3))
        rng = np.random.default_rng(0)
        normalizer = Normalizer.fit({"proprio": rng.normal(size=(100, 9)), "action": rng.uniform(-1, 1, (100, 7))}, cfg.normalization_modes())
        torch.manual_seed(0)
        DiffusionPolicy(cfg, normalizer).save_pretrained(path)
    return path


class ServerProcess:
    def __init__(self, checkpoint: Path, port: int, env: str | None, threads: int = 1) -> None:
        cmd = [sys.executable, "-m", "deploy.serve", "--checkpoint", str(checkpoint), "--port", str(port), "--device", "cpu", "--num-threads", str(threads)]
        if env:
            cmd += ["--env", env, "--fps", "20"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.uri = f"ws://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.proc.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        raise RuntimeError("server did not become healthy in 120 s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def observation(metadata: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    obs = {}
    for key, spec in metadata["obs_spec"].items():
        if spec["dtype"] == "uint8":
            obs[key] = rng.integers(0, 256, size=spec["shape"], dtype=np.uint8)
        else:
            obs[key] = rng.normal(size=spec["shape"]).astype(np.float32)
    return obs


def rtt_row(name: str, uri: str, requests: int) -> dict:
    from deploy.client import PolicyClient

    rng = np.random.default_rng(0)
    with PolicyClient(uri) as client:
        obs = observation(client.metadata, rng)
        for _ in range(5):
            client.infer(obs)
        times, infer = [], []
        for _ in range(requests):
            start = time.perf_counter()
            reply = client.infer(obs)
            times.append(1000 * (time.perf_counter() - start))
            infer.append(reply["server_timing"]["infer_ms"])
        payload = len(json.dumps({k: v.tolist() for k, v in obs.items()}))
    return {
        "part": "rtt", "policy": name, "requests": requests, "rtt_ms_p50": float(np.percentile(times, 50)),
        "rtt_ms_p99": float(np.percentile(times, 99)), "infer_ms_p50": float(np.percentile(infer, 50)),
        "overhead_ms_p50": float(np.percentile(np.array(times) - np.array(infer), 50)), "obs_json_chars": payload,
    }


def throughput_row(name: str, uri: str, clients: int, seconds: float) -> dict:
    from deploy.client import PolicyClient

    times: list[float] = []
    batches: list[int] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        try:
            with PolicyClient(uri) as client:
                obs = observation(client.metadata, rng)
                client.infer(obs)
                stop = time.monotonic() + seconds
                while time.monotonic() < stop:
                    start = time.perf_counter()
                    reply = client.infer(obs)
                    with lock:
                        times.append(1000 * (time.perf_counter() - start))
                        batches.append(reply["server_timing"]["batch_size"])
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {
        "part": "throughput", "policy": name, "clients": clients, "replies_per_s": len(times) / elapsed,
        "rtt_ms_p50": float(np.percentile(times, 50)), "rtt_ms_p99": float(np.percentile(times, 99)),
        "mean_batch": statistics.fmean(batches), "errors": len(errors),
    }


def latency_rows(args: Args) -> list[dict]:
    from core.checkpoint import resolve_checkpoint
    from deploy.sim import evaluate_with_latency
    from policies.base import Policy

    policy = Policy.from_pretrained(resolve_checkpoint(args.state_checkpoint))
    rows = []
    for mode in ("prefetch", "sync"):
        for latency in args.latencies_ms:
            start = time.perf_counter()
            ev = evaluate_with_latency(policy, f"metaworld/{args.task}", args.episodes, latency, mode, progress=False)
            r = ev.result
            rows.append({
                "part": "latency", "executor": mode, "latency_ms": latency, "latency_ticks": ev.latency_ticks, "success_rate": r.success_rate,
                "ci95": list(r.ci95), "mean_length": r.mean_length, "hold_fraction": ev.hold_fraction, "wall_s": time.perf_counter() - start,
            })
            print(f"{mode} {latency:g} ms: {r.summary()}", flush=True)
    for row in rows:
        zero = next(r for r in rows if r["executor"] == row["executor"] and r["latency_ms"] == 0)
        row["success_drop_pts"] = round(100 * (zero["success_rate"] - row["success_rate"]), 1)
    return rows


def main() -> None:
    args = tyro.cli(Args)
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows: list[dict] = []
    policies = {"state DP": (args.state_checkpoint, None), "image DP 84px": (image_checkpoint(args.runs), "robosuite/Lift")}
    if "rtt" in args.parts or "throughput" in args.parts:
        for name, (checkpoint, env) in policies.items():
            for threads in args.server_threads:
                server = ServerProcess(checkpoint, args.port, env, threads)
                try:
                    if "rtt" in args.parts:
                        rows.append({**rtt_row(name, server.uri, args.requests if "state" in name else max(20, args.requests // 4)), "server_threads": threads})
                    if "throughput" in args.parts and threads == args.server_threads[0]:
                        for clients in (1, 4, 16):
                            rows.append(throughput_row(name, server.uri, clients, args.seconds))
                finally:
                    server.close()
        print_table([r for r in rows if r["part"] == "rtt"], ["policy", "server_threads", "requests", "rtt_ms_p50", "rtt_ms_p99", "infer_ms_p50", "overhead_ms_p50"])
        print_table([r for r in rows if r["part"] == "throughput"], ["policy", "clients", "replies_per_s", "rtt_ms_p50", "rtt_ms_p99", "mean_batch", "errors"])
    if "latency" in args.parts:
        rows += latency_rows(args)
        print_table([r for r in rows if r["part"] == "latency"], ["executor", "latency_ms", "latency_ticks", "success_rate", "ci95", "success_drop_pts", "hold_fraction", "mean_length"])
    write_results(
        args.out, "deploy",
        "loopback; server = python -m deploy.serve in its own process on CPU, clients = deploy.client.PolicyClient threads in this "
        f"process; rtt = send one-step observation to reply decoded; latency part: {args.episodes} episodes of metaworld/{args.task} "
        "(seeds 100000+), simulated clock at 80 Hz, injected observation-to-action latency, success = Meta-World info['success'] at any step",
        rows,
    )


if __name__ == "__main__":
    main()
