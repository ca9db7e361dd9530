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
