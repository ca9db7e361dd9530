"""The deployment executor against simulated robots: measure how success degrades with latency before hardware.

    python eval.py runs/drawer-open --latency-ms 100                    # prefetching executor
    python eval.py runs/drawer-open --latency-ms 100 --executor sync    # ask, hold, then execute (the usual stack)

The sim runs on a simulated clock (`deploy.executor.simulated_tick`): a reply reaches the robot
`latency_ms` (rounded to control ticks) after the observation it answers, while the robot keeps stepping
on older actions or the watchdog's hold. So `latency_ms` is the total observation-to-action delay, and
results do not depend on how fast this machine runs the model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deploy.executor import ChunkExecutor, ExecutorConfig, SafetyLimits, simulated_tick
from deploy.server import PolicyRunner
from envs.make import env_properties, policy_env_kwargs
from envs.rollout import EpisodeRecord, EvalResult, make_eval_envs, wilson_interval


class SimRobot:
    """`deploy.executor.Robot` over one of our gymnasium envs: each `send_action` advances the physics one tick."""

    def __init__(self, env: Any, seed: int) -> None:
        self.env = env
        self.obs, _ = env.reset(seed=seed)
        self.success = False
        self.done = False
        self.steps = 0

    def get_observation(self) -> dict[str, np.ndarray]:
        return self.obs

    def send_action(self, action: np.ndarray) -> None:
        if self.done:
            raise RuntimeError("episode is over; make a new SimRobot")
        self.obs, _, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.success |= bool(info.get("success", False))
        self.done = bool(terminated or truncated)


def hold_for(env_name: str) -> SafetyLimits:
    """Safety limits for our sims: env bounds, and a hold that keeps the arm still under their delta control."""
    props = env_properties(env_name)
    suite = env_name.split("/", 1)[0]
    # Meta-World: [dx, dy, dz, gripper]; robosuite OSC_POSE: [dx, dy, dz, droll, dpitch, dyaw, gripper]
    keep = (3,) if suite == "metaworld" else (6,)
    return SafetyLimits(low=tuple(props["action_low"]), high=tuple(props["action_high"]), hold="zero", hold_keep_dims=keep)


@dataclass(frozen=True)
class LatencyEval:
    latency_ms: float
    latency_ticks: int
    mode: str
    stitch: str
    hold_fraction: float
    """Share of commands that were the watchdog's hold."""
    stale_dropped_per_episode: float
    result: EvalResult

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "result"} | self.result.to_dict()


@torch.no_grad()
def evaluate_with_latency(
    policy: Any, env_name: str, n_episodes: int, latency_ms: float, mode: str = "prefetch", stitch: str = "latest",
    seed_start: int = 100_000, n_envs: int = 10, max_episode_steps: int | None = None, progress: bool = True,
) -> LatencyEval:
    """Seeded episodes (as `envs.rollout.evaluate`: same seeds, success at any step, terminate on success) where
    each env's actions go through its own ChunkExecutor with `latency_ms` of simulated delay."""
    from tqdm import tqdm

    runner = PolicyRunner(policy)
    props = env_properties(env_name)
    max_steps = max_episode_steps or props["max_episode_steps"]
    latency_ticks = round(latency_ms / 1000 * props["fps"])
    c = policy.config
    config = ExecutorConfig(
        fps=props["fps"], n_obs_steps=c.n_obs_steps, n_action_steps=c.n_action_steps, action_dim=c.action_dim,
        mode=mode, stitch=stitch, safety=hold_for(env_name),
    )
    n_envs = max(1, min(n_envs, n_episodes))
    envs = make_eval_envs(env_name, n_envs, max_steps, **policy_env_kwargs(c))
    records: list[EpisodeRecord] = []
    holds = commands = stale = 0
    rng_outside = torch.get_rng_state()
    try:
        bar = tqdm(total=n_episodes, desc=f"eval {env_name} latency {latency_ms:g} ms {mode}", disable=not progress, leave=False)
        for wave_start in range(0, n_episodes, n_envs):
            n_active = min(n_envs, n_episodes - wave_start)
            seeds = [seed_start + wave_start + i for i in range(n_envs)]
            torch.manual_seed(seeds[0])
            obs, info = envs.reset(seed=seeds)
            init_states = np.asarray(info["init_state"])
            executors = [ChunkExecutor(config) for _ in range(n_envs)]
            pending: list[deque] = [deque() for _ in range(n_envs)]
            done = np.zeros(n_envs, dtype=bool)
            success = np.zeros(n_envs, dtype=bool)
            length = np.zeros(n_envs, dtype=np.int64)
            for tick in range(max_steps + 1):
                if done[:n_active].all():
                    break
                live = [None if done[i] else executors[i] for i in range(n_envs)]
                per_env_obs = [None if done[i] else {k: v[i] for k, v in obs.items()} for i in range(n_envs)]
                commands_now = simulated_tick(live, per_env_obs, runner.infer_batch, latency_ticks, tick, pending)
                actions = np.stack([a if a is not None else np.zeros(c.action_dim, np.float32) for a in commands_now])
                obs, _, terminated, truncated, info = envs.step(actions)
                length += ~done
                success |= ~done & np.asarray(info["success"], dtype=bool)
                newly_done = ~done & (terminated | truncated)
                done |= newly_done
                bar.update(int(newly_done[:n_active].sum()))
            for i in range(n_active):
                records.append(EpisodeRecord(seeds[i], bool(success[i]), int(length[i]), init_states[i].tolist()))
                holds += executors[i].counts["hold"]
                commands += sum(executors[i].counts[k] for k in ("chunk", "blend", "ensemble", "hold"))
                stale += executors[i].counts["stale_dropped"]
        bar.close()
    finally:
        envs.close()
        torch.set_rng_state(rng_outside)
    n_success = sum(r.success for r in records)
    result = EvalResult(
        env=env_name, n_episodes=len(records), success_rate=n_success / len(records), ci95=wilson_interval(n_success, len(records)),
        mean_length=float(np.mean([r.length for r in records])), success_definition=props["success_definition"],
        max_episode_steps=max_steps, episodes=records,
    )
    return LatencyEval(latency_ms, latency_ticks, mode, stitch, holds / max(commands, 1), stale / len(records), result)
