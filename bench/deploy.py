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
- soak: the server's RSS under hostile and under valid traffic (issue 33). A tiny state DP (39-D state,
  untrained: memory does not depend on the weights) served by `python -m deploy.serve` in its own process.
  Malformed: `storms` storms of `storm_messages` messages from 4 clients; one message in `large_every` is a
  20 MiB frame and one a 128 kB to 8 MB message (log-uniform size; a valid request with the array under an
  extra key, the array as a wrongly shaped state, a cut-off request, or garbage), the rest `malformed_messages`. Valid: `valid_rounds`
  rounds of `storm_messages` one-step requests from 4 clients. RSS (/proc/<pid>/status VmRSS) after each storm
  or round; the growth counted is from after the second to after the last. One row per server variant
  (`soak_variants`: `default`, `no-pin` = --no-pin-malloc, `16mb` = --max-message-mb 16, `today` = both).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import torch
import tyro

from bench.common import print_table, require_known, write_results


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
    storms: int = 8
    """Malformed storms per soak variant (the growth counts storms 3..storms)."""
    valid_rounds: int = 8
    """Valid-traffic rounds per soak variant."""
    storm_messages: int = 10_000
    """Messages per storm and requests per valid round, spread over 4 clients."""
    large_every: int = 50
    """One message in this many is a 20 MiB frame, and one an 8 MB array under an extra key."""
    soak_variants: tuple[str, ...] = ("default",)
    """Server settings to soak: default, no-pin, 16mb, today (no-pin and 16mb: the server before issue 33)."""
    runs: Path = Path("bench_runs/deploy")
    out: Path | None = None


SOAK_VARIANTS = {"default": (), "no-pin": ("--no-pin-malloc",), "16mb": ("--max-message-mb", "16"), "today": ("--no-pin-malloc", "--max-message-mb", "16")}
SOAK_TARGET_MB = {"malformed": 30.0, "valid": 5.0}


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


def soak_checkpoint(runs: Path) -> Path:
    """The `tiny` preset's DP on a 39-D state, untrained."""
    from dataclasses import replace

    from data.normalize import Normalizer
    from policies import DiffusionPolicy
    from policies.training import PRESETS

    path = runs / "tiny-state-dp-untrained"
    if not (path / "config.json").exists():
        cfg = replace(PRESETS["tiny"][1].policy, state_keys=("state",), state_dims=(39,), action_dim=4)
        rng = np.random.default_rng(0)
        normalizer = Normalizer.fit({"state": rng.normal(size=(100, 39)), "action": rng.uniform(-1, 1, (100, 4))}, cfg.normalization_modes())
        torch.manual_seed(0)
        DiffusionPolicy(cfg, normalizer).save_pretrained(path)
    return path


class ServerProcess:
    def __init__(self, checkpoint: Path, port: int, env: str | None, threads: int = 1, extra: tuple[str, ...] = ()) -> None:
        cmd = [sys.executable, "-m", "deploy.serve", "--checkpoint", str(checkpoint), "--port", str(port), "--device", "cpu", "--num-threads", str(threads), *extra]
        if env:
            cmd += ["--env", env, "--fps", "20"]
        # stderr to a file, not a pipe: nobody reads a pipe while the bench runs, and a full pipe blocks the
        # server's logging (and with it the event loop) after about 64 kB of log lines
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.uri = f"ws://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    self.log.seek(0)
                    raise RuntimeError(f"server exited: {self.log.read()[-2000:]}") from None
                time.sleep(0.5)
        raise RuntimeError("server did not become healthy in 120 s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for server pid {self.proc.pid}")


def malformed_messages(rng: random.Random, n: int, key: str = "state", dim: int = 39, steps: int = 2) -> Iterator[bytes | str]:
    """Wrong types, shapes, dtypes, missing keys, bad arrays, truncated frames and random bytes, for a policy
    that reads one float `key` of `dim` numbers over `steps` observation steps. None is a valid request."""
    from deploy import wire

    good = wire.pack({key: np.zeros(dim, np.float32)})
    itemsize = 4 * dim
    cases = [
        lambda: wire.pack({key: np.zeros(rng.choice([0, 1, dim - 1, dim + 1, 2 * dim]), np.float32)}),
        lambda: wire.pack({key: np.zeros((rng.choice([1, steps + 1, steps + 2]), dim), np.float32)}),
        lambda: wire.pack({key: np.zeros(dim, bool)}),
        lambda: wire.pack({key: np.full(dim, np.nan, np.float32)}),
        lambda: wire.pack({key[:-1] or "x": np.zeros(dim, np.float32)}),
        lambda: wire.pack({key: [0.0] * dim}),
        lambda: wire.pack({key: "zeros"}),
        lambda: wire.pack([1, 2, 3]),
        lambda: wire.pack({key: np.zeros(dim, np.float32), "noise_seed": -rng.randint(1, 9)}),
        lambda: msgpack.packb({key: {b"__ndarray__": True, b"data": b"\0" * rng.choice([0, 4, itemsize - 1, itemsize + 1, 2 * itemsize]), b"dtype": "<f4", b"shape": [dim]}}),
        lambda: msgpack.packb({key: {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": rng.choice(["|O", "<U2", "zz", 5]), b"shape": [2]}}),
        lambda: msgpack.packb({key: {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "<f4", b"shape": [-1]}}),
        lambda: good[: rng.randint(0, len(good) - 1)],
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))),
        lambda: "a text frame",
    ]
    for i in range(n):
        yield cases[i % len(cases)]()


def hostile_client(uri: str, n: int, large_every: int, seed: int) -> dict[str, int]:
    """Send `n` messages: malformed ones, 20 MiB frames and large ones of up to 8 MB (some valid, with an extra key).
    Counts the outcomes; a closed connection (the size limit) is reopened."""
    from websockets.exceptions import ConnectionClosed

    from deploy import wire
    from deploy.client import PolicyClient

    rng = random.Random(seed)
    malformed = malformed_messages(rng, n)
    huge = b"\0" * (20 * 2**20)

    def large() -> bytes:  # 128 kB to 8 MB (log-uniform), of one of four kinds
        floats = int(2 ** rng.uniform(15, 21))
        kind = rng.randrange(4)
        if kind == 0:  # a valid request with the array under a key nobody reads: answered
            return wire.pack({"state": np.zeros(39, np.float32), "junk": np.zeros(floats, np.float32)})
        if kind == 1:  # the array as the state itself: a wrong shape
            return wire.pack({"state": np.zeros(floats, np.float32)})
        if kind == 2:  # a large request cut short: not msgpack
            return wire.pack({"state": np.zeros(39, np.float32), "junk": np.zeros(floats, np.float32)})[: rng.randint(1, 4 * floats)]
        return bytes(rng.getrandbits(8) for _ in range(64)) + b"\0" * (4 * floats)  # garbage

    counts = {"error_reply": 0, "answered": 0, "closed": 0}
    client = PolicyClient(uri)
    try:
        for i in range(n):
            message = huge if i % large_every == 0 else large() if i % large_every == 1 else next(malformed)
            try:
                client._ws.send(message)
                frame = client._ws.recv(timeout=60)
                counts["answered" if isinstance(frame, bytes) else "error_reply"] += 1
            except (ConnectionClosed, OSError):
                counts["closed"] += 1
                client.close()
                client = PolicyClient(uri)
    finally:
        client.close()
    return counts


def valid_client(uri: str, n: int, seed: int) -> dict[str, int]:
    from deploy.client import PolicyClient

    rng = np.random.default_rng(seed)
    with PolicyClient(uri) as client:
        obs = observation(client.metadata, rng)
        for _ in range(n):
            client.infer(obs)
    return {"answered": n}


def soak_rows(args: Args) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    checkpoint = soak_checkpoint(args.runs)
    rows = []
    for variant in args.soak_variants:
        for traffic, rounds in (("malformed", args.storms), ("valid", args.valid_rounds)):
            server = ServerProcess(checkpoint, args.port, None, 1, SOAK_VARIANTS[variant])
            try:
                rss = [server.rss_mb()]
                totals: dict[str, int] = {}
                started = time.perf_counter()
                for r in range(rounds):
                    per_client = args.storm_messages // 4
                    with ThreadPoolExecutor(4) as pool:
                        if traffic == "malformed":
                            results = list(pool.map(lambda c: hostile_client(server.uri, per_client, args.large_every, 1000 * r + c), range(4)))
                        else:
                            results = list(pool.map(lambda c: valid_client(server.uri, per_client, c), range(4)))
                    for counts in results:
                        for k, v in counts.items():
                            totals[k] = totals.get(k, 0) + v
                    time.sleep(1.0)
                    rss.append(server.rss_mb())
                    print(f"soak {variant} {traffic} round {r + 1}/{rounds}: RSS {rss[-1]:.0f} MB {totals}", flush=True)
                alive = server.proc.poll() is None
            finally:
                server.close()
            growth = rss[-1] - rss[2] if len(rss) > 2 else float("nan")
            rows.append({
                "part": "soak", "variant": variant, "server_flags": " ".join(SOAK_VARIANTS[variant]) or "(defaults)", "traffic": traffic,
                "rounds": rounds, "messages_per_round": args.storm_messages, "messages_counted": (rounds - 2) * args.storm_messages,
                "rss_mb": [round(x, 1) for x in rss], "growth_after_second_mb": round(growth, 1), "target_mb": SOAK_TARGET_MB[traffic],
                "met": bool(growth < SOAK_TARGET_MB[traffic]), "outcomes": totals, "server_alive": alive, "wall_s": round(time.perf_counter() - started, 1),
            })
    return rows


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
    if "soak" in args.parts:
        require_known(args.soak_variants, SOAK_VARIANTS, "soak variant")
        rows += soak_rows(args)
        print_table([r for r in rows if r["part"] == "soak"], ["variant", "traffic", "messages_counted", "growth_after_second_mb", "target_mb", "met", "server_alive", "outcomes"])
    if "latency" in args.parts:
        rows += latency_rows(args)
        print_table([r for r in rows if r["part"] == "latency"], ["executor", "latency_ms", "latency_ticks", "success_rate", "ci95", "success_drop_pts", "hold_fraction", "mean_length"])
    write_results(
        args.out, "deploy",
        "loopback; server = python -m deploy.serve in its own process on CPU, clients = deploy.client.PolicyClient threads in this "
        f"process; rtt = send one-step observation to reply decoded; latency part: {args.episodes} episodes of metaworld/{args.task} "
        "(seeds 100000+), simulated clock at 80 Hz, injected observation-to-action latency, success = Meta-World info['success'] at any step; "
        "soak part: server RSS (VmRSS) after each storm of malformed messages / round of valid requests, growth from after the second to after the last",
        rows,
    )


if __name__ == "__main__":
    main()
