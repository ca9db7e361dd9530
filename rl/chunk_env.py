"""Chunk-level environments for RL on top of chunked policies.

`ChunkedEnv` wraps one env so that one step executes a whole chunk of actions:
- observation: the last `n_obs_steps` observations per key, (n_obs_steps, *shape); at reset the first
  observation is repeated, exactly like `Policy.select_action`'s history;
- reward: the sum of the per-step rewards over the steps actually executed;
- the chunk stops at the first terminated or truncated step: the remaining actions are not executed,
  and `info["env_steps"]` says how many were. Budgets and logs count these env steps, not chunks.

Reward "sparse_success": 1.0 at every env step where `info["success"]` is true, else 0.0. With
`terminate_on_success` (the default for RL) the episode ends there, so an episode's return is 1 on
success and 0 on failure.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np

from core.window import ObsWindow
from envs.make import async_vector_env, make_env
from policies.io_config import require_state_only


class ChunkedEnv(gym.Env):
    def __init__(self, env_name: str, n_obs_steps: int, n_action_steps: int, **env_kwargs: Any) -> None:
        self.env = make_env(env_name, **env_kwargs)
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.observation_space = gym.spaces.Dict(
            {k: gym.spaces.Box(-np.inf, np.inf, (n_obs_steps, *s.shape), np.float32) for k, s in self.env.observation_space.items()}
        )
        inner = self.env.action_space
        self.action_space = gym.spaces.Box(
            np.broadcast_to(inner.low, (n_action_steps, *inner.shape)), np.broadcast_to(inner.high, (n_action_steps, *inner.shape)), dtype=np.float32
        )
        self._history: ObsWindow[np.ndarray] = ObsWindow(n_obs_steps)

    def _window(self) -> dict[str, np.ndarray]:
        return self._history.stacked(np.stack)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._history.clear()
        self._history.push(obs)
        return self._window(), info

    def step(self, chunk: np.ndarray):
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.shape != self.action_space.shape:
            raise ValueError(f"chunk has shape {chunk.shape}, expected {self.action_space.shape} (n_action_steps, action_dim)")
        reward, success, steps = 0.0, False, 0
        terminated = truncated = False
        for action in chunk:
            obs, _, terminated, truncated, info = self.env.step(action)
            self._history.push(obs)
            steps += 1
            reward += float(info["success"])
            success |= bool(info["success"])
            if terminated or truncated:
                break
        return self._window(), reward, terminated, truncated, {"env_steps": steps, "success": success}

    def close(self) -> None:
        self.env.close()


def make_chunked_vector_env(env_name: str, n_envs: int, n_obs_steps: int, n_action_steps: int, **env_kwargs: Any) -> gym.vector.VectorEnv:
    """`n_envs` ChunkedEnvs in spawned subprocesses; autoreset is off, callers reset finished envs with their own seeds."""
    fn = functools.partial(ChunkedEnv, env_name, n_obs_steps, n_action_steps, **env_kwargs)
    if n_envs == 1:
        return gym.vector.SyncVectorEnv([fn], autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    return async_vector_env([fn] * n_envs)


def check_policy_matches_env(config: Any, env_name: str, where: str) -> None:
    """Fail before any rollout when the policy's observation keys/sizes or action size differ from the env's."""
    require_state_only(config, where)
    env = make_env(env_name)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    problems = []
    for key, dim in zip(config.state_keys, config.state_dims):
        if key not in obs_space.spaces:
            problems.append(f"observation key {key!r} is not produced by {env_name} (it has {sorted(obs_space.spaces)})")
        elif obs_space[key].shape != (dim,):
            problems.append(f"observation {key!r} has shape {obs_space[key].shape} in {env_name}, the policy expects ({dim},)")
    if act_space.shape != (config.action_dim,):
        problems.append(f"{env_name} takes actions of shape {act_space.shape}, the policy outputs ({config.action_dim},)")
    if problems:
        raise ValueError(f"{where} does not fit {env_name}: " + "; ".join(problems))


