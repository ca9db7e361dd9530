"""Several stores in one training run; stores from different envs make a multi-task policy with a task one-hot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train
from data.training import load_datasets
from policies.training import PRESETS
from data.frames import ConcatFrames
from data.store import EpisodeStore, StoreError
from envs.make import TASK_KEY as ENV_TASK_KEY
from envs.make import make_env
from policies.base import Policy
from policies.io_config import TASK_KEY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory) -> Path:
    from data.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("reach") / "reach.zarr"
    collect(CollectConfig(env="metaworld/reach-v3", episodes=2, out=path), progress=False)
    return path


def test_task_key_is_the_same_constant_in_envs_and_policies():
    assert ENV_TASK_KEY == TASK_KEY


def test_two_envs_train_a_multitask_policy_that_evaluates_on_each_task(tmp_path, push_demos, reach_demos):
    run_dir = tmp_path / "mt"
    train.main(["tiny", "--env", "metaworld/push-v3", "--dataset", str(push_demos), str(reach_demos), "--run-dir", str(run_dir), "--eval-episodes", "0"])
    policy = Policy.from_pretrained(run_dir / "checkpoints" / "last")
    assert policy.config.task_names == ("metaworld/push-v3", "metaworld/reach-v3")
    assert policy.config.state_keys == ("state", TASK_KEY) and policy.config.state_dims == (39, 2)
    stats = policy.normalizer.to_tensors()
    assert stats[f"{TASK_KEY}/min"].tolist() == [0.0, 0.0] and stats[f"{TASK_KEY}/max"].tolist() == [1.0, 1.0]  # both tasks' rows are in the data

    env = make_env("metaworld/reach-v3", **{"task_names": policy.config.task_names})
    obs, _ = env.reset(seed=0)
    assert obs[TASK_KEY].tolist() == [0.0, 1.0] and env.observation_space[TASK_KEY].shape == (2,)
    env.close()

    out = tmp_path / "reach_eval.json"
    proc = subprocess.run([sys.executable, "eval.py", str(run_dir), "--env", "metaworld/reach-v3", "--episodes", "1", "--n-envs", "1", "--max-episode-steps", "8", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "egl"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["env"] == "metaworld/reach-v3"
    with pytest.raises(ValueError, match=r"trained on \['metaworld/push-v3', 'metaworld/reach-v3'\]; metaworld/drawer-open-v3 is not one of them"):
        make_env("metaworld/drawer-open-v3", task_names=policy.config.task_names)


def test_stores_of_one_env_concatenate_without_a_task_key(tmp_path, push_demos):
    data = load_datasets((push_demos, push_demos), PRESETS["tiny"][1].policy)
    one = EpisodeStore.open(push_demos)
    assert data.n_episodes == 2 * one.n_episodes and data.n_steps == 2 * one.n_steps
    assert TASK_KEY not in data.arrays and data.policy_cfg.task_names == ()
    np.testing.assert_array_equal(data.arrays["action"][one.n_steps :], one.load(["action"])["action"])


def test_mismatched_stores_are_refused_naming_both(tmp_path, push_demos):
    other = tmp_path / "wide.zarr"
    store = EpisodeStore.create(other, env_id="metaworld/push-v3", fps=80, source="test")
    store.append_episode({"state": np.zeros((5, 12), np.float32), "action": np.zeros((5, 4), np.float32)})
    with pytest.raises(StoreError, match=r"wide.zarr: does not match .*push.zarr: state_dims \(12,\) vs \(39,\)"):
        load_datasets((push_demos, other), PRESETS["tiny"][1].policy)


def test_concat_frames_reads_across_stores(tmp_path):
    parts = []
    for i in range(2):
        path = tmp_path / f"img{i}.zarr"
        store = EpisodeStore.create(path, env_id="metaworld/push-v3", fps=80, source="test")
        store.append_episode({"image_cam": np.full((3 + i, 4, 4, 3), 10 * i + np.arange(3 + i)[:, None, None, None], np.uint8), "action": np.zeros((3 + i, 4), np.float32)})
        parts.append(EpisodeStore.open(path).frames("image_cam"))
    frames = ConcatFrames(parts)
    assert len(frames) == 7
    got = frames[np.array([[0, 3], [6, 2]])]
    assert got.shape == (2, 2, 4, 4, 3) and got[:, :, 0, 0, 0].tolist() == [[0, 10], [13, 2]]
