"""The policy and global batch shared by the DDP gradient test and its torchrun worker."""

from pathlib import Path

import numpy as np
import torch

from data.training import load_training_data
from data.normalize import Normalizer
from data.sampler import WindowSampler
from policies import DiffusionConfig, DiffusionPolicy
from policies.base import window_offsets

TINY = DiffusionConfig(down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=16, horizon=8, n_action_steps=4, num_inference_steps=3)


def tiny_policy(store: Path) -> DiffusionPolicy:
    _, arrays, cfg = load_training_data(store, TINY)
    torch.manual_seed(0)
    return DiffusionPolicy(cfg, Normalizer.fit(arrays, cfg.normalization_modes()))


def global_batch(store: Path, policy: DiffusionPolicy, size: int) -> dict[str, torch.Tensor]:
    """`size` windows drawn the way train.py draws them, plus fixed diffusion noise and timesteps."""
    st, arrays, cfg = load_training_data(store, TINY)
    sampler = WindowSampler(arrays, st.episode_ends, window_offsets(cfg))
    ids = np.random.default_rng(0).integers(0, len(sampler), size)
    batch = {k: torch.from_numpy(v) for k, v in sampler.sample(ids).items()}
    gen = torch.Generator().manual_seed(1)
    batch["noise"] = torch.randn(size, cfg.horizon, cfg.action_dim, generator=gen)
    batch["timesteps"] = torch.randint(0, cfg.num_train_timesteps, (size,), generator=gen)
    return batch
