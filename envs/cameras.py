"""Offscreen camera rendering for MuJoCo envs: uint8 (H, W, 3) images as observations.

Set `MUJOCO_GL=egl` (`envs/__init__.py` makes it the default when unset) or `osmesa` before the first MuJoCo render. Each env owns one
`mujoco.Renderer` per image size, shared by its cameras.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import gymnasium as gym
import mujoco
import numpy as np

IMAGE_KEY_PREFIX = "image_"


def check_gl_backend() -> None:
    """MuJoCo reads MUJOCO_GL once, at its first import: if that came before `envs`, say so instead of failing
    inside mjr_makeContext with an OpenGL message. (`envs/__init__.py` sets the EGL default.)"""
    wanted = os.environ.get("MUJOCO_GL", "")
    imported_with = getattr(getattr(mujoco, "gl_context", None), "_MUJOCO_GL", None)
    if imported_with is not None and imported_with != wanted.lower().strip():
        raise RuntimeError(
            f"mujoco was imported with MUJOCO_GL={imported_with!r} before MUJOCO_GL={wanted!r} was set; "
            "set MUJOCO_GL=egl (or osmesa) in the environment before starting Python to render offscreen"
        )


def image_key(camera: str) -> str:
    """Observation / store key of a camera: image_<camera>."""
    return f"{IMAGE_KEY_PREFIX}{camera}"


def camera_of(key: str) -> str:
    if not key.startswith(IMAGE_KEY_PREFIX):
        raise ValueError(f"image key {key!r} must be named {IMAGE_KEY_PREFIX}<camera>, e.g. image_corner2")
    return key[len(IMAGE_KEY_PREFIX) :]


def model_cameras(model: mujoco.MjModel) -> list[str]:
    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]


def check_cameras(model: mujoco.MjModel, cameras: Iterable[str], env_name: str) -> None:
    available = model_cameras(model)
    unknown = [c for c in cameras if c not in available]
    if unknown:
        raise ValueError(f"{env_name} has no camera {', '.join(map(repr, unknown))}; available cameras: {', '.join(available)}")


def upside_down(model: mujoco.MjModel, data: mujoco.MjData, camera: str) -> bool:
    """True when the camera's image-up axis points below the horizon: it is rolled by 180 degrees.

    Meta-World's corner cameras are (their up axis has world z of -0.5 to -0.96); their images are turned
    back with a 180-degree rotation, which keeps left and right as the camera sees them.
    """
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    return bool(data.cam_xmat[cam_id].reshape(3, 3)[2, 1] < 0)


class CameraRenderer:
    """Renders the named cameras of (model, data) at one size, every image right side up."""

    def __init__(self, model: mujoco.MjModel, cameras: tuple[str, ...], size: int, env_name: str) -> None:
        check_gl_backend()
        check_cameras(model, cameras, env_name)
        if size < 8:
            raise ValueError(f"image size {size} is too small; use e.g. 84 or 96")
        self.model = model
        self.cameras = cameras
        self.size = size
        self._rotate: dict[str, bool] = {}  # decided at the first render, then fixed for the env's life
        self._renderer = mujoco.Renderer(model, height=size, width=size)

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        images = {}
        for camera in self.cameras:
            if camera not in self._rotate:
                self._rotate[camera] = upside_down(self.model, data, camera)
            self._renderer.update_scene(data, camera=camera)
            frame = self._renderer.render()
            images[image_key(camera)] = np.ascontiguousarray(frame[::-1, ::-1]) if self._rotate[camera] else frame
        return images

    def spaces(self) -> dict[str, gym.spaces.Box]:
        return {image_key(c): gym.spaces.Box(0, 255, (self.size, self.size, 3), np.uint8) for c in self.cameras}

    def close(self) -> None:
        self._renderer.close()
