"""Point-cloud costs on the CPU: sampling, rendering, and the policy per chunk and per training step.

    python -m bench.pointcloud --out bench/results/pointcloud.json

Parts (each alternative timed interleaved in one process, medians over `repeats`; 1 torch thread for the
per-cloud parts, 2 for training):
- fps: farthest-point sampling of a real Meta-World cloud (every in-crop point of DP3's corner2 view of
  `task`, about 3-6 k points) down to 512: fpsample's bucket QuickFPS (our default), fpsample's exact FPS, and
  the vectorised torch loop.
- render: one `point_cloud` observation split into depth render, unprojection + crop, and sampling.
- chunk: batch-1 action chunk of a `pointcloud`-preset policy (encoder + 3 Euler steps), eager and compiled
  (TorchScript sampling loop), and the same for each point encoder variant; target <= 5 ms p50.
- train: CPU-ms per training step (process CPU time), the preset's batch of 16 x 4 noise draws and 64 x 1, per
  encoder variant (what bounds success per CPU-minute).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

import policies  # noqa: F401  (before any EGL context: importing torchvision's ops after one segfaulted in triton's import)
from bench.common import print_table, write_results


@dataclass(frozen=True)
class Args:
    task: str = "shelf-place-v3"
    repeats: int = 30
    encoders: tuple[str, ...] = ("64-128-256", "32-64-128")
    """Point-encoder widths to time (point_hidden_dims, dash-separated)."""
    out: Path | None = None


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def stats(name: str, part: str, times: list[float], **extra) -> dict:
    return {"part": part, "variant": name, "ms_p50": float(np.median(times)), "ms_p90": float(np.percentile(times, 90)), "n": len(times), **extra}


def cloud_parts(args: Args) -> list[dict]:
    import fpsample
    import mujoco

    from envs import metaworld
    from envs.make import make_env
    from envs.pointcloud import camera_intrinsics, farthest_point_sample, farthest_point_sample_torch, unproject

    env = make_env(f"metaworld/{args.task}", point_cloud=metaworld.POINT_CLOUD)
    env.reset(seed=0)
    renderer = env.unwrapped._points
    data = env.unwrapped._env.data
    points = renderer.points(data)
    n = metaworld.POINT_CLOUD.n_points
    start = int(np.random.default_rng(0).integers(len(points)))
    xyz = np.ascontiguousarray(points[:, :3])
    rows = [stats(k, "fps", v, points_in=len(points), points_out=n) for k, v in interleaved({
        "fpsample bucket QuickFPS (default)": lambda: farthest_point_sample(points, n),
        "fpsample exact FPS": lambda: fpsample.fps_sampling(xyz, n, start_idx=start),
        "torch loop (exact FPS)": lambda: farthest_point_sample_torch(points, n),
    }, args.repeats).items()]
    model, spec = renderer.model, renderer.spec
    cam = renderer._ids[0]
    r = renderer._renderer
    size = spec.image_size

    def depth() -> np.ndarray:
        r.update_scene(data, camera=cam)
        r.enable_depth_rendering()
        d = r.render()
        r.disable_depth_rendering()
        return d

    d = depth()
    focal, cx, cy = camera_intrinsics(model, cam, size, size)

    def crop() -> np.ndarray:
        xyz = unproject(d, focal, cx, cy, data.cam_xpos[cam], data.cam_xmat[cam].reshape(3, 3))
        return xyz[spec.crop.contains(xyz)]

    rows += [stats(k, "render", v, image_size=size) for k, v in interleaved({
        f"depth render {size}px": depth, "unproject + crop": crop, "fps to 512": lambda: farthest_point_sample(points, n),
        "whole observation (moved camera, render, crop, fps)": lambda: renderer.render(data),
    }, args.repeats).items()]
    env.close()
    return rows


def policy_variant(hidden: tuple[int, ...], batch: int, level2: int | None = None):
    """The `pointcloud` preset's policy (untrained) with `hidden` encoder widths, and a batch of `batch` windows."""
    from data.normalize import Normalizer
    from policies.base import make_policy
    from policies.training import PRESETS

    preset = PRESETS["pointcloud"][1].policy
    cfg = dataclasses.replace(preset, state_dims=(4,), action_dim=4, point_cloud_shape=(512, 3), point_hidden_dims=hidden,
                              point_cloud_cameras=("corner2",), point_cloud_image_size=128, point_cloud_crop=(0, 0, 0, 1, 1, 1),
                              level2_samples=preset.level2_samples if level2 is None else level2)
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"proprio": rng.normal(size=(100, 4)), "action": rng.uniform(-1, 1, (100, 4))}, cfg.normalization_modes())
    policy = make_policy(cfg, normalizer)
    obs = {"proprio": torch.randn(batch, cfg.n_obs_steps, 4), "point_cloud": torch.rand(batch, cfg.n_obs_steps, 512, 3)}
    return policy, obs, cfg


def chunk_parts(args: Args) -> list[dict]:
    from policies.diffusion.compile import compile_sampling

    torch.set_num_threads(1)
    fns, params = {}, {}
    for name in args.encoders:
        hidden = tuple(int(x) for x in name.split("-"))
        policy, obs, _ = policy_variant(hidden, 1)
        policy.eval()
        compiled, _, _ = policy_variant(hidden, 1)
        compiled.load_state_dict(policy.state_dict())
        compiled.eval()
        compile_sampling(compiled)
        fns[f"encoder {name}, eager"] = lambda p=policy, o=obs: p.predict_action_chunk(o)
        fns[f"encoder {name}, compiled"] = lambda p=compiled, o=obs: p.predict_action_chunk(o)
        params[name] = sum(p.numel() for p in policy.points.parameters())
    state, state_obs = state_reference()
    compile_sampling(state)
    fns["state `default` preset (reference, no encoder), compiled"] = lambda: state.predict_action_chunk(state_obs)
    params["state"] = 0
    with torch.no_grad():
        times = interleaved(fns, args.repeats * 3)
    return [stats(k, "chunk", v, threads=1, encoder_params=params.get(k.split(",")[0].removeprefix("encoder "), 0), target_ms=5.0) for k, v in times.items()]


def state_reference():
    """The `default` preset's policy on Meta-World's 39-D state + 12-D relative vectors, untrained."""
    from data.normalize import Normalizer
    from policies.base import make_policy
    from policies.training import PRESETS

    cfg = dataclasses.replace(PRESETS["default"][1].policy, state_keys=("state", "relative"), state_dims=(39, 12), action_dim=4)
    rng = np.random.default_rng(0)
    data = {"state": rng.normal(size=(100, 39)), "relative": rng.normal(size=(100, 12)), "action": rng.uniform(-1, 1, (100, 4))}
    policy = make_policy(cfg, Normalizer.fit(data, cfg.normalization_modes())).eval()
    return policy, {"state": torch.randn(1, cfg.n_obs_steps, 39), "relative": torch.randn(1, cfg.n_obs_steps, 12)}


def train_parts(args: Args) -> list[dict]:
    """CPU-ms per optimizer step (process CPU time, 2 threads): the preset (batch 16 x 4 noise draws) per encoder, and
    batch 64 x 1 for reference."""
    from policies.training import PRESETS

    torch.set_num_threads(2)
    preset = PRESETS["pointcloud"][1]
    fns = {}
    for name in args.encoders:
        hidden = tuple(int(x) for x in name.split("-"))
        for batch, level2 in ((preset.batch_size, preset.policy.level2_samples), (64, 1)):
            policy, obs, cfg = policy_variant(hidden, batch, level2)
            policy.train()
            optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
            batch_data = {**obs, "action": torch.rand(batch, cfg.horizon, 4) * 2 - 1, "action_is_pad": torch.zeros(batch, cfg.horizon, dtype=torch.bool)}

            def step(p=policy, opt=optimizer, b=batch_data) -> None:
                loss, _ = p(b)
                opt.zero_grad()
                loss.backward()
                opt.step()

            fns[f"encoder {name}, batch {batch} x {level2} noise draws"] = step
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(max(5, args.repeats // 3)):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(1000 * (time.process_time() - start))
    return [stats(k, "train", v, threads=2, unit="CPU-ms per step") for k, v in times.items()]


def main() -> None:
    args = tyro.cli(Args)
    rows = cloud_parts(args) + chunk_parts(args) + train_parts(args)
    print_table(rows, ["part", "variant", "ms_p50", "ms_p90", "n"])
    write_results(
        args.out, "pointcloud",
        f"Meta-World {args.task}, DP3's corner2 cloud (128 px depth, 512 points); medians of interleaved repeats in one process; "
        "fps/render/chunk on 1 torch thread, train on 2; nothing else running",
        rows,
    )


if __name__ == "__main__":
    main()
