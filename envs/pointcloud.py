"""Point-cloud observations from MuJoCo depth: named cameras -> world-frame XYZ (optionally RGB) -> the suite's
crop box -> farthest-point sampling to a fixed N.

The result is the observation key `point_cloud`, float32 (N, 3) or (N, 6) (XYZ in metres in the world frame,
then RGB in [0, 1]). It is a function of the simulator state alone: the sampling's start point is fixed, so
the same state gives the same cloud in every process (served = evaluated, replays).

Geometry: MuJoCo cameras look along their -z axis with +y up. `mujoco.Renderer` in depth mode returns, per
pixel, the distance along the optical axis in metres, with row 0 at the top of the image. A pixel (row r,
column c) of an H x W image with vertical field of view fovy has focal length f = (H / 2) / tan(fovy / 2), and
its camera-frame point is ((c + 0.5 - W/2) d / f, -(r + 0.5 - H/2) d / f, -d).

Farthest-point sampling: `fpsample`'s bucket QuickFPS (kd-tree, C++) by default; `farthest_point_sample_torch`
is the vectorised torch routine it was measured against (bench/pointcloud.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np

from envs.cameras import check_cameras, check_gl_backend

POINT_CLOUD_KEY = "point_cloud"


@dataclass(frozen=True)
class CropBox:
    """An axis-aligned workspace box in the world frame, metres: points outside it are dropped."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.low) != 3 or len(self.high) != 3 or not all(lo < hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"crop box low {self.low} / high {self.high} must be 3 numbers each with low < high")

    def contains(self, points: np.ndarray) -> np.ndarray:
        return np.all((points >= np.asarray(self.low)) & (points <= np.asarray(self.high)), axis=-1)


@dataclass(frozen=True)
class PointCloudSpec:
    """How a suite's env makes `point_cloud`: cameras, depth resolution, crop, point count, colour."""

    cameras: tuple[str, ...]
    """Named MuJoCo cameras whose depth is fused (Meta-World: corner2, as DP3)."""
    crop: CropBox
    """World-frame workspace box: it removes the table, the floor, the walls and the robot's base."""
    n_points: int = 512
    """Points after farthest-point sampling (DP3: 512 on Meta-World)."""
    image_size: int = 128
    """Square depth-render resolution per camera."""
    rgb: bool = False
    """Append each point's colour (N, 6) instead of XYZ only (N, 3)."""
    camera_positions: tuple[tuple[float, float, float], ...] = ()
    """World position per camera that replaces the model's while the cloud renders (orientation kept); empty: the
    model's cameras as they are. Meta-World moves corner2 to DP3's (0.6, 0.295, 0.8), nearer the table."""

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("a point cloud needs at least one camera")
        if self.camera_positions and (len(self.camera_positions) != len(self.cameras) or any(len(p) != 3 for p in self.camera_positions)):
            raise ValueError(f"camera_positions {self.camera_positions} must give one (x, y, z) per camera {self.cameras}")
        if self.n_points < 1:
            raise ValueError(f"n_points must be positive, got {self.n_points}")
        if self.image_size < 8:
            raise ValueError(f"point-cloud image_size {self.image_size} is too small; use e.g. 128")

    @property
    def dim(self) -> int:
        return 6 if self.rgb else 3

    def space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, (self.n_points, self.dim), np.float32)


def camera_intrinsics(model: mujoco.MjModel, camera_id: int, height: int, width: int) -> tuple[float, float, float]:
    """(focal length in pixels, principal point column, principal point row) of a MuJoCo camera rendered at HxW."""
    fovy = np.deg2rad(model.cam_fovy[camera_id])
    focal = 0.5 * height / np.tan(0.5 * fovy)
    return float(focal), 0.5 * width, 0.5 * height


def unproject(depth: np.ndarray, focal: float, cx: float, cy: float, cam_pos: np.ndarray, cam_rot: np.ndarray) -> np.ndarray:
    """Depth image (H, W) in metres along the optical axis -> world points (H*W, 3), row-major pixel order."""
    height, width = depth.shape
    cols = (np.arange(width, dtype=np.float64) + 0.5 - cx)[None, :]
    rows = (np.arange(height, dtype=np.float64) + 0.5 - cy)[:, None]
    d = depth.astype(np.float64)
    cam = np.stack([cols * d / focal, -rows * d / focal, -d], axis=-1).reshape(-1, 3)
    return cam @ cam_rot.T + cam_pos


def farthest_point_sample(points: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of `n` distinct points of (P, D) `points` (XYZ in the first 3 columns) by farthest-point sampling,
    starting from a point picked by `seed`: the same input and seed give the same indices."""
    import fpsample

    total = len(points)
    if n > total:
        raise ValueError(f"farthest-point sampling asked for {n} points, but only {total} are available")
    start = int(np.random.default_rng(seed).integers(total))
    xyz = np.ascontiguousarray(points[:, :3], dtype=np.float32)
    if n == total:
        return np.arange(total)
    return np.asarray(fpsample.bucket_fps_kdline_sampling(xyz, n, h=5, start_idx=start), dtype=np.int64)


def farthest_point_sample_torch(points: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The same sampling as a vectorised torch loop (n steps of one distance update over all points)."""
    import torch

    total = len(points)
    if n > total:
        raise ValueError(f"farthest-point sampling asked for {n} points, but only {total} are available")
    xyz = torch.from_numpy(np.ascontiguousarray(points[:, :3], dtype=np.float32))
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = int(np.random.default_rng(seed).integers(total))
    distance = torch.full((total,), float("inf"))
    for i in range(1, n):
        distance = torch.minimum(distance, (xyz - xyz[chosen[i - 1]]).square().sum(-1))
        chosen[i] = distance.argmax()
    return chosen.numpy()


class PointCloudRenderer:
    """Renders `spec.cameras` of (model, data) to one cropped, farthest-point-sampled cloud."""

    def __init__(self, model: mujoco.MjModel, spec: PointCloudSpec, env_name: str) -> None:
        check_gl_backend()
        check_cameras(model, spec.cameras, env_name)
        self.model, self.spec, self.env_name = model, spec, env_name
        self._ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in spec.cameras]
        self._renderer = mujoco.Renderer(model, height=spec.image_size, width=spec.image_size)

    def points(self, data: mujoco.MjData) -> np.ndarray:
        """Every in-crop point of every camera, before sampling: (M, 3) or (M, 6) float32."""
        clouds = []
        for i, camera_id in enumerate(self._ids):
            moved = self.spec.camera_positions[i] if self.spec.camera_positions else None
            saved = self.model.cam_pos[camera_id].copy()
            if moved is not None:  # render from the spec's position; the camera's orientation is the model's
                self.model.cam_pos[camera_id] = moved
                mujoco.mj_camlight(self.model, data)
            try:
                clouds.append(self._camera_points(data, camera_id))
            finally:
                if moved is not None:
                    self.model.cam_pos[camera_id] = saved
                    mujoco.mj_camlight(self.model, data)
        return np.concatenate(clouds)

    def _camera_points(self, data: mujoco.MjData, camera_id: int) -> np.ndarray:
        size = self.spec.image_size
        self._renderer.update_scene(data, camera=camera_id)
        self._renderer.enable_depth_rendering()
        depth = self._renderer.render()
        self._renderer.disable_depth_rendering()
        focal, cx, cy = camera_intrinsics(self.model, camera_id, size, size)
        xyz = unproject(depth, focal, cx, cy, data.cam_xpos[camera_id], data.cam_xmat[camera_id].reshape(3, 3))
        keep = self.spec.crop.contains(xyz)
        cloud = xyz[keep]
        if self.spec.rgb:
            colour = self._renderer.render().reshape(-1, 3)[keep] / 255.0
            cloud = np.concatenate([cloud, colour], axis=1)
        return cloud.astype(np.float32)

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        cloud = self.points(data)
        if len(cloud) == 0:
            raise ValueError(
                f"{self.env_name}: the point-cloud crop box low={self.spec.crop.low} high={self.spec.crop.high} kept no point "
                f"from cameras {list(self.spec.cameras)}; widen the box or check the cameras"
            )
        if len(cloud) < self.spec.n_points:
            raise ValueError(
                f"{self.env_name}: point_cloud needs {self.spec.n_points} points, but only {len(cloud)} of cameras "
                f"{list(self.spec.cameras)} at {self.spec.image_size}px fall inside the crop box; lower n_points or raise image_size"
            )
        return {POINT_CLOUD_KEY: np.ascontiguousarray(cloud[farthest_point_sample(cloud, self.spec.n_points)])}

    def spaces(self) -> dict[str, gym.spaces.Box]:
        return {POINT_CLOUD_KEY: self.spec.space()}

    def close(self) -> None:
        self._renderer.close()


def point_cloud_spec(default: PointCloudSpec, cameras: Sequence[str] = (), n_points: int | None = None, rgb: bool | None = None, image_size: int | None = None) -> PointCloudSpec:
    """A suite's default spec with the caller's overrides (empty / None keeps the default)."""
    from dataclasses import replace

    moved = bool(cameras) and tuple(cameras) != default.cameras
    return replace(
        default,
        cameras=tuple(cameras) or default.cameras,
        camera_positions=() if moved else default.camera_positions,  # positions belong to the default cameras
        n_points=default.n_points if n_points is None else n_points,
        rgb=default.rgb if rgb is None else rgb,
        image_size=default.image_size if image_size is None else image_size,
    )


def spec_to_attrs(spec: PointCloudSpec) -> dict:
    """The spec as JSON-able store attrs (`point_cloud` of a store written by data.collect)."""
    return {
        "cameras": list(spec.cameras), "image_size": spec.image_size, "n_points": spec.n_points, "rgb": spec.rgb,
        "crop_low": list(spec.crop.low), "crop_high": list(spec.crop.high), "camera_positions": [list(p) for p in spec.camera_positions],
    }


def spec_from_policy_config(config: object) -> PointCloudSpec:
    """The cloud a point-cloud policy was trained on, rebuilt from its config (train.py copied it from the store)."""
    key, shape = config.point_cloud_key, tuple(config.point_cloud_shape)
    if not config.point_cloud_cameras or len(config.point_cloud_crop) != 6:
        raise ValueError(
            f"this policy reads {key!r}, but its config does not record how the cloud was rendered (cameras, crop box): "
            "it was trained on a store without `point_cloud` attrs, so no env can render the same cloud"
        )
    positions = tuple(config.point_cloud_camera_positions)
    return PointCloudSpec(
        cameras=tuple(config.point_cloud_cameras), crop=CropBox(tuple(config.point_cloud_crop[:3]), tuple(config.point_cloud_crop[3:])),
        n_points=int(shape[0]), image_size=int(config.point_cloud_image_size), rgb=shape[1] == 6,
        camera_positions=tuple(tuple(positions[i : i + 3]) for i in range(0, len(positions), 3)),
    )
