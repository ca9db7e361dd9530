"""The robomimic importer on files written here with h5py in robomimic's documented layout."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from data.import_robomimic import ImportConfig, RobomimicFormatError, import_robomimic
from data.store import EpisodeStore

ENV_ARGS = {
    "env_name": "Lift",
    "type": 1,
    "env_kwargs": {
        "control_freq": 20,
        "controller_configs": {"type": "OSC_POSE", "control_delta": True, "input_max": 1, "input_min": -1,
                               "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5], "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5]},
    },
}


def write_robomimic(path: Path, lengths=(7, 5, 9), image: bool = True, env_args=ENV_ARGS) -> list[dict]:
    """data/demo_N/{obs/*, actions, rewards, dones} with env_args in data.attrs; returns what was written."""
    rng = np.random.default_rng(0)
    written = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = sum(lengths)
        for i in sorted(range(len(lengths)), key=lambda k: -k):  # written last-first: the importer sorts demo_N by N
            t = lengths[i]
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = t
            obs = {
                "robot0_eef_pos": rng.normal(size=(t, 3)),
                "robot0_eef_quat": Rotation.random(t, random_state=i).as_quat(),
                "robot0_gripper_qpos": rng.normal(size=(t, 2)),
                "object": rng.normal(size=(t, 10)),
            }
            if image:
                obs["agentview_image"] = rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8)
            for key, value in obs.items():
                demo.create_dataset(f"obs/{key}", data=value)
            actions = rng.uniform(-1, 1, (t, 7))
            demo.create_dataset("actions", data=actions)
            demo.create_dataset("rewards", data=np.zeros(t))
            demo.create_dataset("dones", data=np.eye(1, t, t - 1)[0])
            written.append((i, {"obs": obs, "actions": actions}))
    return [w for _, w in sorted(written, key=lambda x: x[0])]


def test_import_maps_keys_in_demo_order_and_validates(tmp_path):
    src = tmp_path / "lift.hdf5"
    demos = write_robomimic(src)
    store = import_robomimic(ImportConfig(src, tmp_path / "lift.zarr"))
    assert store.attrs["env_id"] == "robosuite/Lift" and store.attrs["fps"] == 20.0
    assert store.attrs["demo_names"] == ["demo_0", "demo_1", "demo_2"] and store.attrs["env_args"] == ENV_ARGS
    assert store.episode_ends.tolist() == [7, 12, 21]
    assert store.key_specs()["image_agentview"].shape == (16, 16, 3) and store.key_specs()["state"].shape == (19,)
    for i, demo in enumerate(demos):
        ep = EpisodeStore.open(tmp_path / "lift.zarr").get_episode(i)
        obs = demo["obs"]
        proprio = np.concatenate([obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["robot0_gripper_qpos"]], axis=1)
        np.testing.assert_allclose(ep["proprio"], proprio, rtol=1e-6)
        np.testing.assert_allclose(ep["state"], np.concatenate([proprio, obs["object"]], axis=1), rtol=1e-6)
        np.testing.assert_array_equal(ep["image_agentview"], obs["agentview_image"])
        np.testing.assert_allclose(ep["action"], demo["actions"], rtol=1e-6)
    assert store.validate() == []


def test_absolute_actions_follow_the_osc_goal(tmp_path):
    src = tmp_path / "lift.hdf5"
    demos = write_robomimic(src, lengths=(6,), image=False)
    store = import_robomimic(ImportConfig(src, tmp_path / "abs.zarr", absolute_actions=True))
    action, obs, delta = store.get_episode(0)["action"], demos[0]["obs"], demos[0]["actions"]
    np.testing.assert_allclose(action[:, :3], obs["robot0_eef_pos"] + 0.05 * delta[:, :3], rtol=1e-5, atol=1e-6)
    for t in range(6):  # goal orientation = R(0.5 * delta rotation) applied to the current orientation
        goal = Rotation.from_rotvec(action[t, 3:6])
        expected = Rotation.from_rotvec(0.5 * delta[t, 3:6]) * Rotation.from_quat(obs["robot0_eef_quat"][t])
        assert (goal.inv() * expected).magnitude() < 1e-5
    np.testing.assert_allclose(action[:, 6], delta[:, 6], rtol=1e-6)
    assert store.attrs["absolute_actions"] is True


def test_bad_robomimic_files_fail_clearly(tmp_path):
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f.create_group("mask")
    with pytest.raises(RobomimicFormatError, match="empty.hdf5: no 'data' group; expected robomimic's data/demo_N"):
        import_robomimic(ImportConfig(empty, tmp_path / "a.zarr"))
    no_actions = tmp_path / "no_actions.hdf5"
    write_robomimic(no_actions, lengths=(4,))
    with h5py.File(no_actions, "a") as f:
        del f["data/demo_0/actions"]
    with pytest.raises(RobomimicFormatError, match=r"no_actions.hdf5:data/demo_0: expected 'actions' and an 'obs' group"):
        import_robomimic(ImportConfig(no_actions, tmp_path / "b.zarr"))
    joint = tmp_path / "joint.hdf5"
    write_robomimic(joint, lengths=(4,), env_args={"env_name": "Lift", "env_kwargs": {"controller_configs": {"type": "JOINT_VELOCITY"}}})
    with pytest.raises(RobomimicFormatError, match="needs an OSC_POSE controller"):
        import_robomimic(ImportConfig(joint, tmp_path / "c.zarr", absolute_actions=True))
    not_hdf5 = tmp_path / "junk.hdf5"
    not_hdf5.write_bytes(b"not an hdf5 file")
    with pytest.raises(RobomimicFormatError, match="junk.hdf5: not a readable hdf5 file"):
        import_robomimic(ImportConfig(not_hdf5, tmp_path / "d.zarr"))
    assert not any(p.suffix == ".zarr" or ".zarr.tmp" in p.name for p in tmp_path.iterdir())  # nothing half-written
