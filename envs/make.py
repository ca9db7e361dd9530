"""One entry point for environments: `make_env("metaworld/push-v3")`, `make_env("robosuite/Lift")`, and the vectorized form.

Every env takes `max_episode_steps`, `terminate_on_success`, `render_mode` (videos) and `cameras` /
`image_size` (image observations `image_<camera>`), and reports `info["success"]` every step.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np

SUITES = ("metaworld", "robosuite")
TASK_KEY = "task"  # = policies.io_config.TASK_KEY; not imported from there, env workers must not import torch


def split_env_name(name: str) -> tuple[str, str]:
    """'metaworld/push-v3' -> ('metaworld', 'push-v3'), with a clear error for anything else."""
    suite, sep, task = name.partition("/")
    if not sep or suite not in SUITES:
        raise ValueError(f"env name {name!r} must look like '<suite>/<task>' with suite in {SUITES}, e.g. metaworld/push-v3")
    if suite == "metaworld":
        from envs.metaworld import check_task

        check_task(task)
    if suite == "robosuite":
        from envs.robosuite import check_task

        check_task(task)
    return suite, task


def make_env(name: str, task_names: tuple[str, ...] = (), **kwargs: Any) -> gym.Env:
    """`task_names`: the tasks of a multi-task policy; observations then carry the one-hot `task` of `name`."""
    suite, task = split_env_name(name)
    if task_names and name not in task_names:
        raise ValueError(f"this multi-task policy was trained on {list(task_names)}; {name} is not one of them")
    if suite == "metaworld":
        from envs.metaworld import MetaWorldEnv

        env: gym.Env = MetaWorldEnv(task, **kwargs)
    elif suite == "robosuite":
        from envs.robosuite import RobosuiteEnv

        env = RobosuiteEnv(task, **kwargs)
    else:
        raise AssertionError(suite)
    return TaskOneHot(env, list(task_names).index(name), len(task_names)) if task_names else env


class TaskOneHot(gym.ObservationWrapper):
    """Adds `task`: the one-hot of this env's index among a multi-task policy's tasks (float32)."""

    def __init__(self, env: gym.Env, index: int, n_tasks: int) -> None:
        super().__init__(env)
        self.onehot = np.eye(n_tasks, dtype=np.float32)[index]
        self.observation_space = gym.spaces.Dict({**env.observation_space.spaces, TASK_KEY: gym.spaces.Box(0.0, 1.0, (n_tasks,), np.float32)})

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**observation, TASK_KEY: self.onehot.copy()}


def env_properties(name: str) -> dict[str, Any]:
    """Static facts about an env: fps, episode limit, how success is defined, action bounds (tests check them
    against the env), the sub-goals it reports as `stage/<name>` in its step info, in task order, and the state
    keys state policies read by default (what the "env" state key stands for)."""
    suite, task = split_env_name(name)
    if suite == "metaworld":
        from envs import metaworld

        return {
            "fps": metaworld.FPS, "max_episode_steps": metaworld.MAX_EPISODE_STEPS, "success_definition": metaworld.SUCCESS_DEFINITION,
            "action_low": [-1.0] * 4, "action_high": [1.0] * 4, "stages": metaworld.STAGES, "state_keys": metaworld.POLICY_STATE_KEYS,
        }
    if suite == "robosuite":
        from envs import robosuite

        return {
            "fps": robosuite.FPS, "max_episode_steps": robosuite.MAX_EPISODE_STEPS[task], "success_definition": robosuite.SUCCESS_DEFINITION,
            "action_low": [-1.0] * 7, "action_high": [1.0] * 7, "stages": (), "state_keys": robosuite.POLICY_STATE_KEYS,
        }
    raise AssertionError(suite)


def derived_keys(name: str) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Observation keys of env `name` that are functions of one other key: key -> (source key, function on
    (..., dim) arrays). Training uses them to fill keys a store was recorded without (a key added to the env
    later). Empty for suites without such keys and for env ids that are not ours (imported stores)."""
    if name.partition("/")[0] == "metaworld":
        from envs import metaworld

        return {key: ("state", derive) for key, derive in metaworld.DERIVED_KEYS.items()}
    return {}


def policy_env_kwargs(config: Any) -> dict[str, Any]:
    """The env options a policy's observations need: its cameras at its image size, and its task list."""
    from envs.cameras import camera_of

    kwargs: dict[str, Any] = {"task_names": tuple(config.task_names)} if getattr(config, "task_names", ()) else {}
    if getattr(config, "image_keys", ()):
        kwargs |= {"cameras": tuple(camera_of(k) for k in config.image_keys), "image_size": int(config.image_shape[0])}
    if getattr(config, "point_cloud_key", None):
        from envs.pointcloud import spec_from_policy_config

        kwargs["point_cloud"] = spec_from_policy_config(config)
    return kwargs


def default_point_cloud(name: str):
    """The suite's point-cloud setup (envs.pointcloud.PointCloudSpec): cameras, crop box, points."""
    suite, _ = split_env_name(name)
    if suite == "metaworld":
        from envs.metaworld import POINT_CLOUD
    elif suite == "robosuite":
        from envs.robosuite import POINT_CLOUD
    else:
        raise AssertionError(suite)
    return POINT_CLOUD


@contextlib.contextmanager
def spawn_without_main_module() -> Iterator[None]:
    """Start spawned workers without re-importing the parent's __main__ script.

    multiprocessing's spawn imports the main script (train.py, eval.py, ...) in every worker, and with
    it torch and the policies: about 800 MB per env worker. The env factories live in importable
    modules, so the workers do not need it.
    """
    main = sys.modules["__main__"]
    saved_file, saved_spec = getattr(main, "__file__", None), getattr(main, "__spec__", None)
    if saved_file is not None:
        del main.__file__
    main.__spec__ = None
    try:
        yield
    finally:
        if saved_file is not None:
            main.__file__ = saved_file
        main.__spec__ = saved_spec


def async_vector_env(fns: list) -> gym.vector.VectorEnv:
    """AsyncVectorEnv over spawned workers (safe with MuJoCo), autoreset off."""
    with spawn_without_main_module():
        return gym.vector.AsyncVectorEnv(fns, context="spawn", autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def make_vector_env(name: str, n_envs: int, per_env_kwargs: list[dict[str, Any]] | None = None, asynchronous: bool = True, **kwargs: Any) -> gym.vector.VectorEnv:
    """`n_envs` copies in spawned subprocesses (safe with MuJoCo); autoreset is off, callers reset explicitly."""
    per_env_kwargs = per_env_kwargs or [{} for _ in range(n_envs)]
    fns = [functools.partial(make_env, name, **kwargs, **extra) for extra in per_env_kwargs]
    if asynchronous and n_envs > 1:
        return async_vector_env(fns)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
