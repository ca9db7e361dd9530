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
