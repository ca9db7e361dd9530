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
from deploy.server import PolicyRunner, served_chunking
from envs.make import env_properties
from envs.rollout import EvalResult, evaluate


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


class LatencyController:
    """`envs.rollout.evaluate` controller: every env's actions go through its own ChunkExecutor, with replies
    delayed by `latency_ticks` on the simulated clock (`simulated_tick`), inference batched across envs."""

    def __init__(self, policy: Any, config: ExecutorConfig, latency_ticks: int) -> None:
        self.runner = PolicyRunner(policy)
        self.config = config
        self.latency_ticks = latency_ticks
        self.holds = self.commands = self.stale = 0

    def start_wave(self, n_envs: int) -> None:
        self.runner.end_all_sessions()  # per-step policies: every robot starts a new episode
        self.executors = [ChunkExecutor(self.config) for _ in range(n_envs)]
        self.pending: list[deque] = [deque() for _ in range(n_envs)]

    def actions(self, obs: dict[str, np.ndarray], done: np.ndarray, tick: int) -> np.ndarray:
        live = [None if done[i] else ex for i, ex in enumerate(self.executors)]
        per_env_obs = [None if done[i] else {k: v[i] for k, v in obs.items()} for i in range(len(done))]
        infer = lambda windows, robots: self.runner.infer_batch(windows, sessions=robots)  # noqa: E731
        commands = simulated_tick(live, per_env_obs, infer, self.latency_ticks, tick, self.pending)
        return np.stack([a if a is not None else np.zeros(self.config.action_dim, np.float32) for a in commands])

    def end_wave(self, n_active: int) -> None:
        for executor in self.executors[:n_active]:
            self.holds += executor.counts["hold"]
            self.commands += sum(executor.counts[k] for k in ("chunk", "blend", "ensemble", "hold"))
            self.stale += executor.counts["stale_dropped"]


@torch.no_grad()
def evaluate_with_latency(
    policy: Any, env_name: str, n_episodes: int, latency_ms: float, mode: str = "prefetch", stitch: str = "latest",
    seed_start: int = 100_000, n_envs: int = 10, max_episode_steps: int | None = None, progress: bool = True,
) -> LatencyEval:
    """`envs.rollout.evaluate` (same seeds, success at any step, terminate on success) with each env's actions
    going through its own ChunkExecutor and `latency_ms` of simulated delay."""
    props = env_properties(env_name)
    latency_ticks = round(latency_ms / 1000 * props["fps"])
    c = policy.config
    config = ExecutorConfig(
        fps=props["fps"], n_obs_steps=c.n_obs_steps, n_action_steps=served_chunking(policy)[0], action_dim=c.action_dim,
        mode=mode, stitch=stitch, safety=hold_for(env_name),
    )
    controller = LatencyController(policy, config, latency_ticks)
    result = evaluate(policy, env_name, n_episodes, seed_start, n_envs, max_episode_steps, progress=progress, controller=controller)
    return LatencyEval(
        latency_ms, latency_ticks, mode, stitch, controller.holds / max(controller.commands, 1), controller.stale / result.n_episodes, result
    )
