"""Fields every policy config shares: which store keys it reads, their sizes, and their normalization."""

from __future__ import annotations

from dataclasses import dataclass

from core.observability import check_declared

TASK_KEY = "task"
"""State key of the task one-hot in multi-task stores and observations."""
ENV_STATE_KEY = "env"
"""Placeholder in `state_keys` for the env's recommended state keys (envs.make.env_properties: Meta-World's state
plus relative vectors, robosuite's state). train.py replaces it before it reads any data, so a checkpoint always
names its real keys; the state presets use it so that one preset fits every suite."""


@dataclass(frozen=True)
class PolicyIOConfig:
    state_keys: tuple[str, ...] = ("state",)
    """Low-dim observation keys in the store, concatenated per step in this order ("env": the env's recommended
    keys, resolved by train.py)."""
    state_dims: tuple[int, ...] = ()
    """Feature size of each state key, same order as `state_keys` (train.py fills it from the store)."""
    action_key: str = "action"
    """Action key in the store."""
    action_dim: int = 0
    """Action size (train.py fills it from the store)."""
    state_norm: str = "min_max"
    """Normalization of states: min_max (to [-1, 1]), mean_std or identity."""
    action_norm: str = "min_max"
    """Normalization of actions; min_max keeps actions in the [-1, 1] range the policies clip to."""

    # --- cameras (empty image_keys: a state-only policy) ---
    image_keys: tuple[str, ...] = ()
    """Camera keys in the store and in env observations, uint8 (H, W, C) per step, e.g. image_corner2."""
    image_shape: tuple[int, ...] = ()
    """(H, W, C) shared by every image key (train.py fills it from the store)."""
    crop_shape: tuple[int, ...] = ()
    """(h, w) random crop in training and center crop at inference; empty: about 90% of each side."""
    vision_encoder: str = "resnet18"
    """Per-camera convolutional trunk: resnet18 (ResNet-18 with GroupNorm, the diffusion_policy / robomimic
    encoder) or conv (4 conv layers of 32-64 channels, about 8x fewer multiply-adds; bench/camera_success.py)."""
    vision_keypoints: int = 32
    """Spatial-softmax keypoints per camera."""
    vision_feature_dim: int = 64
    """Features per camera after the linear layer."""
    vision_backbone_weights: str | None = None
    """Local ResNet-18 weights (.pth state dict or .safetensors) to start from; None trains from scratch.
    Read once when training starts; checkpoints carry the trained weights."""

    # --- point cloud (None: no point cloud) ---
    point_cloud_key: str | None = None
    """Point-cloud key in the store and in env observations, float32 (N, 3) XYZ or (N, 6) XYZ + RGB per step."""
    point_cloud_shape: tuple[int, ...] = ()
    """(N, 3) or (N, 6) (train.py fills it from the store)."""
    point_cloud_cameras: tuple[str, ...] = ()
    """Cameras the cloud was rendered from (train.py copies them from the store, so eval.py renders the same cloud)."""
    point_cloud_image_size: int = 0
    """Depth-render side in pixels per camera (train.py copies it from the store)."""
    point_cloud_crop: tuple[float, ...] = ()
    """World-frame crop box, low xyz then high xyz (train.py copies it from the store)."""
    point_cloud_camera_positions: tuple[float, ...] = ()
    """Camera positions the cloud was rendered from, xyz per camera (empty: the model's; copied from the store)."""
    point_encoder: str = "dp3"
    """Point-cloud encoder (policies/pointcloud.py): dp3 (DP3's per-point MLP, max-pool, LayerNorm)."""
    point_hidden_dims: tuple[int, ...] = (64, 128, 256)
    """Per-point MLP widths of the point encoder."""
    point_feature_dim: int = 64
    """Features per step from the point cloud."""

    observability: str = ""
    """privileged, goal_hidden or sensor_only (core/observability.py): derived from the keys and stored by
    train.py. A preset may declare the class it intends; a config whose keys give another class is refused."""

    # --- multi-task (empty: a single-task policy) ---
    task_names: tuple[str, ...] = ()
    """Envs of a multi-task policy, in task-id order. Its state keys then include `task`, the one-hot of the
    env's index here, which the store rows carry in training and `make_env` adds to observations."""

    def __post_init__(self) -> None:
        if len(self.state_dims) not in (0, len(self.state_keys)):
            raise ValueError(f"state_dims {self.state_dims} must give one size per state key {self.state_keys}")
        if not self.state_keys and not self.image_keys and not self.point_cloud_key:
            raise ValueError("a policy needs at least one state, image or point-cloud key")
        if self.image_shape and (len(self.image_shape) != 3 or self.image_shape[2] != 3):
            raise ValueError(f"image_shape {self.image_shape} must be (H, W, 3)")
        from policies.vision import VISION_ENCODERS

        if self.vision_encoder not in VISION_ENCODERS:
            raise ValueError(f"unknown vision_encoder {self.vision_encoder!r}; valid: {list(VISION_ENCODERS)}")
        if self.crop_shape and len(self.crop_shape) != 2:
            raise ValueError(f"crop_shape {self.crop_shape} must be (h, w)")
        if self.crop_shape and self.image_shape and any(c > s for c, s in zip(self.crop_shape, self.image_shape)):
            raise ValueError(f"crop_shape {self.crop_shape} is larger than image_shape {self.image_shape}")
        from policies.pointcloud import POINT_ENCODERS

        if self.point_encoder not in POINT_ENCODERS:
            raise ValueError(f"unknown point_encoder {self.point_encoder!r}; valid: {list(POINT_ENCODERS)}")
        if self.point_cloud_shape and (len(self.point_cloud_shape) != 2 or self.point_cloud_shape[1] not in (3, 6)):
            raise ValueError(f"point_cloud_shape {self.point_cloud_shape} must be (N, 3) or (N, 6)")
        if self.point_cloud_crop and len(self.point_cloud_crop) != 6:
            raise ValueError(f"point_cloud_crop {self.point_cloud_crop} must be 6 numbers: low xyz, then high xyz")
        check_declared(self.observability, self.obs_keys, type(self).__name__)
        if self.task_names and TASK_KEY not in self.state_keys:
            raise ValueError(f"task_names {self.task_names} need the state key {TASK_KEY!r} (the task one-hot); state_keys are {self.state_keys}")

    @property
    def state_dim(self) -> int:
        return sum(self.state_dims)

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """Every observation key the policy reads: state keys, then image keys, then the point cloud."""
        return (*self.state_keys, *self.image_keys, *((self.point_cloud_key,) if self.point_cloud_key else ()))

    @property
    def sensor_keys(self) -> tuple[str, ...]:
        """Keys that enter unnormalized, through an encoder: image keys, then the point cloud."""
        return (*self.image_keys, *((self.point_cloud_key,) if self.point_cloud_key else ()))

    @property
    def resolved_crop_shape(self) -> tuple[int, int]:
        if self.crop_shape:
            return (self.crop_shape[0], self.crop_shape[1])
        return (round(0.9 * self.image_shape[0]), round(0.9 * self.image_shape[1]))

    @property
    def obs_feature_dim(self) -> int:
        """Features per observation step: the state vector, `vision_feature_dim` per camera, the point features."""
        return self.state_dim + len(self.image_keys) * self.vision_feature_dim + (self.point_feature_dim if self.point_cloud_key else 0)

    def normalization_modes(self) -> dict[str, str]:
        return {k: self.state_norm for k in self.state_keys} | {self.action_key: self.action_norm}


# Fields that a policy wrapping a frozen base (DSRL, residual) copies from the base's config.
WRAPPED_BASE_FIELDS = ("state_keys", "state_dims", "action_key", "action_dim", "state_norm", "action_norm", "n_obs_steps", "horizon", "n_action_steps", "task_names")


def require_state_only(config: object, what: str) -> None:
    """RL wrappers read flat state features; refuse camera and point-cloud bases with a clear message."""
    if getattr(config, "image_keys", ()):
        raise ValueError(f"{what} supports state-only base policies; this base reads cameras {config.image_keys}")
    if getattr(config, "point_cloud_key", None):
        raise ValueError(f"{what} supports state-only base policies; this base reads the point cloud {config.point_cloud_key!r}")


def base_fields(base_config: object) -> dict:
    return {f: getattr(base_config, f) for f in WRAPPED_BASE_FIELDS}
