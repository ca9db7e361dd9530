import os

os.environ.setdefault("MUJOCO_GL", "egl")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def push_demos(tmp_path_factory) -> Path:
    """Two real scripted push-v3 demos in a zarr store, shared by the tests that need data."""
    from data.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("demos") / "push.zarr"
    collect(CollectConfig(env="metaworld/push-v3", episodes=2, out=path), progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_dp_checkpoint(tmp_path_factory, push_demos) -> Path:
    """A tiny Diffusion Policy (2 training steps on the push demos): a real base for the RL tests."""
    import train

    run_dir = tmp_path_factory.mktemp("tiny_dp") / "run"
    train.main(["tiny", "--env", "metaworld/push-v3", "--run-dir", str(run_dir), "--dataset", str(push_demos), "--steps", "2", "--eval-episodes", "0"])
    return (run_dir / "checkpoints" / "last").resolve()


@pytest.fixture(scope="session")
def mismatched_dp_checkpoint(tmp_path_factory) -> Path:
    """A Diffusion Policy checkpoint for 20-D states: it fits no Meta-World task (39-D)."""
    import numpy as np

    from data.normalize import Normalizer
    from policies import DiffusionConfig, DiffusionPolicy

    cfg = DiffusionConfig(state_dims=(20,), action_dim=4, down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=16, horizon=8, n_action_steps=4, num_inference_steps=3)
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"state": rng.normal(size=(50, 20)), "action": rng.uniform(-1, 1, (50, 4))}, cfg.normalization_modes())
    path = tmp_path_factory.mktemp("mismatched") / "base"
    DiffusionPolicy(cfg, normalizer).save_pretrained(path)
    return path
