"""Camera encoders: ResNet-18 with GroupNorm, spatial-softmax keypoints, a linear projection; one per camera.

This is the diffusion_policy / robomimic visual core. BatchNorm is replaced by GroupNorm (batch statistics
misbehave with small batches and EMA weights). Images enter as uint8 (..., H, W, C) in env layout; training
takes an independent random crop per image, inference the center crop. Weights start random: pretrained
ImageNet weights cannot be downloaded here, but `load_backbone_weights` takes a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from einops import rearrange
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet18_groupnorm() -> nn.Sequential:
    """torchvision's ResNet-18 with GroupNorm (16 channels per group), without its pooling and classifier."""
    net = torchvision.models.resnet18(weights=None, norm_layer=lambda channels: nn.GroupNorm(channels // 16, channels))
    return nn.Sequential(*list(net.children())[:-2])


def small_conv() -> nn.Sequential:
    """Four 3x3 conv layers (32, 32, 64, 64 channels, strides 2, 1, 2, 1) with GroupNorm: the cheap trunk.
    About 27 M multiply-adds on a 76x76 crop against about 210 M for ResNet-18."""
    layers: list[nn.Module] = []
    channels = 3
    for out, stride in ((32, 2), (32, 1), (64, 2), (64, 1)):
        layers += [nn.Conv2d(channels, out, kernel_size=3, stride=stride), nn.GroupNorm(out // 16, out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers)


VISION_ENCODERS = {"resnet18": resnet18_groupnorm, "conv": small_conv}
"""vision_encoder name -> trunk constructor (uint8-normalized (N, 3, h, w) -> feature map (N, C, h', w'))."""


class SpatialSoftmax(nn.Module):
    """Feature map (B, C, H, W) -> expected image coordinates of `num_keypoints` learned heatmaps (B, 2K)."""

    def __init__(self, in_channels: int, height: int, width: int, num_keypoints: int) -> None:
        super().__init__()
        self.heatmaps = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1), persistent=False)  # (HW, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        attention = self.heatmaps(features).flatten(2).softmax(dim=-1)  # (B, K, HW)
        return (attention @ self.grid).flatten(1)  # (B, K*2)


def crop(images: torch.Tensor, size: tuple[int, int], random: bool) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, h, w): an independent random window per image, or the center window."""
    n, _, height, width = images.shape
    h, w = size
    if (h, w) == (height, width):
        return images
    if not random:
        top, left = (height - h) // 2, (width - w) // 2
        return images[:, :, top : top + h, left : left + w]
    top = torch.randint(0, height - h + 1, (n, 1, 1), device=images.device)
    left = torch.randint(0, width - w + 1, (n, 1, 1), device=images.device)
    rows = top + torch.arange(h, device=images.device)[None, :, None]  # (N, h, 1)
    cols = left + torch.arange(w, device=images.device)[None, None, :]  # (N, 1, w)
    picked = images.permute(0, 2, 3, 1)[torch.arange(n, device=images.device)[:, None, None], rows, cols]  # (N, h, w, C)
    return picked.permute(0, 3, 1, 2)


class CameraEncoder(nn.Module):
    """One camera: crop -> trunk (ResNet-18 or small conv) -> spatial softmax -> linear, (N, H, W, C) uint8 -> (N, feature_dim)."""

    def __init__(self, image_shape: tuple[int, int, int], crop_shape: tuple[int, int], num_keypoints: int, feature_dim: int, trunk: str = "resnet18") -> None:
        super().__init__()
        self.crop_shape = crop_shape
        self.backbone = VISION_ENCODERS[trunk]()
        with torch.no_grad():
            fmap = self.backbone(torch.zeros(1, image_shape[2], *crop_shape))
        self.pool = SpatialSoftmax(fmap.shape[1], fmap.shape[2], fmap.shape[3], num_keypoints)
        self.out = nn.Linear(2 * num_keypoints, feature_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = rearrange(images, "n h w c -> n c h w").float() / 255.0
        x = crop(x, self.crop_shape, random=self.training)
        x = (x - self.mean) / self.std
        return self.out(self.pool(self.backbone(x)))


class MultiCameraEncoder(nn.Module):
    """One `CameraEncoder` per image key; per-step features concatenated in key order."""

    def __init__(
        self, image_keys: tuple[str, ...], image_shape: tuple[int, int, int], crop_shape: tuple[int, int], num_keypoints: int, feature_dim: int, trunk: str = "resnet18"
    ) -> None:
        super().__init__()
        self.image_keys = image_keys
        self.image_shape = tuple(image_shape)
        # ModuleDict keys may not contain dots; store keys usually do not, but be safe.
        self.cameras = nn.ModuleDict({_module_name(k): CameraEncoder(image_shape, crop_shape, num_keypoints, feature_dim, trunk) for k in image_keys})

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs[key]: (B, T, H, W, C) -> (B, T, n_cameras * feature_dim)."""
        features = []
        for key in self.image_keys:
            images = obs[key]
            if images.ndim != 5 or tuple(images.shape[2:]) != self.image_shape:
                raise ValueError(f"image {key!r} has shape {tuple(images.shape)}, expected (B, T, {', '.join(map(str, self.image_shape))}) uint8 (H, W, C)")
            if images.dtype != torch.uint8:
                raise ValueError(f"image {key!r} has dtype {images.dtype}, expected torch.uint8 pixels in 0..255")
            encoded = self.cameras[_module_name(key)](images.flatten(0, 1))
            features.append(encoded.view(images.shape[0], images.shape[1], -1))
        return torch.cat(features, dim=-1)


def _module_name(key: str) -> str:
    return key.replace(".", "_")


def load_backbone_weights(encoder: MultiCameraEncoder, path: str | Path) -> list[str]:
    """Initialise every camera's ResNet-18 from a local file: a torchvision resnet18 state dict (.pth, read
    with weights_only=True, no pickle execution) or .safetensors. BatchNorm affine weights map onto the
    GroupNorm ones; running statistics and the classifier are dropped. Returns the ignored keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vision backbone weights {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # torchvision names: conv1.*, bn1.*, layer1.* ... fc.*; our Sequential numbers the same children 0..7.
    order = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    renamed, ignored = {}, []
    for name, tensor in state.items():
        head, _, rest = name.partition(".")
        if head not in order or name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            ignored.append(name)
            continue
        renamed[f"{order.index(head)}.{rest}"] = tensor
    for camera in encoder.cameras.values():
        missing, unexpected = camera.backbone.load_state_dict(renamed, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: not a ResNet-18 state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return ignored
