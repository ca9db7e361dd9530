"""robosuite tasks (the robomimic benchmark scenes) as seeded gymnasium envs: `robosuite/Lift`, `robosuite/PickPlaceCan`.

Panda arm, robosuite's default OSC_POSE controller (delta end-effector pose) at 20 Hz. Action float32 (7,) in
[-1, 1]: (dx, dy, dz) scaled to 5 cm per step, (droll, dpitch, dyaw) to 0.5 rad per step, gripper (-1 open,
+1 close).

Observation:
    proprio   float32 (9,)   end-effector position (3), quaternion (4), finger joint positions (2)
    state     float32 (9+k,) proprio then the task's object state (Lift: 10, PickPlaceCan: 14)
    image_<camera> uint8 (H, W, 3) for each of `cameras` (agentview, robot0_eye_in_hand, frontview, ...)
    point_cloud    float32 (N, 3 or 6) when `point_cloud` is given (envs/pointcloud.py; `POINT_CLOUD`: agentview)

Seeding: `reset(seed=s)` reseeds the env's generator, which robosuite uses for the object placement and the
robot's initial joint noise, so episode s starts from the same state everywhere. The scene is loaded once
(hard_reset=False), which also keeps resets fast.
Success: robosuite's `_check_success()` (Lift: the cube is 4 cm above the table; PickPlaceCan: the can is in
its bin and the gripper has let go), at any step.
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np

from envs.cameras import CameraRenderer
from envs.pointcloud import CropBox, PointCloudRenderer, PointCloudSpec

TASKS = ("Lift", "PickPlaceCan")
SUCCESS_DEFINITION = "robosuite env._check_success() at any step of the episode"
FPS = 20
MAX_EPISODE_STEPS = {"Lift": 200, "PickPlaceCan": 400}
ACTION_DIM = 7
PROPRIO_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
PROPRIO_DIM = 9
POLICY_STATE_KEYS = ("state",)
"""What state policies read by default (the "env" state key): proprio plus the object state, which already holds
the object-to-gripper vectors."""


POINT_CLOUD = PointCloudSpec(cameras=("agentview",), crop=CropBox((-0.45, -0.6, 0.81), (0.5, 0.6, 1.6)), n_points=512, image_size=128)
"""agentview depth at 128 px, 512 points; the box keeps the space above the table top (z = 0.8) and drops the
robot's pedestal (x < -0.45), the floor and the walls."""


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown robosuite task {task!r}; supported: {', '.join(TASKS)} (each with a scripted expert)")
    return task


def import_robosuite():
    """Import robosuite quietly (it logs macro-file advice and optional-robot warnings at import)."""
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    try:
        import robosuite
    except ImportError as e:
        raise ImportError("robosuite is not installed; run scripts/setup.sh (it installs robosuite==1.5.2 without its GUI extras)") from e
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    return robosuite


class RobosuiteEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(
        self,
        task: str,
        max_episode_steps: int | None = None,
        terminate_on_success: bool = False,
        render_mode: str | None = None,
        camera_name: str = "agentview",
        width: int = 256,
        height: int = 256,
        cameras: tuple[str, ...] = (),
        image_size: int = 84,
        point_cloud: PointCloudSpec | None = None,
    ) -> None:
        check_task(task)
        suite = import_robosuite()
        limit = MAX_EPISODE_STEPS[task]
        self.max_episode_steps = max_episode_steps or limit
        if not 1 <= self.max_episode_steps <= limit:
            raise ValueError(f"max_episode_steps must be in [1, {limit}] for robosuite/{task}, got {max_episode_steps}")
        self.task = task
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self._env = suite.make(
            task,
            robots="Panda",
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            reward_shaping=False,
            control_freq=FPS,
            horizon=10_000,  # our own limit truncates; robosuite's would end episodes silently
            ignore_done=True,
            hard_reset=False,
        )
        model, self._data = self._env.sim.model._model, self._env.sim.data._data
        self._cameras = CameraRenderer(model, tuple(cameras), image_size, f"robosuite/{task}") if cameras else None
        self._points = PointCloudRenderer(model, point_cloud, f"robosuite/{task}") if point_cloud is not None else None
        self._video = CameraRenderer(model, (camera_name,), width, f"robosuite/{task}") if render_mode else None
        self._video_key = f"image_{camera_name}"
        obs = self._env.reset()
        state_dim = len(self._state(obs))
        self.observation_space = gym.spaces.Dict(
            {
                "state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
                "proprio": gym.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
                **(self._cameras.spaces() if self._cameras else {}),
                **(self._points.spaces() if self._points else {}),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._steps = 0
        self.raw_obs: dict[str, np.ndarray] = obs

    @property
    def sim_env(self):
        """The underlying robosuite env (the scripted experts read object and bin poses from it)."""
        return self._env

    def _state(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([*(obs[k] for k in PROPRIO_KEYS), obs["object-state"]]).astype(np.float32)

    def _observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = self._state(obs)
        out = {"state": state, "proprio": state[:PROPRIO_DIM].copy()}
        if self._cameras is not None:
            out |= self._cameras.render(self._data)
        if self._points is not None:
            out |= self._points.render(self._data)
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:  # the placement samplers and robot noise hold this very generator: reseed it in place
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        obs = self._env.reset()
        self._steps = 0
        self.raw_obs = obs
        init_state = np.asarray(self._env.sim.get_state().flatten(), dtype=np.float64)
        return self._observation(obs), {"success": False, "init_state": init_state}

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"robosuite/{self.task} takes actions of shape ({ACTION_DIM},), got {action.shape}")
        obs, reward, _, _ = self._env.step(action)
        self._steps += 1
        self.raw_obs = obs
        success = bool(self._env._check_success())
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps
        return self._observation(obs), float(reward), terminated, truncated, {"success": success}

    def render(self) -> np.ndarray | None:
        if self._video is None:
            return None
        return self._video.render(self._data)[self._video_key]

    def close(self) -> None:
        for renderer in (self._cameras, self._points, self._video):
            if renderer is not None:
                renderer.close()
        self._env.close()


# ---- scripted experts ---------------------------------------------------------------------------------


def _yaw(quat_xyzw: np.ndarray) -> float:
    x, y, z, w = quat_xyzw
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


class PickExpert:
    """Waypoint expert for Lift and PickPlaceCan: above the object, down, close, up, (carry, lower, open, up).

    A proportional controller on the end-effector position (5 cm per unit action) with a phase counter. For the
    cube it also turns the gripper to the nearest face (the cube's yaw modulo 90 degrees).
    """

    def __init__(self, task: str) -> None:
        self.task = check_task(task)
        self.object_key = "cube_pos" if task == "Lift" else "Can_pos"
        self.reset()

    def reset(self) -> None:
        self.phase, self.timer, self.lift_z = "approach", 0, 0.0

    def get_action(self, env: RobosuiteEnv) -> np.ndarray:
        if env._steps == 0 and self.timer == 0 and self.phase != "approach":
            self.reset()
        obs = env.raw_obs
        eef, obj = obs["robot0_eef_pos"], obs[self.object_key]
        grip = -1.0
        target = obj + np.array([0.0, 0.0, 0.08])
        yaw_error = 0.0
        if self.task == "Lift":
            diff = (_yaw(obs["cube_quat"]) - _yaw(obs["robot0_eef_quat"])) % (np.pi / 2)
            yaw_error = diff - np.pi / 2 if diff > np.pi / 4 else diff
        if self.phase == "approach":
            if np.linalg.norm((target - eef)[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.02 and abs(yaw_error) < 0.1:
                self.phase = "descend"
        if self.phase == "descend":
            target = obj.copy()
            if np.linalg.norm(target - eef) < 0.01:
                self.phase, self.timer = "grasp", 0
        if self.phase == "grasp":
            target, grip = obj.copy(), 1.0
            self.timer += 1
            if self.timer >= 10:
                self.phase, self.lift_z = "lift", obj[2] + (0.15 if self.task == "Lift" else 0.25)
        if self.phase == "lift":
            target, grip = np.array([eef[0], eef[1], self.lift_z]), 1.0
            if self.task == "PickPlaceCan" and eef[2] > self.lift_z - 0.02:
                self.phase = "carry"
        bin_target = env.sim_env.target_bin_placements[env.sim_env.object_id] if self.task == "PickPlaceCan" else None
        if self.phase == "carry":
            target, grip = np.array([bin_target[0], bin_target[1], self.lift_z]), 1.0
            if np.linalg.norm((target - eef)[:2]) < 0.02:
                self.phase = "lower"
        if self.phase == "lower":
            target, grip = np.array([bin_target[0], bin_target[1], bin_target[2] + 0.12]), 1.0
            if abs(target[2] - eef[2]) < 0.02:
                self.phase, self.timer = "release", 0
        if self.phase == "release":
            target, grip = np.array([bin_target[0], bin_target[1], bin_target[2] + 0.12]), -1.0
            self.timer += 1
            if self.timer >= 8:
                self.phase = "retreat"
        if self.phase == "retreat":
            target, grip = np.array([bin_target[0], bin_target[1], bin_target[2] + 0.3]), -1.0
        action = np.zeros(ACTION_DIM, dtype=np.float32)
        action[:3] = np.clip((target - eef) / 0.05 * 2.0, -1.0, 1.0)
        action[5] = np.clip(yaw_error / 0.5 * 2.0, -1.0, 1.0) if self.phase in ("approach", "descend") else 0.0
        action[6] = grip
        return action


def scripted_expert(task: str) -> PickExpert:
    return PickExpert(task)
