"""Point clouds: unprojection against known geometry, farthest-point sampling, the suites' crop boxes, errors,
the store round trip, the policy contract with a point-cloud encoder, and sensor-only observability."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mujoco
import numpy as np
import pytest
import torch

from core.observability import observability
from data.store import EpisodeStore
from envs import metaworld
from envs.make import make_env
from envs.pointcloud import (
    CropBox,
    PointCloudRenderer,
    PointCloudSpec,
    camera_intrinsics,
    farthest_point_sample,
    farthest_point_sample_torch,
    unproject,
)
from policies import DiffusionConfig, DiffusionPolicy, Policy, VQBeTConfig
from policies.base import make_policy

BOX_XML = """
<mujoco>
  <visual><map znear="0.01" zfar="50"/></visual>
  <worldbody>
    <body name="box" pos="0.2 -0.1 0.3" euler="10 -5 30"><geom type="box" size="0.1 0.05 0.08"/></body>
    <camera name="side" pos="1.2 0.4 0.9" xyaxes="-0.45 0.9 0 -0.35 -0.2 0.9" fovy="50"/>
    <camera name="top" pos="0.1 0.0 1.5" xyaxes="1 0 0 0 1 0" fovy="40"/>
  </worldbody>
</mujoco>"""
HALF = np.array([0.1, 0.05, 0.08])


@pytest.mark.parametrize("camera,height,width", [("side", 96, 128), ("top", 64, 64)])
def test_unprojected_depth_lies_on_the_faces_of_a_known_box(camera, height, width):
    model = mujoco.MjModel.from_xml_string(BOX_XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    renderer = mujoco.Renderer(model, height, width)
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    renderer.update_scene(data, camera=cam)
    renderer.enable_depth_rendering()
    depth = renderer.render()
    renderer.close()
    points = unproject(depth, *camera_intrinsics(model, cam, height, width), data.cam_xpos[cam], data.cam_xmat[cam].reshape(3, 3))
    hit = depth.reshape(-1) < 10.0  # the rest is background at the far plane
    assert hit.sum() > 100
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "box")
    local = (points[hit] - data.xpos[body]) @ data.xmat[body].reshape(3, 3)  # box frame
    distance_to_surface = np.abs(np.max(np.abs(local) - HALF, axis=1))
    assert distance_to_surface.max() < 1e-3, f"{distance_to_surface.max() * 1000:.3f} mm off the box"
    faces = {(axis, sign) for axis, sign in zip(np.argmax(np.abs(local) / HALF, axis=1), np.sign(local[np.arange(len(local)), np.argmax(np.abs(local) / HALF, axis=1)]))}
    assert len(faces) >= (2 if camera == "side" else 1)  # the oblique view sees two faces, the top one


def test_farthest_point_sampling_is_distinct_deterministic_and_covers_like_exact_fps():
    import fpsample

    points = np.random.default_rng(0).normal(size=(3000, 3)).astype(np.float32)
    a = farthest_point_sample(points, 256, seed=3)
    assert len(np.unique(a)) == 256 and a.min() >= 0 and a.max() < 3000
    np.testing.assert_array_equal(a, farthest_point_sample(points, 256, seed=3))
    exact = farthest_point_sample_torch(points, 256, seed=3)
    start = int(np.random.default_rng(3).integers(3000))
    np.testing.assert_array_equal(exact, fpsample.fps_sampling(points, 256, start_idx=start))  # the torch loop is exact FPS
    assert exact[0] == start and not np.array_equal(exact, farthest_point_sample_torch(points, 256, seed=4))

    def coverage(idx: np.ndarray) -> float:  # what FPS minimises: the farthest any point is from its nearest sample
        return float(np.linalg.norm(points[:, None] - points[idx][None], axis=-1).min(axis=1).max())

    assert coverage(a) < 1.25 * coverage(exact)  # the bucket (QuickFPS) default is as good as exact
    assert coverage(a) < 0.75 * coverage(np.random.default_rng(1).choice(3000, 256, replace=False))  # and beats random
    with pytest.raises(ValueError, match="asked for 3001 points, but only 3000"):
        farthest_point_sample(points, 3001)


@pytest.fixture(scope="module")
def push_env():
    env = make_env("metaworld/push-v3", point_cloud=metaworld.POINT_CLOUD)
    env.reset(seed=5)
    yield env
    env.close()


def test_metaworld_crop_removes_the_table_and_the_robot_base(push_env):
    """From corner2's own (far) position, which sees the whole robot, with and without the suite's box."""
    sim = push_env.unwrapped._env
    far = replace(metaworld.POINT_CLOUD, camera_positions=())
    everything = PointCloudRenderer(sim.model, replace(far, crop=CropBox((-5, -5, -5), (5, 5, 5))), "uncropped")
    cropped = PointCloudRenderer(sim.model, far, "cropped")
    raw, cloud = everything.points(sim.data), cropped.points(sim.data)
    everything.close()
    cropped.close()
    base = sim.data.xpos[mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_BODY, "pedestal")]
    on_table = lambda p: np.abs(p[:, 2]) < 2e-3  # noqa: E731  (the table top is the plane z = 0)
    near_base = lambda p: np.linalg.norm(p[:, :2] - base[:2], axis=1) < 0.15  # noqa: E731
    assert on_table(raw).sum() > 100 and near_base(raw).sum() > 20  # uncropped, the camera sees both
    assert on_table(cloud).sum() == 0 and near_base(cloud).sum() == 0
    obs, _ = push_env.reset(seed=5)
    assert obs["point_cloud"].shape == (512, 3) and obs["point_cloud"].dtype == np.float32
    assert len(np.unique(obs["point_cloud"], axis=0)) == 512
    np.testing.assert_array_equal(obs["point_cloud"], push_env.reset(seed=5)[0]["point_cloud"])  # a function of the state


def test_robosuite_makes_clouds_through_the_same_code():
    from envs.robosuite import POINT_CLOUD

    env = make_env("robosuite/Lift", point_cloud=POINT_CLOUD)
    obs, _ = env.reset(seed=0)
    cube = env.unwrapped.raw_obs["cube_pos"]
    env.close()
    cloud = obs["point_cloud"]
    assert cloud.shape == (512, 3) and cloud[:, 2].min() > 0.8  # above the table top
    assert (np.linalg.norm(cloud - cube, axis=1) < 0.04).sum() >= 3  # the cube is in it


def test_clear_errors_for_an_unknown_camera_an_empty_crop_and_too_many_points(push_env):
    with pytest.raises(ValueError, match="has no camera 'nope'; available cameras: .*corner2"):
        make_env("metaworld/push-v3", point_cloud=replace(metaworld.POINT_CLOUD, cameras=("nope",), camera_positions=()))
    sim = push_env.unwrapped._env
    empty = PointCloudRenderer(sim.model, replace(metaworld.POINT_CLOUD, crop=CropBox((5, 5, 5), (6, 6, 6))), "metaworld/push-v3")
    with pytest.raises(ValueError, match=r"crop box low=\(5, 5, 5\) high=\(6, 6, 6\) kept no point from cameras \['corner2'\]"):
        empty.render(sim.data)
    greedy = PointCloudRenderer(sim.model, replace(metaworld.POINT_CLOUD, n_points=100_000), "metaworld/push-v3")
    with pytest.raises(ValueError, match=r"point_cloud needs 100000 points, but only \d+ of cameras \['corner2'\]"):
        greedy.render(sim.data)
    with pytest.raises(ValueError, match="one \\(x, y, z\\) per camera"):
        PointCloudSpec(cameras=("a", "b"), crop=metaworld.POINT_CLOUD.crop, camera_positions=((0, 0, 0),))


def test_store_round_trips_the_point_cloud_and_records_how_it_was_made(point_cloud_demos):
    store = EpisodeStore.open(point_cloud_demos)
    episode = store.get_episode(0)
    assert episode["point_cloud"].shape[1:] == (512, 3) and episode["point_cloud"].dtype == np.float32
    source = store.attrs["point_cloud"]
    assert source["cameras"] == ["corner2"] and source["n_points"] == 512 and source["camera_positions"] == [[0.6, 0.295, 0.8]]
    env = make_env("metaworld/push-v3", point_cloud=metaworld.POINT_CLOUD)
    first, _ = env.reset(seed=store.attrs["episode_seeds"][0])
    env.close()
    np.testing.assert_array_equal(episode["point_cloud"][0], first["point_cloud"])  # the stored cloud is the env's


def test_inspect_summarises_and_draws_point_clouds(point_cloud_demos, tmp_path):
    from data.inspect import InspectConfig, inspect_store

    text, written = inspect_store(InspectConfig(point_cloud_demos, out_dir=tmp_path))
    assert "point_cloud: 512 points per step, x [" in text and "z [0.0" in text
    picture = tmp_path / "points_point_cloud.png"
    assert picture in written and picture.stat().st_size > 10_000


# ---- observability --------------------------------------------------------------------------------


def test_observability_is_derived_from_the_keys_and_a_wrong_declaration_is_refused():
    assert observability(["state", "relative"]) == "privileged"
    assert observability(["state_goal_hidden", "proprio"]) == "goal_hidden"
    assert observability(["proprio", "point_cloud", "image_corner2", "task"]) == "sensor_only"
    assert observability(["proprio", "mystery"]) == "privileged"  # unknown keys never pass as sensor-only
    with pytest.raises(ValueError, match=r"declared observability 'sensor_only', but the keys \['proprio', 'state'\] make it 'privileged'; keys \['state'\]"):
        DiffusionConfig(state_keys=("proprio", "state"), observability="sensor_only")
    with pytest.raises(ValueError, match="declared observability 'sensor_only'"):
        VQBeTConfig(state_keys=("relative",), observability="sensor_only")


def test_a_checkpoint_whose_keys_contradict_its_observability_does_not_load(tiny_pointcloud_checkpoint, tmp_path):
    import shutil

    from core.io import CheckpointError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_pointcloud_checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["config"]["observability"] == "sensor_only"
    config["config"]["state_keys"], config["config"]["state_dims"] = ["state"], [39]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises((CheckpointError, ValueError), match="declared observability 'sensor_only'"):
        Policy.from_pretrained(ckpt)


def test_sensor_only_inputs_do_not_change_when_only_the_object_pose_does(tiny_pointcloud_checkpoint):
    """Move the puck in the simulator: the privileged keys change, proprio does not. Then give the policy the
    moved state with the original pixels and points: its inputs, and so its actions, stay bit-identical."""
    from envs.rollout import SelectActionController

    policy = Policy.from_pretrained(tiny_pointcloud_checkpoint)
    assert policy.config.observability == "sensor_only"
    env = make_env("metaworld/push-v3", point_cloud=metaworld.POINT_CLOUD, cameras=("corner2",))
    before, _ = env.reset(seed=7)
    sim = env.unwrapped._env
    obj = sim.model.jnt_qposadr[sim.model.body_jntadr[mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_BODY, "obj")]]
    sim.data.qpos[obj : obj + 3] += [0.08, -0.05, 0.0]
    mujoco.mj_forward(sim.model, sim.data)
    moved = env.unwrapped._observation(sim._get_obs())
    env.close()
    assert not np.array_equal(moved["state"], before["state"]) and not np.array_equal(moved["relative"], before["relative"])
    np.testing.assert_array_equal(moved["proprio"], before["proprio"])  # proprio holds no object pose
    assert not np.array_equal(moved["point_cloud"], before["point_cloud"])  # the points do see the move
    spliced = {**moved, "point_cloud": before["point_cloud"], "image_corner2": before["image_corner2"]}

    def act(obs):
        controller = SelectActionController(policy)
        policy.reset()
        torch.manual_seed(0)
        return controller.actions({k: v[None] for k, v in obs.items()}, np.zeros(1, bool), 0)

    np.testing.assert_array_equal(act(spliced), act(before))
    torch.manual_seed(0)
    assert not np.array_equal(act({**before, "point_cloud": moved["point_cloud"]}), act(before))  # the points do matter


# ---- the policy contract --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["diffusion", "vqbet"])
def test_point_cloud_policies_save_load_strictly_and_act_identically(kind, tmp_path):
    from data.normalize import Normalizer

    common = dict(state_keys=("proprio",), state_dims=(4,), action_dim=4, point_cloud_key="point_cloud", point_cloud_shape=(64, 3),
                  point_hidden_dims=(16, 32), point_feature_dim=8, horizon=8, n_action_steps=4)
    config = (
        DiffusionConfig(**common, backbone="mlp", objective="flow", inference_scheduler="euler", num_inference_steps=2, mlp_hidden_dim=32, mlp_blocks=1, diffusion_step_embed_dim=8)
        if kind == "diffusion" else
        VQBeTConfig(**common, vq_train_steps=0, vq_latent_dim=8, vq_hidden_dim=16, gpt_layers=1, gpt_heads=2, gpt_dim=16, head_hidden_dim=16, action_chunk_size=4)
    )
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"proprio": rng.normal(size=(50, 4)), "action": rng.uniform(-1, 1, (50, 4))}, config.normalization_modes())
    torch.manual_seed(0)
    policy = make_policy(config, normalizer).eval()
    policy.finish_training_phases()
    obs = {"proprio": torch.randn(2, 2, 4), "point_cloud": torch.randn(2, 2, 64, 3)}
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert loaded.fingerprint() == policy.fingerprint() and loaded.points is not None
    torch.manual_seed(1)
    a = policy.predict_action_chunk(obs)
    torch.manual_seed(1)
    assert torch.equal(a, loaded.predict_action_chunk(obs))
    shuffled = {**obs, "point_cloud": obs["point_cloud"][:, :, torch.randperm(64)]}
    torch.manual_seed(1)
    torch.testing.assert_close(policy.predict_action_chunk(shuffled), a, rtol=1e-5, atol=1e-5)  # max-pool: order does not matter
    with pytest.raises(ValueError, match=r"point cloud 'point_cloud' has shape \(2, 2, 32, 3\), expected \(B, T, 64, 3\)"):
        policy.predict_action_chunk({**obs, "point_cloud": obs["point_cloud"][:, :, :32]})
    weights = tmp_path / "ckpt" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    state.pop(next(k for k in state if k.startswith("points.")))
    save_file(state, weights)
    from core.io import CheckpointError

    with pytest.raises(CheckpointError, match="missing"):
        Policy.from_pretrained(tmp_path / "ckpt")


def test_format_5_checkpoint_loads_with_the_same_chunk_and_fingerprint():
    """Written by the code before point clouds (format 5): it loads under format 6, computes the same chunk, and
    keeps its fingerprint (the new fields at their defaults are left out of the hash)."""
    from golden_values import assert_matches_golden

    ckpt = Path(__file__).parent / "golden" / "checkpoints" / "diffusion_v5"
    assert json.loads((ckpt / "config.json").read_text())["format_version"] == 5
    expected = json.loads((ckpt / "expected.json").read_text())
    policy = Policy.from_pretrained(ckpt)
    assert policy.config.point_cloud_key is None and policy.config.observability == ""
    chunk = policy.predict_action_chunk({k: torch.tensor(v) for k, v in expected["obs"].items()}, noise=torch.tensor(expected["noise"]))
    assert_matches_golden(chunk, expected["chunk"], "diffusion_v5 chunk")
    assert policy.fingerprint() == expected["fingerprint"]
