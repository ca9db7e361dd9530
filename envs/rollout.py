"""Seeded, vectorized policy evaluation: success rate with a Wilson 95% interval, per-episode records, videos.

Episodes run in waves of `n_envs` parallel envs. Episode i starts from `reset(seed=seed_start + i)`,
so its initial state depends only on its seed. The policy's sampling noise is seeded per wave
(torch.manual_seed(first seed of the wave)), so a rerun with the same n_envs repeats every action.
An episode succeeds when the env's `info["success"]` is true at any step; it then terminates.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.observability import observability
from envs.make import env_properties, make_vector_env, policy_env_kwargs


@dataclass
class EpisodeRecord:
    seed: int
    success: bool
    length: int
    """Steps until success, or until the step limit on failure."""
    init_state: list[float]
    """The env's random reset vector (object and goal positions) drawn from `seed`."""
    stages_reached: list[str] = field(default_factory=list)
    """The env's sub-goals (`EvalResult.stages`) this episode reached at some step."""
    min_obj_to_target: float | None = None
    """The smallest object-to-goal distance of the episode, where the env reports `obj_to_target`."""


def failure_stages(episodes: list[tuple[bool, list[str]]], stages: list[str]) -> dict[str, int]:
    """(success, stages reached) per episode -> for the failed ones, the first of `stages` each never reached (or
    "all stages reached") and how many stopped there. Works on `EvalResult.episodes` and on their JSON alike."""
    counts: dict[str, int] = {}
    for success, reached in episodes:
        if success or not stages:
            continue
        missed = next((name for name in stages if name not in reached), None)
        key = f"never {missed}" if missed else "all stages reached"
        counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass
class EvalResult:
    env: str
    n_episodes: int
    success_rate: float
    ci95: tuple[float, float]
    mean_length: float
    success_definition: str
    max_episode_steps: int
    episodes: list[EpisodeRecord] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    """The sub-goals the env reports, in task order (`env_properties(env)["stages"]`, `stage/<name>` in its
    step info; e.g. Meta-World's near_object, grasp_success); empty for envs with none."""
    task: str = ""
    """The task part of `env` (push-v3)."""
    obs_keys: list[str] = field(default_factory=list)
    """The observation keys the policy read."""
    observability: str = ""
    """privileged, goal_hidden or sensor_only, derived from `obs_keys` (core/observability.py)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def failure_stages(self) -> dict[str, int]:
        """Where the failed episodes stopped: the first sub-goal (in the env's order) each never reached,
        or "all stages reached" when it reached every one and still failed. Empty when the env reports none."""
        return failure_stages([(r.success, r.stages_reached) for r in self.episodes], self.stages)

    def summary(self) -> str:
        lo, hi = self.ci95
        text = (
            f"{self.env}: success {self.success_rate:.1%} (95% CI {lo:.1%}-{hi:.1%}) over {self.n_episodes} episodes, "
            f"mean length {self.mean_length:.1f} steps"
        )
        if stages := self.failure_stages():
            text += "; failures: " + ", ".join(f"{n} {key}" for key, n in stages.items())
        return text


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; well-behaved at 0% and 100%."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _to_tensor_obs(obs: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Float observations as float32; uint8 images stay uint8 (the camera encoders require it)."""
    return {k: torch.as_tensor(v, dtype=torch.uint8 if v.dtype == np.uint8 else torch.float32, device=device) for k, v in obs.items()}


class SelectActionController:
    """How `evaluate` acts by default: the policy's own `select_action` on each step's batched observations."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.device = next(policy.parameters()).device

    def start_wave(self, n_envs: int) -> None:
        self.policy.reset()

    def actions(self, obs: dict[str, np.ndarray], done: np.ndarray, tick: int) -> np.ndarray:
        return self.policy.select_action(_to_tensor_obs(obs, self.device)).cpu().numpy()

    def end_wave(self, n_active: int) -> None:
        pass


@torch.no_grad()
def evaluate(
    policy,
    env_name: str,
    n_episodes: int,
    seed_start: int = 100_000,
    n_envs: int = 10,
    max_episode_steps: int | None = None,
    video_dir: str | os.PathLike | None = None,
    n_videos: int = 0,
    video_size: int = 256,
    progress: bool = True,
    envs=None,
    controller=None,
) -> EvalResult:
    """Roll `policy` (the Policy contract: reset/select_action) out for `n_episodes` seeded episodes.

    `envs`: an open vector env from `make_eval_envs` to reuse (it stays open); by default one is made and closed.
    `controller`: turns observations into actions (default `SelectActionController`; `deploy.sim` passes one
    that routes them through the deployment executor with simulated latency).
    """
    from tqdm import tqdm

    props = env_properties(env_name)
    max_steps = max_episode_steps or props["max_episode_steps"]
    own_envs = envs is None
    if own_envs:
        n_envs = max(1, min(n_envs, n_episodes))
        n_videos = min(n_videos, n_envs) if video_dir is not None else 0
        envs = make_eval_envs(env_name, n_envs, max_steps, n_videos, video_size, **policy_env_kwargs(getattr(policy, "config", None)))
    else:
        n_envs, n_videos = envs.num_envs, 0
    policy.check_ready()
    controller = controller or SelectActionController(policy)
    policy.eval()
    records: list[EpisodeRecord] = []
    videos: list[str] = []
    rng_outside = torch.get_rng_state()  # seeding the waves must not disturb a training run's RNG stream
    try:
        bar = tqdm(total=n_episodes, desc=f"eval {env_name}", disable=not progress, leave=False)
        for wave_start in range(0, n_episodes, n_envs):
            n_active = min(n_envs, n_episodes - wave_start)
            seeds = [seed_start + wave_start + i for i in range(n_envs)]
            torch.manual_seed(seeds[0])
            obs, info = envs.reset(seed=seeds)
            init_states = np.asarray(info["init_state"])
            controller.start_wave(n_envs)
            done = np.zeros(n_envs, dtype=bool)
            success = np.zeros(n_envs, dtype=bool)
            length = np.zeros(n_envs, dtype=np.int64)
            stages = {name: np.zeros(n_envs, dtype=bool) for name in props["stages"]}
            min_obj_to_target = np.full(n_envs, np.inf)
            record_video = wave_start == 0 and n_videos > 0
            frames: list[list[np.ndarray]] = [[] for _ in range(n_videos)] if record_video else []
            tick = 0
            while not done[:n_active].all():
                if record_video:
                    for i, frame in enumerate(envs.call("render")[:n_videos]):
                        if not done[i]:
                            frames[i].append(frame)
                action = controller.actions(obs, done, tick)
                tick += 1
                obs, _, terminated, truncated, info = envs.step(action)
                length += ~done
                success |= ~done & np.asarray(info["success"], dtype=bool)
                for name, reached in stages.items():
                    reached |= ~done & (np.asarray(info[f"stage/{name}"], dtype=np.float64) > 0.5)
                if "obj_to_target" in info:
                    min_obj_to_target = np.where(done, min_obj_to_target, np.minimum(min_obj_to_target, np.asarray(info["obj_to_target"], dtype=np.float64)))
                newly_done = ~done & (terminated | truncated)
                done |= newly_done
                bar.update(int(newly_done[:n_active].sum()))
            controller.end_wave(n_active)
            for i in range(n_active):
                records.append(EpisodeRecord(
                    seeds[i], bool(success[i]), int(length[i]), init_states[i].tolist(),
                    stages_reached=[name for name, reached in stages.items() if reached[i]],
                    min_obj_to_target=float(min_obj_to_target[i]) if np.isfinite(min_obj_to_target[i]) else None,
                ))
            if record_video:
                videos += _write_videos(frames, Path(video_dir), seeds, success, props["fps"])
        bar.close()
    finally:
        if own_envs:
            envs.close()
        torch.set_rng_state(rng_outside)
    n_success = sum(r.success for r in records)
    return EvalResult(
        env=env_name,
        n_episodes=len(records),
        success_rate=n_success / len(records),
        ci95=wilson_interval(n_success, len(records)),
        mean_length=float(np.mean([r.length for r in records])),
        success_definition=props["success_definition"],
        max_episode_steps=max_steps,
        episodes=records,
        videos=videos,
        stages=list(stages),
        task=env_name.partition("/")[2],
        obs_keys=list(policy.config.obs_keys),
        observability=observability(policy.config.obs_keys),
    )


def make_eval_envs(env_name: str, n_envs: int, max_episode_steps: int, n_videos: int = 0, video_size: int = 256, **env_kwargs):
    """The vector env `evaluate` runs in: terminate on success, the first `n_videos` envs render.

    `env_kwargs`: e.g. the cameras an image policy reads (`envs.make.policy_env_kwargs`).
    """
    per_env = [{"render_mode": "rgb_array", "width": video_size, "height": video_size} if i < n_videos else {} for i in range(n_envs)]
    return make_vector_env(env_name, n_envs, per_env_kwargs=per_env, max_episode_steps=max_episode_steps, terminate_on_success=True, **env_kwargs)


def _write_videos(frames: list[list[np.ndarray]], directory: Path, seeds: list[int], success: np.ndarray, fps: int) -> list[str]:
    import imageio.v3 as iio

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, episode_frames in enumerate(frames):
        tag = "success" if success[i] else "failure"
        path = directory / f"episode_{i:03d}_seed{seeds[i]}_{tag}.mp4"
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        iio.imwrite(tmp, np.stack(episode_frames), fps=min(fps, 30), codec="libx264")
        os.replace(tmp, path)
        paths.append(str(path))
    return paths
