"""Meta-World v3 tasks as seeded, goal-observable gymnasium envs.

Meta-World's own `gym.make("Meta-World/MT1", ...)` draws each episode's object and goal positions from
50 pre-sampled "tasks" with a wrapper RNG, so `reset(seed=s)` does not pin the initial state. Here every
reset with a seed draws a fresh initial state (object and goal positions) from the task's full random
reset space, using only that seed: episode `s` is the same on every machine and in every process.
This is the goal-observable protocol used by the DP3 paper.

Observation: `{"state": float32 (39,), "proprio": float32 (4,), "relative": float32 (12,), "state_goal_hidden":
float32 (39,)}` (proprio = hand position and gripper opening, the first 4 state entries; relative = the
hand-to-object, hand-to-second-object, hand-to-goal and object-to-goal vectors, differences of state entries, as
robosuite's object-state provides them; state_goal_hidden = state with the goal zeroed, Meta-World's partially
observable mode), plus `image_<camera>` uint8 (H, W, 3) for each of `cameras`, and `point_cloud` float32 (N, 3 or
6) when `point_cloud` is given (envs/pointcloud.py; `POINT_CLOUD` is DP3's setup). Only `proprio`, the cameras and
the point cloud are what a real robot measures; the other keys are privileged (core/observability.py).
Action: float32 (4,) in [-1, 1].
Success definition: Meta-World's `info["success"]` at any step of the episode.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from envs.cameras import CameraRenderer, upside_down
from envs.pointcloud import CropBox, PointCloudRenderer, PointCloudSpec

SUCCESS_DEFINITION = 'Meta-World info["success"] == 1 at any step of the episode'
STAGES = ("near_object", "grasp_success")
"""Meta-World's per-step sub-goal flags, in task order; evaluation records which ones an episode reached
(`stage/<name>` in the step info) to say where failures stop. For pick-and-place tasks grasp_success means
the object is lifted with the gripper closed; for others it is the task's own definition."""
STATE_DIM = 39
ACTION_DIM = 4
MAX_EPISODE_STEPS = 500
FPS = 80  # Meta-World's render_fps metadata
PROPRIO_DIM = 4
RELATIVE_DIM = 12
POLICY_STATE_KEYS = ("state", "relative")
"""What state policies read by default (the "env" state key): with 10 demos the relative vectors lifted
basketball from 26% to 68% and shelf-place from 30% to 68% (bench/results/recipe_sweep_relative_pilot.json)."""

POINT_CLOUD = PointCloudSpec(
    cameras=("corner2",), crop=CropBox((-0.8, 0.2, 0.005), (0.8, 1.3, 1.0)), n_points=512, image_size=128, camera_positions=((0.6, 0.295, 0.8),)
)
"""DP3's Meta-World cloud: corner2 moved to DP3's position nearer the table, 128 px depth, 512 points. The box keeps
the table's workspace above its top (z > 5 mm) and drops the table, the floor and the robot's pedestal (y < 0.2)."""

# Tasks whose expert (Meta-World's, or ours in `scripted_expert`) never succeeds in v3 (measured: 0/10 and more);
# data.collect refuses them. None at present: hand-insert-v3 has our HandInsertExpert.
BROKEN_EXPERTS: dict[str, str] = {}


def task_names() -> list[str]:
    return list(ALL_V3_ENVIRONMENTS)


def check_task(task: str) -> str:
    """Return `task` if Meta-World has it, else raise listing the close matches."""
    if task in ALL_V3_ENVIRONMENTS:
        return task
    close = difflib.get_close_matches(task, task_names(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown Meta-World task {task!r}.{hint} Known tasks: {len(task_names())} v3 tasks, e.g. push-v3.")


def make_fast_renderable(model: mujoco.MjModel) -> None:
    """Turn off shadows, reflections and anti-aliasing: about 7x faster offscreen rendering on CPU."""
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    model.mat_reflectance[:] = 0.0
    model.light_castshadow[:] = 0


def relative_vectors(state: np.ndarray) -> np.ndarray:
    """hand->object, hand->second object, hand->goal, object->goal from a (..., 39) Meta-World state
    (hand 0:3, object 4:7, second object 11:14, goal 36:39); the second object is zeros in one-object tasks."""
    hand, obj, obj2, goal = state[..., 0:3], state[..., 4:7], state[..., 11:14], state[..., 36:39]
    return np.concatenate([obj - hand, obj2 - hand, goal - hand, goal - obj], axis=-1).astype(np.float32)


def proprio_of(state: np.ndarray) -> np.ndarray:
    """Hand position and gripper opening: the first PROPRIO_DIM entries of a (..., 39) state."""
    return state[..., :PROPRIO_DIM].copy()


def goal_hidden(state: np.ndarray) -> np.ndarray:
    """The (..., 39) state with the goal (36:39) zeroed: Meta-World's partially observable observation."""
    out = state.astype(np.float32, copy=True)
    out[..., 36:39] = 0.0
    return out


DERIVED_KEYS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"proprio": proprio_of, "relative": relative_vectors, "state_goal_hidden": goal_hidden}
"""Observation keys that are functions of `state` alone. The env computes them every step; training derives
them for stores recorded without them (envs.make.derived_keys)."""


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with seeded initial states and a dict observation."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(
        self,
        task: str,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        terminate_on_success: bool = False,
        render_mode: str | None = None,
        camera_name: str = "corner2",
        width: int = 256,
        height: int = 256,
        cameras: tuple[str, ...] = (),
        image_size: int = 84,
        point_cloud: PointCloudSpec | None = None,
    ) -> None:
        check_task(task)
        if not 1 <= max_episode_steps <= MAX_EPISODE_STEPS:
            raise ValueError(f"max_episode_steps must be in [1, {MAX_EPISODE_STEPS}], got {max_episode_steps}")
        self.task = task
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.camera_name = camera_name
        env = ALL_V3_ENVIRONMENTS[task](render_mode=render_mode, camera_name=camera_name, width=width, height=height)
        env._partially_observable = False  # goal position is part of the observation
        del env.sawyer_observation_space  # cached property; recompute for the new observability
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True  # draw initial states from env.np_random, which reset(seed) pins
        if render_mode is not None or cameras or point_cloud is not None:
            make_fast_renderable(env.model)
        self._env = env
        self._cameras = CameraRenderer(env.model, tuple(cameras), image_size, f"metaworld/{task}") if cameras else None
        self._points = PointCloudRenderer(env.model, point_cloud, f"metaworld/{task}") if point_cloud is not None else None
        self.observation_space = gym.spaces.Dict(
            {
                "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
                "proprio": gym.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
                "relative": gym.spaces.Box(-np.inf, np.inf, (RELATIVE_DIM,), np.float32),
                "state_goal_hidden": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
                **(self._cameras.spaces() if self._cameras else {}),
                **(self._points.spaces() if self._points else {}),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._steps = 0
        self._raw_obs = np.zeros(STATE_DIM)

    @property
    def raw_obs(self) -> np.ndarray:
        """The latest float64 observation, as the scripted experts expect it."""
        return self._raw_obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(seed)
        obs, _ = self._env.reset()
        self._steps = 0
        self._raw_obs = obs
        info = {"success": False, "init_state": np.asarray(self._env._last_rand_vec, dtype=np.float64).copy()}
        return self._observation(obs), info

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        obs, reward, _, _, info = self._env.step(action)
        self._steps += 1
        self._raw_obs = obs
        success = bool(info["success"])
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps
        stages = {f"stage/{k}": float(info[k]) for k in STAGES}  # every v3 task reports them
        step_info = {"success": success, **stages, "obj_to_target": float(info["obj_to_target"])}
        return self._observation(obs), float(reward), terminated, truncated, step_info

    def _observation(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        state = obs.astype(np.float32)
        out = {"state": state} | {key: derive(state) for key, derive in DERIVED_KEYS.items()}
        if self._cameras is not None:
            out |= self._cameras.render(self._env.data)
        if self._points is not None:
            out |= self._points.render(self._env.data)
        return out

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        frame = self._env.render()
        if upside_down(self._env.model, self._env.data, self.camera_name):
            frame = frame[::-1, ::-1]  # a camera rolled by 180 degrees (the corner ones): rotate back
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        for renderer in (self._cameras, self._points):
            if renderer is not None:
                renderer.close()
        self._env.close()


class HandInsertExpert:
    """Scripted expert for hand-insert-v3: pick the 4 cm block up and set it down in the table's hole at the goal.

    The hole is a pocket in the table (top z 0.05) whose floor is at z 0: a block resting on it has its centre at
    z 0.02, while the goal sits at z -0.02, so success (block centre within 0.05 of the goal) needs the block on the
    floor AND its centre within 0.03 of the goal in x-y. This expert aligns the block itself (not the hand) with the
    goal, to under 1 cm, before lowering it, and then lets go so it lies on the floor of the hole.

    Stateless (the phase is read off the observation, like Meta-World's policies), so one instance serves any number
    of episodes. Phases: open and move above the block; descend and close; once the fingers squeeze the block
    (opening below HELD_OPENING), lift it clear of the table; carry it so that the block is over the goal; lower it
    into the hole; release and back off upward. A grasp that closes on nothing (opening below MISSED_OPENING)
    opens and retries; a dropped block is picked up again.
    Measured on MetaWorldEnv seeds 0..49: 50/50 within 200 steps, first success at step 108 on average (max 127).
    """

    LIFT_Z = 0.14  # block centre height while carrying: its bottom clears the table top (z 0.05)
    GRASP_DZ = 0.05  # start closing when the hand is this close above the block's centre (fingers take ~15 steps)
    HELD_OPENING = 0.43  # gripper opening (obs[3]) once the fingers press on the 4 cm block (0.30-0.36 when tight)
    MISSED_OPENING = 0.25  # closed past the block: nothing between the fingers
    IN_HOLE_Z = 0.035  # block centre below this: its bottom is under the table top, inside the hole
    ALIGNED = 0.01  # block-to-goal x-y distance at which lowering starts
    GAIN = 10.0  # position error (m) to action, as Meta-World's policies

    def get_action(self, obs: np.ndarray) -> np.ndarray:
        hand, opening, obj, goal = obs[0:3], obs[3], obs[4:7], obs[36:39]
        to_goal = goal[:2] - obj[:2]
        err = float(np.linalg.norm(to_goal))
        hand_obj_xy = float(np.linalg.norm(hand[:2] - obj[:2]))
        dz = hand[2] - obj[2]
        if obj[2] < self.IN_HOLE_Z and err < 0.03:  # inserted: let go, back off once the fingers are open
            target = np.r_[hand[:2], 0.15] if opening > 0.6 else hand
            grab = -1.0
        elif self.MISSED_OPENING < opening < self.HELD_OPENING and hand_obj_xy < 0.02 and -0.01 < dz < 0.04:  # held
            grab = 1.0
            xy = hand[:2] + to_goal  # move the hand so that the block, not the hand, ends over the goal
            if err < self.ALIGNED or (err < 2 * self.ALIGNED and obj[2] < 0.1):
                target = np.r_[xy, hand[2] - 0.1]  # lower into the hole (keeps correcting x-y on the way)
            elif obj[2] < 0.09:
                target = np.r_[hand[:2], hand[2] + self.LIFT_Z - obj[2]]  # lift straight up off the table first
            else:
                target = np.r_[xy, hand[2] + self.LIFT_Z - obj[2]]  # carry at LIFT_Z
        else:  # reach and grasp
            grab = -1.0
            if opening < self.MISSED_OPENING:
                target = np.r_[hand[:2], obj[2] + 0.1]  # missed: open and rise
            elif hand_obj_xy > 0.012:
                z = obj[2] + 0.1 if (hand_obj_xy < 0.04 or dz > 0.05) else hand[2] + 0.05  # low and off: rise first
                target = np.r_[obj[:2], z]
            else:
                target = np.r_[obj[:2], obj[2]]  # descend over the block (the fingers stop on the table)
                if dz < self.GRASP_DZ:
                    grab = 1.0
        delta = np.clip(self.GAIN * (target - hand), -1.0, 1.0)
        return np.r_[delta, grab].astype(np.float32)


OUR_EXPERTS: dict[str, Callable[[], Any]] = {"hand-insert-v3": HandInsertExpert}
"""Experts that replace Meta-World's own for a task."""


def scripted_expert(task: str):
    """The hand-written expert for `task`: `expert.get_action(raw_obs) -> action`. Meta-World's own, except for
    the tasks in OUR_EXPERTS."""
    from metaworld.policies import ENV_POLICY_MAP

    check_task(task)
    if task in OUR_EXPERTS:
        return OUR_EXPERTS[task]()
    return ENV_POLICY_MAP[task]()
