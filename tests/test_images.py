"""Cameras, image stores, the vision encoder and an image policy trained and evaluated on a real env."""

import json
from pathlib import Path

import mujoco
import numpy as np
import pytest
import torch

from data.frames import LazyFrames
from data.training import load_training_data
from data.store import EpisodeStore, StoreError
from envs.make import make_env
from policies import DiffusionConfig, VQBeTConfig, make_policy
from policies.base import Policy
from policies.vision import MultiCameraEncoder, crop


@pytest.fixture(scope="module")
def camera_demos(tmp_path_factory) -> Path:
    """Two real button-press demos with a 40x40 corner2 camera."""
    from data.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("img") / "demos.zarr"
    collect(CollectConfig(env="metaworld/button-press-topdown-v3", episodes=2, out=path, cameras=("corner2", "topview"), image_size=40), progress=False)
    return path


def _returned_row(model, data, camera: str, point: np.ndarray, size: int, rotated: bool) -> float:
    """Pinhole projection: the image row of a world point in the raw render, or in its 180-degree rotation."""
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    local = data.cam_xmat[cam].reshape(3, 3).T @ (point - data.cam_xpos[cam])  # x right, y up, z backwards
    focal = size / 2 / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    row = size / 2 - focal * local[1] / -local[2]
    return size - row if rotated else row


def test_metaworld_cameras_render_uint8_right_side_up():
    size = 48
    env = make_env("metaworld/push-v3", cameras=("corner2", "behindGripper"), image_size=size)
    try:
        obs, _ = env.reset(seed=3)
        for key in ("image_corner2", "image_behindGripper"):
            assert obs[key].shape == (size, size, 3) and obs[key].dtype == np.uint8
            assert env.observation_space[key].contains(obs[key])
            assert obs[key].std() > 5  # a real scene, not a blank frame
        model, data = env.unwrapped._env.model, env.unwrapped._env.data
        raw = mujoco.Renderer(model, size, size)
        for camera, rotated in (("corner2", True), ("behindGripper", False)):
            raw.update_scene(data, camera=camera)
            frame = raw.render()
            np.testing.assert_array_equal(obs[f"image_{camera}"], frame[::-1, ::-1] if rotated else frame)
            # In the image we return, a point 30 cm above the table lies higher (smaller row) than the table point.
            table, above = np.array([0.0, 0.7, 0.0]), np.array([0.0, 0.7, 0.3])
            assert _returned_row(model, data, camera, above, size, rotated) < _returned_row(model, data, camera, table, size, rotated)
        raw.close()
    finally:
        env.close()


def test_unknown_camera_lists_available_ones():
    with pytest.raises(ValueError, match="no camera 'wrist'.*available cameras: topview, corner, corner2"):
        make_env("metaworld/push-v3", cameras=("wrist",))
def test_image_store_round_trip_is_chunked_per_frame_and_lazy(camera_demos):
    store = EpisodeStore.open(camera_demos)
    specs = store.key_specs()
    assert specs["image_corner2"].shape == (40, 40, 3) and specs["image_corner2"].dtype == "uint8"
    assert store.attrs["cameras"] == ["corner2", "topview"] and len(store.attrs["episode_seeds"]) == 2
    array = store._arrays["image_corner2"]
    assert array.chunks == (1, 40, 40, 3) and array.compressors  # one compressed chunk per frame
    full = store.load(["image_corner2"])["image_corner2"]
    frames = store.frames("image_corner2")
    assert isinstance(frames, LazyFrames) and len(frames) == store.n_steps and frames.shape == full.shape
    index = np.array([[5, 5, 0], [store.n_steps - 1, 17, 3]])
    np.testing.assert_array_equal(frames[index], full[index])
    # The episode's frames are what the env rendered for that seed.
    env = make_env("metaworld/button-press-topdown-v3", cameras=("corner2",), image_size=40)
    obs, _ = env.reset(seed=store.attrs["episode_seeds"][0])
    env.close()
    np.testing.assert_array_equal(frames[np.array([0])][0], obs["image_corner2"])


def test_camera_encoder_shapes_and_crops():
    torch.manual_seed(0)
    encoder = MultiCameraEncoder(("image_a", "image_b"), (40, 40, 3), (32, 32), num_keypoints=8, feature_dim=16)
    images = {k: torch.randint(0, 256, (3, 2, 40, 40, 3), dtype=torch.uint8) for k in ("image_a", "image_b")}
    assert encoder(images).shape == (3, 2, 32)
    x = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40)
    center = crop(x, (32, 32), random=False)
    torch.testing.assert_close(center, x[:, :, 4:36, 4:36])
    crops = crop(x.repeat(64, 1, 1, 1), (32, 32), random=True)
    tops = (crops[:, 0, 0, 0] % (40 * 40)) // 40
    assert crops.shape == (128, 3, 32, 32) and len(set(tops.tolist())) > 1  # windows differ per image
    for c, img in zip(crops[:8], x.repeat(64, 1, 1, 1)[:8]):  # each is a contiguous window of its image
        top, left = int(c[0, 0, 0] % 1600) // 40, int(c[0, 0, 0] % 40)
        torch.testing.assert_close(c, img[:, top : top + 32, left : left + 32])
    encoder.eval()
    torch.testing.assert_close(encoder(images), encoder(images))  # center crop at eval: deterministic
    with pytest.raises(ValueError, match="image 'image_a' has dtype torch.float32, expected torch.uint8"):
        encoder({k: v.float() for k, v in images.items()})
    with pytest.raises(ValueError, match=r"image 'image_a' has shape \(3, 2, 32, 32, 3\), expected \(B, T, 40, 40, 3\)"):
        encoder({k: v[:, :, :32, :32] for k, v in images.items()})
    small = MultiCameraEncoder(("image_a",), (40, 40, 3), (32, 32), num_keypoints=8, feature_dim=16, trunk="conv")
    assert small({"image_a": images["image_a"]}).shape == (3, 2, 16)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in encoder.cameras["image_a"].parameters()) / 50
    with pytest.raises(ValueError, match=r"unknown vision_encoder 'vit'; valid: \['resnet18', 'conv'\]"):
        DiffusionConfig(image_keys=("image_a",), vision_encoder="vit")


def test_vqbet_takes_cameras_and_state(camera_demos):

    cfg = VQBeTConfig(state_keys=("proprio",), image_keys=("image_corner2", "image_topview"), vision_feature_dim=8, vision_keypoints=4,
                      vq_train_steps=1, vq_latent_dim=8, vq_hidden_dim=16, gpt_layers=1, gpt_heads=2, gpt_dim=16, head_hidden_dim=16,
                      action_chunk_size=4, n_action_steps=4, horizon=8)
    store, arrays, cfg = load_training_data(camera_demos, cfg)
    assert isinstance(arrays["image_corner2"], LazyFrames) and cfg.image_shape == (40, 40, 3)
    from data.normalize import Normalizer
    from data.sampler import WindowSampler

    policy = make_policy(cfg, Normalizer.fit(arrays, cfg.normalization_modes()))
    sampler = WindowSampler(arrays, store.episode_ends, policy.window_offsets())
    batch = {k: torch.from_numpy(v) for k, v in sampler.sample(np.arange(4)).items()}
    assert batch["image_corner2"].dtype == torch.uint8 and batch["image_corner2"].shape == (4, cfg.n_obs_steps, 40, 40, 3)
    policy(batch)  # tokenizer step
    loss, metrics = policy(batch)  # GPT step: gradients reach both camera encoders
    loss.backward()
    assert metrics["phase"] == 2.0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (policy.vision.cameras["image_corner2"].out.weight, policy.vision.cameras["image_topview"].out.weight))
    obs = {k: batch[k][:, : cfg.n_obs_steps] for k in cfg.obs_keys}
    assert policy.predict_action_chunk(obs).shape == (4, cfg.horizon, 4)


def test_tiny_image_policy_trains_resumes_and_evaluates_on_a_real_env(tmp_path, camera_demos):
    import train

    args = ["image-tiny", "--dataset", str(camera_demos), "--steps", "4"]
    straight = train.main([*args, "--run-dir", str(tmp_path / "straight"), "--eval-episodes", "0"])
    train.main([*args, "--run-dir", str(tmp_path / "resumed"), "--stop-at", "2"])
    summary = train.main([*args, "--run-dir", str(tmp_path / "resumed"), "--resume"])
    def losses(run):
        return [json.loads(line)["loss"] for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
    assert len(losses("resumed")) == 4 and losses("resumed") == losses("straight")  # batches and crops repeat exactly
    policy = Policy.from_pretrained(summary["checkpoint"])
    assert policy.config.image_keys == ("image_corner2",) and policy.config.image_shape == (40, 40, 3)
    a, b = policy.state_dict(), Policy.from_pretrained(straight["checkpoint"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ev = summary["eval"]  # one 16-step episode, rendering corner2 at 40x40 in the eval env
    assert ev["n_episodes"] == 1 and ev["episodes"][0]["length"] == 16


def test_bad_image_inputs_fail_clearly(tmp_path, camera_demos):

    with pytest.raises(StoreError, match=r"policy needs keys \['image_gripperPOV'\]"):
        load_training_data(camera_demos, DiffusionConfig(state_keys=("proprio",), image_keys=("image_gripperPOV",)))
    with pytest.raises(StoreError, match=r"image key 'proprio' is float32 \(4,\); expected uint8 \(H, W, 3\)"):
        load_training_data(camera_demos, DiffusionConfig(state_keys=("state",), image_keys=("proprio",)))
    with pytest.raises(StoreError, match=r"policy.image_shape=\(84, 84, 3\) but the store has \(40, 40, 3\)"):
        load_training_data(camera_demos, DiffusionConfig(state_keys=("proprio",), image_keys=("image_corner2",), image_shape=(84, 84, 3)))
    with pytest.raises(StoreError, match=r"'image_corner2' has per-step shape \(40, 40, 3\); expected a 1-D vector"):
        load_training_data(camera_demos, DiffusionConfig(state_keys=("image_corner2",)))


def test_format_1_checkpoints_load_as_state_only_with_the_same_fingerprint(tmp_path, tiny_dp_checkpoint):
    import shutil

    policy = Policy.from_pretrained(tiny_dp_checkpoint)
    old = tmp_path / "v1"
    shutil.copytree(tiny_dp_checkpoint, old)
    payload = json.loads((old / "config.json").read_text())
    for field in ("image_keys", "image_shape", "crop_shape", "vision_keypoints", "vision_feature_dim", "vision_backbone_weights", "vision_encoder"):
        del payload["config"][field]
    (old / "config.json").write_text(json.dumps({**payload, "format_version": 1}))
    loaded = Policy.from_pretrained(old)
    assert loaded.config.image_keys == () and loaded.vision is None
    assert loaded.fingerprint() == policy.fingerprint()  # RL wrappers saved against format-1 bases still load
    payload["format_version"] = 7
    (old / "config.json").write_text(json.dumps(payload))
    with pytest.raises(Exception, match="format_version 7, this code reads 1 to 6"):
        Policy.from_pretrained(old)


def test_rendering_picks_egl_when_unset_and_names_a_late_mujoco_import() -> None:
    """Without MUJOCO_GL, importing `envs` first renders headless; importing mujoco first gets a clear error."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    make = "e = make_env('metaworld/button-press-topdown-v3', cameras=('corner2',), image_size=32); o, _ = e.reset(seed=0); print(o['image_corner2'].shape)"
    ok = subprocess.run([sys.executable, "-c", f"from envs.make import make_env; {make}"], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "(32, 32, 3)" in ok.stdout
    late = subprocess.run([sys.executable, "-c", f"import mujoco; from envs.make import make_env; {make}"], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    assert late.returncode != 0
    assert "mujoco was imported with MUJOCO_GL=''" in late.stderr and "set MUJOCO_GL=egl" in late.stderr
