"""Image observations: render speed, image-window sampling throughput, and RAM while streaming a large store.

    python -m bench.images --out bench/results/images.json
    python -m bench.images --parts render --out /tmp/render.json

Parts:
- render: env steps/s with and without cameras (Meta-World corner2, robosuite agentview) at 84 and 96 px;
  frames/s = cameras * steps/s with cameras. One process, one thread.
- memory: writes a store holding `store_gb` GB of raw 84x84 frames (real rendered frames, shifted so chunks
  differ), then in a fresh process opens it the way train.py does (lazy frames), samples `batches` windows
  of batch 64 x 2 steps, and reports that process's peak RSS.
- sampling: on the same store, windows/s through the training loader with 0 and 2 worker processes, against
  the image DP's training speed at the same batch (forward + backward on CPU): the ratio says whether training
  waits for data.
- level2: image DP training speed (84x84 camera + proprio, forward + backward + AdamW step, 2 threads, child
  process) for camera trunk (ResNet-18 or `conv`) x denoiser x level2_samples: windows/s (observations encoded per second) and denoiser samples/s
  (windows x level2_samples). With level-2 minibatching a step encodes batch/M windows and pairs each with M
  noised chunks, so the vision encoder runs M times less per denoiser sample.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from bench.common import print_table, write_results


@dataclass(frozen=True)
class Args:
    parts: tuple[str, ...] = ("render", "memory", "sampling", "level2")
    """Which measurements to run."""
    store: Path = Path("bench_runs/images/big.zarr")
    """Where the large synthetic image store goes (reused when it exists with the right size)."""
    store_gb: float = 5.0
    """Raw (uncompressed) image bytes in the large store."""
    batches: int = 100
    """Batches sampled in the memory and sampling parts."""
    batch_size: int = 64
    """Windows per batch."""
    out: Path | None = None
    """JSON output."""


def render_rows() -> list[dict]:
    from envs.make import make_env

    rows = []
    for env_name, camera in (("metaworld/sweep-into-v3", "corner2"), ("robosuite/Lift", "agentview")):
        for size in (None, 84, 96):
            env = make_env(env_name, **({"cameras": (camera,), "image_size": size} if size else {}))
            env.reset(seed=0)
            steps = 0
            start = time.perf_counter()
            while time.perf_counter() - start < 5.0:
                _, _, _, truncated, _ = env.step(env.action_space.sample() * 0.1)
                steps += 1
                if truncated:
                    env.reset(seed=steps)
            rate = steps / (time.perf_counter() - start)
            env.close()
            rows.append({"part": "render", "env": env_name, "camera": camera if size else "none", "size": size, "env_steps_per_s": rate, "frames_per_s": rate if size else None})
    no_cam = {r["env"]: r["env_steps_per_s"] for r in rows if r["size"] is None}
    for r in rows:  # time per frame = time per step with the camera minus time per step without
        if r["size"]:
            r["render_ms_per_frame"] = 1000 * (1 / r["env_steps_per_s"] - 1 / no_cam[r["env"]])
    return rows


def build_store(path: Path, gigabytes: float) -> dict:
    """A store with `gigabytes` of raw 84x84x3 frames: 500-step episodes of real corner2 renders, each
    frame rolled by a different offset so no two chunks are identical."""
    from data.store import EpisodeStore
    from envs.make import make_env

    frame_bytes = 84 * 84 * 3
    episode_len = 500
    n_frames = int(gigabytes * 1e9 // frame_bytes) // episode_len * episode_len  # whole episodes
    if path.exists():
        store = EpisodeStore.open(path)
        if store.n_steps >= n_frames:
            return {"frames": store.n_steps, "written_s": None}
        shutil.rmtree(path)
    env = make_env("metaworld/sweep-into-v3", cameras=("corner2",), image_size=84)
    obs, _ = env.reset(seed=0)
    base = []
    for t in range(episode_len):
        obs, *_ = env.step(env.action_space.sample())
        base.append(obs["image_corner2"])
    env.close()
    base = np.stack(base)
    start = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    store = EpisodeStore.create(tmp, env_id="metaworld/sweep-into-v3", fps=80, source="bench.images synthetic")
    rng = np.random.default_rng(0)
    for e in range(n_frames // episode_len):
        images = np.roll(base, shift=e % 84, axis=2)
        store.append_episode({"image_corner2": images, "proprio": rng.normal(size=(episode_len, 4)).astype(np.float32), "action": rng.uniform(-1, 1, (episode_len, 4)).astype(np.float32)})
    os.rename(tmp, path)
    return {"frames": n_frames, "written_s": time.perf_counter() - start}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stream_and_measure(store: str, batches: int, batch_size: int, workers: int) -> dict:
    """Run in a fresh process: open the store as train.py does, sample, report peak RSS and windows/s."""
    from data.training import load_training_data
    from data.loader import step_batch_loader
    from data.sampler import WindowSampler
    from policies import DiffusionConfig
    from policies.base import window_offsets

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = DiffusionConfig(state_keys=("proprio",), image_keys=("image_corner2",))
    st, arrays, cfg = load_training_data(Path(store), cfg)
    sampler = WindowSampler(arrays, st.episode_ends, window_offsets(cfg))
    batches_iter = step_batch_loader(sampler, batch_size, 0, 0, batches + 1, workers, pin_memory=False)
    next(batches_iter)  # workers started, first batch ready
    start = time.perf_counter()
    pixels = 0
    for _ in range(batches):
        batch = next(batches_iter)
        pixels += int(batch["image_corner2"].numel())
    elapsed = time.perf_counter() - start
    return {
        "workers": workers,
        "windows_per_s": batches * batch_size / elapsed,
        "batches_per_s": batches / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_open_mb": rss_start / 1024,
        "store_steps": st.n_steps,
    }


LEVEL2_VARIANTS = {  # name -> (DiffusionConfig overrides, windows per batch); every row trains 64 denoiser samples per step
    "unet M=1": ({}, 64),
    "mlp-flow M=1": ({"backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3}, 64),
    "mlp-flow M=4": ({"backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3, "level2_samples": 4}, 16),
    "mlp-flow M=8": ({"backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3, "level2_samples": 8}, 8),
    "conv mlp-flow M=1": ({"vision_encoder": "conv", "backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3}, 64),
    "conv mlp-flow M=4": ({"vision_encoder": "conv", "backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3, "level2_samples": 4}, 16),
}


def image_dp_train_rate(batch_size: int, overrides: dict | None = None) -> float:
    """Training windows/s of the image DP (84x84, crop 76, 2 obs steps) on this CPU, forward + backward + step."""
    from dataclasses import replace

    from data.normalize import Normalizer
    from policies import DiffusionConfig, make_policy

    cfg = DiffusionConfig(state_keys=("proprio",), state_dims=(4,), action_dim=4, image_keys=("image_corner2",), image_shape=(84, 84, 3))
    cfg = replace(cfg, **(overrides or {}))
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"proprio": rng.normal(size=(100, 4)), "action": rng.uniform(-1, 1, (100, 4))}, cfg.normalization_modes())
    policy = make_policy(cfg, normalizer)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    batch = {
        "image_corner2": torch.randint(0, 256, (batch_size, 2, 84, 84, 3), dtype=torch.uint8),
        "proprio": torch.randn(batch_size, 2, 4),
        "action": torch.rand(batch_size, cfg.horizon, 4) * 2 - 1,
        "action_is_pad": torch.zeros(batch_size, cfg.horizon, dtype=torch.bool),
    }
    times = []
    for _ in range(4):
        start = time.perf_counter()
        loss, _ = policy(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch_size / float(np.median(times[1:]))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":  # python -m bench.images --child '<json args>'
        print(json.dumps(stream_and_measure(**json.loads(sys.argv[2]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child-render":
        torch.set_num_threads(1)
        print(json.dumps(render_rows()))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--child-train":
        torch.set_num_threads(1)
        print(json.dumps(image_dp_train_rate(int(sys.argv[2]))))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--child-level2":
        torch.set_num_threads(2)
        overrides, windows = LEVEL2_VARIANTS[sys.argv[2]]
        print(json.dumps(image_dp_train_rate(windows, overrides)))
        return
    args = tyro.cli(Args)
    torch.set_num_threads(1)
    rows: list[dict] = []
    if "render" in args.parts:
        # in a child process: an EGL context left in this one crashed a later torch step (segfault in Mesa's libLLVM)
        proc = subprocess.run([sys.executable, "-m", "bench.images", "--child-render"], capture_output=True, text=True, check=True)
        rows += json.loads(proc.stdout.strip().splitlines()[-1])
        print_table([r for r in rows if r["part"] == "render"], ["env", "camera", "size", "env_steps_per_s", "render_ms_per_frame"])
    if "memory" in args.parts or "sampling" in args.parts:
        built = build_store(args.store, args.store_gb)
        disk_gb = du(args.store) / 1e9
        raw_gb = built["frames"] * 84 * 84 * 3 / 1e9
        print(f"store {args.store}: {built['frames']} frames, {raw_gb:.2f} GB raw, {disk_gb:.2f} GB on disk")
        for workers in ((0, 2) if "sampling" in args.parts else (0,)):
            payload = json.dumps({"store": str(args.store), "batches": args.batches, "batch_size": args.batch_size, "workers": workers})
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, "-m", "bench.images", "--child", payload], capture_output=True, text=True, env=env, check=True)
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"part": "stream", "store_raw_gb": raw_gb, "store_disk_gb": disk_gb, "frames": built["frames"], "store_write_s": built["written_s"], "batch_size": args.batch_size, **measured})
        print_table([r for r in rows if r["part"] == "stream"], ["workers", "store_raw_gb", "store_disk_gb", "windows_per_s", "peak_rss_mb"])
        if "sampling" in args.parts:
            # in a child process too: this one rendered the store's frames through EGL (see render above)
            proc = subprocess.run([sys.executable, "-m", "bench.images", "--child-train", str(args.batch_size)], capture_output=True, text=True, check=True)
            train_rate = json.loads(proc.stdout.strip().splitlines()[-1])
            loader = max(r["windows_per_s"] for r in rows if r["part"] == "stream")
            rows.append({"part": "train_vs_data", "batch_size": args.batch_size, "train_windows_per_s": train_rate, "loader_windows_per_s": loader, "loader_over_train": loader / train_rate})
            print(f"image DP trains {train_rate:.1f} windows/s on this CPU; the loader delivers {loader:.0f} windows/s ({loader / train_rate:.0f}x)")
    if "level2" in args.parts:
        for name, (overrides, windows) in LEVEL2_VARIANTS.items():
            proc = subprocess.run([sys.executable, "-m", "bench.images", "--child-level2", name], capture_output=True, text=True, check=True)
            rate = json.loads(proc.stdout.strip().splitlines()[-1])
            m = overrides.get("level2_samples", 1)
            rows.append({"part": "level2", "variant": name, "windows_per_step": windows, "level2_samples": m, "windows_per_s": rate, "denoiser_samples_per_s": rate * m, "metric": "train_samples_per_s"})
        print_table([r for r in rows if r["part"] == "level2"], ["variant", "windows_per_step", "level2_samples", "windows_per_s", "denoiser_samples_per_s"])
    write_results(
        args.out, "images",
        "render: env steps/s for 5 s, 1 thread, sweep-into-v3 corner2 / robosuite Lift agentview; stream: fresh process, "
        "train.py's lazy store loading, batch 64 windows of 2 frames at 84x84 via data.loader.step_batch_loader; peak RSS = "
        "ru_maxrss of that process (its workers are separate processes); train: image DP default config, 84x84 crop 76, CPU",
        rows,
    )


if __name__ == "__main__":
    main()
