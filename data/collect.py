"""Collect scripted-expert demonstrations into a zarr episode store.

    python -m data.collect --env metaworld/push-v3 --episodes 50 --out demos/push.zarr
    python -m data.collect --env robosuite/Lift --episodes 50 --cameras agentview robot0_eye_in_hand --image-size 84 --out demos/lift.zarr
    python -m data.collect --env metaworld/basketball-v3 --episodes 10 --point-cloud --out demos/basketball_pc.zarr

Episode k uses env seed `seed_start + k`, so every demo is reproducible from its seed. Only successful
episodes are kept (the expert is run until success plus `post_success_steps`, or the step limit); failures
are dropped and counted. The store is written as `<out>.partial`, one committed append per episode, and renamed
to `<out>` at the end; a killed collection continues with `--resume`.
Every observation key the env produces is recorded (state, proprio, and image_<camera> uint8 (T, H, W, 3)
for each of --cameras, one compressed zarr chunk per frame; with --point-cloud, `point_cloud` float32
(T, N, 3 or 6), and the store's `point_cloud` attrs say how it was rendered). Episodes are appended one at a time, so
image demos never sit in RAM all at once.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from tqdm import tqdm

from data.store import EpisodeStore, replace_store
from envs.make import env_properties, make_env, split_env_name
from envs.pointcloud import spec_to_attrs


class CollectionError(RuntimeError):
    pass


@dataclass(frozen=True)
class CollectConfig:
    env: str = "metaworld/push-v3"
    """Environment, as <suite>/<task>."""
    episodes: int = 50
    """Successful episodes to keep."""
    out: Path = Path("demos/push.zarr")
    """Output zarr store (must not exist unless --overwrite)."""
    seed_start: int = 0
    """Seed of the first attempted episode; attempt k uses seed_start + k."""
    max_attempts: int | None = None
    """Give up after this many attempts (default: 2 * episodes + 10)."""
    post_success_steps: int = 10
    """Expert steps recorded after the first success, so demos show holding the goal."""
    max_episode_steps: int | None = None
    """Step limit per attempt (default: the env's)."""
    overwrite: bool = False
    """Replace an existing store at --out."""
    resume: bool = False
    """Continue the interrupted collection in <out>.partial (a killed run leaves it there)."""
    cameras: tuple[str, ...] = ()
    """Cameras to record as image_<camera> keys, e.g. corner2 (Meta-World) or agentview (robosuite)."""
    image_size: int = 84
    """Square image side in pixels for --cameras."""
    point_cloud: bool = False
    """Record `point_cloud` (N, 3 or 6) float32 with the suite's setup (envs/pointcloud.py; Meta-World: DP3's corner2, 512 points)."""
    point_cloud_cameras: tuple[str, ...] = ()
    """Cameras fused into the point cloud (default: the suite's)."""
    point_cloud_points: int | None = None
    """Points per cloud after farthest-point sampling (default: the suite's, 512)."""
    point_cloud_rgb: bool = False
    """Append RGB to each point: (N, 6)."""
    point_cloud_image_size: int | None = None
    """Depth-render side in pixels per camera (default: the suite's, 128)."""


@dataclass
class CollectReport:
    kept_seeds: list[int]
    dropped_seeds: list[int]

    def summary(self) -> str:
        attempts = len(self.kept_seeds) + len(self.dropped_seeds)
        return f"kept {len(self.kept_seeds)} successful episodes, dropped {len(self.dropped_seeds)} failed of {attempts} attempts"


def expert_for(env_name: str):
    suite, task = split_env_name(env_name)
    if suite == "metaworld":
        from envs.metaworld import BROKEN_EXPERTS, scripted_expert

        if task in BROKEN_EXPERTS:
            raise CollectionError(
                f"no usable scripted expert for {env_name}: {BROKEN_EXPERTS[task]}. "
                "Record demos another way (teleoperation, an importer) or pick another task."
            )
        expert = scripted_expert(task)
        return lambda env: expert.get_action(env.unwrapped.raw_obs)
    if suite == "robosuite":
        from envs.robosuite import scripted_expert

        expert = scripted_expert(task)

        def act(env):
            if env.unwrapped._steps == 0:
                expert.reset()
            return expert.get_action(env.unwrapped)

        return act
    raise AssertionError(suite)


def rollout_expert(env, act, seed: int, post_success_steps: int) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode from `seed`: every observation key plus the action, per step. Returns (arrays, success)."""
    observations: list[dict[str, np.ndarray]] = []
    actions = []
    obs, _ = env.reset(seed=seed)
    steps_after_success = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
        while True:
            action = np.clip(np.asarray(act(env), dtype=np.float32), -1.0, 1.0)
            observations.append(obs)
            actions.append(action)
            obs, _, _, truncated, info = env.step(action)
            if steps_after_success is None and info["success"]:
                steps_after_success = 0
            elif steps_after_success is not None:
                steps_after_success += 1
            if truncated or (steps_after_success is not None and steps_after_success >= post_success_steps):
                break
    episode = {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    episode["action"] = np.stack(actions).astype(np.float32)
    return episode, steps_after_success is not None


# Fields that must match when --resume continues an interrupted collection (--episodes may grow).
RESUME_FIELDS = (
    "env", "seed_start", "post_success_steps", "max_episode_steps", "cameras", "image_size",
    "point_cloud", "point_cloud_cameras", "point_cloud_points", "point_cloud_rgb", "point_cloud_image_size",
)


def point_cloud_of(cfg: CollectConfig):
    """The PointCloudSpec to record, or None."""
    if not cfg.point_cloud:
        return None
    from envs.make import default_point_cloud
    from envs.pointcloud import point_cloud_spec

    return point_cloud_spec(default_point_cloud(cfg.env), cfg.point_cloud_cameras, cfg.point_cloud_points, cfg.point_cloud_rgb, cfg.point_cloud_image_size)


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def open_partial(cfg: CollectConfig, partial: Path) -> tuple[EpisodeStore, CollectReport]:
    """The interrupted collection at `partial`, its progress reconciled with what was committed."""
    store = EpisodeStore.open(partial, "a")  # drops an append the kill interrupted
    attrs = store.attrs
    saved = attrs.get("collect_config", {})
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items() if k in RESUME_FIELDS}
    diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
    if diff:
        raise CollectionError(f"{partial}: --resume with different settings: " + "; ".join(f"{k}: partial has {a!r}, command has {b!r}" for k, (a, b) in diff.items()))
    report = CollectReport(list(attrs["episode_seeds"]), list(attrs["dropped_seeds"]))
    if store.n_episodes == len(report.kept_seeds) + 1 and attrs.get("pending_seed") is not None:
        report.kept_seeds.append(attrs["pending_seed"])  # killed after the append committed, before the seeds were saved
    if store.n_episodes != len(report.kept_seeds):
        raise CollectionError(f"{partial}: holds {store.n_episodes} episodes but records {len(report.kept_seeds)} seeds; delete it and collect again")
    return store, report


def collect(cfg: CollectConfig, progress: bool = True) -> tuple[EpisodeStore, CollectReport]:
    """Collect into `<out>.partial` (one committed append per kept episode), then rename it to `out`.

    A killed collection leaves the partial store; `cfg.resume` continues it from the next seed."""
    act = expert_for(cfg.env)  # fails fast on unknown envs and broken experts
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise CollectionError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    partial = partial_path(out)
    if partial.exists() and not cfg.resume:
        raise CollectionError(f"{partial}: an interrupted collection is there; pass --resume to continue it, or delete it to start over")
    env_kwargs = {"max_episode_steps": cfg.max_episode_steps} if cfg.max_episode_steps else {}
    if cfg.cameras:
        env_kwargs |= {"cameras": tuple(cfg.cameras), "image_size": cfg.image_size}
    point_cloud = point_cloud_of(cfg)
    if point_cloud is not None:
        env_kwargs["point_cloud"] = point_cloud
    env = make_env(cfg.env, **env_kwargs)  # an unknown camera fails here, listing the env's cameras
    props = env_properties(cfg.env)
    max_attempts = cfg.max_attempts or 2 * cfg.episodes + 10
    try:
        if partial.exists():
            store, report = open_partial(cfg, partial)
            print(f"resuming {partial}: {report.summary()}")
        else:
            config = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items() if k in RESUME_FIELDS}
            creating = partial.with_name(f"{partial.name}.creating-{os.getpid()}")  # created whole, then renamed: a kill leaves no half store
            EpisodeStore.create(creating, env_id=cfg.env, fps=props["fps"], source="scripted expert (data.collect)", overwrite=True,
                                extra_attrs={"collect_config": config, "episode_seeds": [], "dropped_seeds": [], "pending_seed": None})
            os.rename(creating, partial)
            store, report = EpisodeStore.open(partial, "a"), CollectReport([], [])
        bar = tqdm(total=cfg.episodes, initial=len(report.kept_seeds), desc=f"collect {cfg.env}", disable=not progress)
        attempt = len(report.kept_seeds) + len(report.dropped_seeds)
        while len(report.kept_seeds) < cfg.episodes and attempt < max_attempts:
            seed = cfg.seed_start + attempt
            attempt += 1
            episode, success = rollout_expert(env, act, seed, cfg.post_success_steps)
            if success:
                store.update_attrs({"pending_seed": seed})
                store.append_episode(episode)  # the commit point
                report.kept_seeds.append(seed)
                bar.update(1)
            else:
                report.dropped_seeds.append(seed)
            store.update_attrs({"episode_seeds": report.kept_seeds, "dropped_seeds": report.dropped_seeds, "pending_seed": None})
        bar.close()
    finally:
        env.close()
    if len(report.kept_seeds) < cfg.episodes:
        raise CollectionError(
            f"{cfg.env}: the scripted expert succeeded in only {len(report.kept_seeds)} of {attempt} attempts (wanted {cfg.episodes}); "
            f"raise --max-attempts (then --resume) or pick another task. The partial store is at {partial}."
        )
    attrs = {k: v for k, v in store.attrs.items() if k not in ("pending_seed", "collect_config")}
    store.replace_attrs(attrs | {
        "post_success_steps": cfg.post_success_steps, "success_definition": props["success_definition"],
        "cameras": list(cfg.cameras), "image_size": cfg.image_size if cfg.cameras else None,
        **({"point_cloud": spec_to_attrs(point_cloud)} if point_cloud is not None else {}),
    })
    replace_store(partial, out, overwrite=cfg.overwrite)
    return EpisodeStore.open(out, "r"), report


def main() -> None:
    cfg = tyro.cli(CollectConfig)
    try:
        store, report = collect(cfg)
    except (CollectionError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{report.summary()}; wrote {store.path} ({store.n_episodes} episodes, {store.n_steps} steps)")


if __name__ == "__main__":
    main()
