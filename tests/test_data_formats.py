"""Bring your data: diffusion_policy stores in and out, LeRobot datasets in, and data.inspect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numcodecs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from lerobot_layout import CAMERA, V21_DATA, V21_VIDEO, encode_video, synthetic_episodes, write_v3, write_v21
from zarr.storage import LocalStore

import train
from data.export_dp import ExportDPConfig, export_dp, read_dp_v2
from data.import_dp import DPFormatError, ImportDPConfig, import_dp
from data.import_lerobot import ImportLeRobotConfig, LeRobotFormatError, import_lerobot
from data.inspect import InspectConfig, inspect_store
from data.store import EpisodeStore, StoreError

ROOT = Path(__file__).resolve().parents[1]
FRAME_MAE = 8.0  # mean absolute pixel error a lossy video codec (AV1 crf 30, yuv420p) may add to smooth frames


# ---- diffusion_policy stores ------------------------------------------------------------------------------------


def write_dp_store(path: Path, episodes: list[dict[str, np.ndarray]], codecs: dict[str, object] | None = None) -> None:
    """A store as diffusion_policy's ReplayBuffer writes it: zarr format 2, data/<key>, meta/episode_ends, no attrs."""
    codecs = codecs or {}
    root = zarr.open_group(LocalStore(path), mode="w-", zarr_format=2)
    data = root.create_group("data")
    for key in episodes[0]:
        x = np.concatenate([ep[key] for ep in episodes])
        chunks = (1, *x.shape[1:]) if x.ndim == 4 else x.shape
        data.create_array(key, shape=x.shape, chunks=chunks, dtype=x.dtype, compressors=codecs.get(key, numcodecs.Blosc("lz4", 5)))[:] = x
    ends = np.cumsum([len(next(iter(ep.values()))) for ep in episodes])
    root.create_group("meta").create_array("episode_ends", shape=ends.shape, chunks=ends.shape, dtype="int64", compressors=None)[:] = ends


def dp_episodes(push_demos: Path) -> list[dict[str, np.ndarray]]:
    """The real push demos in DP's key names, plus a float32 0..255 image key as Push-T's `img`."""
    store = EpisodeStore.open(push_demos)
    rng = np.random.default_rng(0)
    out = []
    for i in range(store.n_episodes):
        ep = store.get_episode(i)
        n = len(ep["action"])
        out.append({"obs": ep["state"], "action": ep["action"], "img": rng.integers(0, 256, (n, 12, 12, 3)).astype(np.float32), "n_contacts": np.zeros((n, 1), np.int64)})
    return out


def test_dp_store_imports_with_its_codecs_and_trains_through_train_py(tmp_path, push_demos):
    episodes = dp_episodes(push_demos)
    src = tmp_path / "dp.zarr"
    write_dp_store(src, episodes, codecs={"obs": numcodecs.Blosc("zstd", 3, numcodecs.Blosc.BITSHUFFLE), "img": numcodecs.Zstd(3), "n_contacts": None})
    with pytest.raises(StoreError, match=r"looks like a diffusion_policy store; convert it with: python -m data.import_dp"):
        EpisodeStore.open(src)
    out = tmp_path / "imported.zarr"
    store = import_dp(ImportDPConfig(src, out, env="metaworld/push-v3", fps=80, map=("obs:state", "img:image_front")))
    assert store.keys == ["action", "image_front", "n_contacts", "state"]
    assert store.attrs["env_id"] == "metaworld/push-v3" and store.attrs["fps"] == 80.0
    assert store.attrs["dp_keys"] == {"action": "action", "img": "image_front", "n_contacts": "n_contacts", "obs": "state"}
    assert store.key_specs()["image_front"].dtype == "uint8"
    for i, ep in enumerate(episodes):
        got = store.get_episode(i)
        np.testing.assert_array_equal(got["state"], ep["obs"])
        np.testing.assert_array_equal(got["action"], ep["action"])
        np.testing.assert_array_equal(got["image_front"], ep["img"].astype(np.uint8))
    summary = train.main(["tiny", "--env", "metaworld/push-v3", "--run-dir", str(tmp_path / "run"), "--dataset", str(out), "--steps", "2", "--eval-episodes", "0"])
    assert summary["steps"] == 2 and (tmp_path / "run" / "checkpoints" / "last" / "model.safetensors").is_file()


def test_dp_store_bad_input(tmp_path, push_demos, monkeypatch):
    episodes = dp_episodes(push_demos)
    cfg = lambda src, **kw: ImportDPConfig(src, tmp_path / f"out-{src.name}", env="metaworld/push-v3", fps=80, **kw)  # noqa: E731

    unordered = tmp_path / "unordered.zarr"
    write_dp_store(unordered, episodes)
    ends = zarr.open_group(LocalStore(unordered), mode="r+")["meta/episode_ends"]
    n = int(ends[-1])
    ends[:] = [n, n]
    with pytest.raises(DPFormatError, match=r"unordered.zarr: meta/episode_ends is not strictly increasing: episode_ends\[1\]=\d+ after \d+"):
        import_dp(cfg(unordered))

    short = tmp_path / "short.zarr"
    write_dp_store(short, episodes)
    zarr.open_group(LocalStore(short), mode="r+")["meta/episode_ends"][-1] = n - 3
    with pytest.raises(DPFormatError, match=rf"short.zarr: data/action has {n} steps but meta/episode_ends\[-1\] is {n - 3}"):
        import_dp(cfg(short))

    jpeg2k = tmp_path / "jpeg2k.zarr"  # DP's image caches use imagecodecs' Jpeg2k
    write_dp_store(jpeg2k, episodes)
    meta = json.loads((jpeg2k / "data" / "img" / ".zarray").read_text())
    (jpeg2k / "data" / "img" / ".zarray").write_text(json.dumps(meta | {"compressor": {"id": "imagecodecs_jpeg2k", "level": 50}}))
    monkeypatch.setattr("data.import_dp.register_optional_codecs", lambda: None)
    monkeypatch.delitem(numcodecs.registry.codec_registry, "imagecodecs_jpeg2k", raising=False)
    with pytest.raises(DPFormatError, match=r"jpeg2k.zarr: data/img is compressed with codec 'imagecodecs_jpeg2k', which is not installed; install the imagecodecs package"):
        import_dp(cfg(jpeg2k))

    good = tmp_path / "good.zarr"
    write_dp_store(good, episodes)
    with pytest.raises(DPFormatError, match=r"--map 'pixels:image_front' names data key 'pixels', which the store does not have; keys: \['action', 'img', 'n_contacts', 'obs'\]"):
        import_dp(cfg(good, map=("pixels:image_front",)))
    bright = tmp_path / "bright.zarr"
    write_dp_store(bright, [ep | {"img": ep["img"] * 2} for ep in episodes])
    with pytest.raises(DPFormatError, match=r"data/img episode 0: float frames .* expected pixel values in 0..255"):
        import_dp(cfg(bright))
    (tmp_path / "out-good.zarr").mkdir()
    with pytest.raises(StoreError, match=r"out-good.zarr: already exists"):
        import_dp(cfg(good))


def test_export_dp_reads_back_through_the_format_2_path_and_round_trips(tmp_path, push_demos):
    out = export_dp(ExportDPConfig(push_demos, tmp_path / "dp.zarr"))
    assert (out / ".zgroup").is_file() and (out / "data" / "state" / ".zarray").is_file() and not (out / "zarr.json").exists()
    zarray = json.loads((out / "data" / "action" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["compressor"]["id"] == "blosc"
    arrays, ends = read_dp_v2(out)
    store = EpisodeStore.open(push_demos)
    np.testing.assert_array_equal(ends, store.episode_ends)
    assert sorted(arrays) == store.keys
    for key, x in arrays.items():
        np.testing.assert_array_equal(x, store.load([key])[key])
    back = import_dp(ImportDPConfig(out, tmp_path / "back.zarr", env="metaworld/push-v3", fps=80))
    for i in range(store.n_episodes):
        for key, x in store.get_episode(i).items():
            np.testing.assert_array_equal(back.get_episode(i)[key], x)
    with pytest.raises(StoreError, match="dp.zarr: already exists"):
        export_dp(ExportDPConfig(push_demos, tmp_path / "dp.zarr"))


# ---- LeRobot datasets ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lerobot_sets(tmp_path_factory) -> tuple[list[dict], Path, Path]:
    root = tmp_path_factory.mktemp("lerobot")
    episodes = synthetic_episodes((12, 7, 9))
    return episodes, write_v3(root / "v3", episodes, episodes_per_file=2), write_v21(root / "v21", episodes)


def test_lerobot_v3_and_v21_import_with_identical_contents(tmp_path, lerobot_sets):
    episodes, v3, v21 = lerobot_sets
    stores = {name: import_lerobot(ImportLeRobotConfig(src, tmp_path / f"{name}.zarr")) for name, src in (("v3", v3), ("v21", v21))}
    for name, store in stores.items():
        assert store.keys == ["action", "image_top", "state"]
        assert store.attrs["fps"] == 10.0 and store.attrs["env_id"] == "lerobot/testbot"
        assert store.attrs["episode_tasks"] == [["task 0"], ["task 1"], ["task 0"]]
        assert store.attrs["lerobot_keys"][CAMERA] == "image_top"
        assert store.episode_ends.tolist() == [12, 19, 28]
        for i, ep in enumerate(episodes):
            got = store.get_episode(i)
            np.testing.assert_array_equal(got["state"], ep["state"])
            np.testing.assert_array_equal(got["action"], ep["action"])
            assert np.abs(got["image_top"].astype(int) - ep["frames"]).mean() < FRAME_MAE, f"{name} episode {i}"
    for i in range(len(episodes)):  # the two layouts hold the same encoded frames: identical decodes
        np.testing.assert_array_equal(stores["v3"].get_episode(i)["image_top"], stores["v21"].get_episode(i)["image_top"])
    subset = import_lerobot(ImportLeRobotConfig(v3, tmp_path / "subset.zarr", episodes=(2,), env="metaworld/push-v3"))
    assert subset.n_episodes == 1 and subset.attrs["lerobot_episode_index"] == [2] and subset.attrs["env_id"] == "metaworld/push-v3"
    np.testing.assert_array_equal(subset.get_episode(0)["image_top"], stores["v3"].get_episode(2)["image_top"])


def copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_lerobot_bad_input(tmp_path, lerobot_sets):
    episodes, v3, v21 = lerobot_sets
    out = tmp_path / "out.zarr"
    with pytest.raises(LeRobotFormatError, match=r"nothing: missing meta/info.json; expected a LeRobot dataset root"):
        import_lerobot(ImportLeRobotConfig(tmp_path / "nothing", out))

    old = copy_dataset(v21, tmp_path / "old")
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v1.6"}))
    with pytest.raises(LeRobotFormatError, match=r"info.json: codebase_version 'v1.6'; this importer reads \['v2.0', 'v2.1', 'v3.0'\]"):
        import_lerobot(ImportLeRobotConfig(old, out))

    short = copy_dataset(v21, tmp_path / "short")  # episode 1's video loses its last 2 frames
    encode_video(short / V21_VIDEO.format(episode_chunk=0, video_key=CAMERA, episode_index=1), episodes[1]["frames"][:-2], 10)
    with pytest.raises(LeRobotFormatError, match=r"episode 1 \(observation.images.top\): video .*episode_000001.mp4 has 5 of the episode's 7 frames \(none at parquet frame 5.*shorter than its parquet frames"):
        import_lerobot(ImportLeRobotConfig(short, out))

    gap = copy_dataset(v21, tmp_path / "gap")
    path = gap / V21_DATA.format(episode_chunk=0, episode_index=2)
    table = pq.read_table(path)
    ts = table["timestamp"].to_numpy().copy()
    ts[4:] += 0.1  # a dropped frame: timestamps jump by two periods
    pq.write_table(table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(ts, pa.float32())), path)
    with pytest.raises(LeRobotFormatError, match=r"episode_000002.parquet episode 2: timestamp gap at frame 4: 0.500000 s, expected 0.400000 s"):
        import_lerobot(ImportLeRobotConfig(gap, out))

    shapes = copy_dataset(v3, tmp_path / "shapes")
    info = json.loads((shapes / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [4]
    (shapes / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotFormatError, match=r"file-000.parquet episode 0: feature 'observation.state' has per-frame shape \(3,\); info.json says \[4\]"):
        import_lerobot(ImportLeRobotConfig(shapes, out))
    info["features"]["observation.state"]["shape"] = [3]
    info["features"][CAMERA]["shape"] = [48, 64, 3]
    (shapes / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotFormatError, match=r"file-000.mp4 frames are \(64, 64, 3\); info.json says \(48, 64, 3\)"):
        import_lerobot(ImportLeRobotConfig(shapes, out))

    out.mkdir()
    with pytest.raises(StoreError, match=r"out.zarr: already exists"):
        import_lerobot(ImportLeRobotConfig(v3, out))
    assert not any(p.name.startswith("out.zarr.tmp") for p in tmp_path.iterdir())  # failed imports clean up


def test_killed_lerobot_import_leaves_no_store(tmp_path):
    src = write_v21(tmp_path / "big", synthetic_episodes((40,) * 40), codec="h264")
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "data.import_lerobot", str(src), str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("killed.zarr.tmp") and (p / "meta").is_dir() for p in tmp_path.iterdir()):
        assert proc.poll() is None, "the import finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    with pytest.raises(StoreError, match="no episode store at"):
        EpisodeStore.open(out)


# ---- inspect ------------------------------------------------------------------------------------------------


def test_inspect_prints_a_summary_and_writes_plots(tmp_path, push_demos, lerobot_sets):
    text, written = inspect_store(InspectConfig(push_demos, out_dir=tmp_path / "state"))
    assert "env_id   metaworld/push-v3    fps 80.0" in text and "episodes 2" in text
    assert [p.name for p in written] == ["trajectories.png"] and written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    action = EpisodeStore.open(push_demos).load(["action"])["action"]
    row = next(line for line in text.splitlines() if line.startswith("action"))
    assert f"{action.min():.4g}" in row and f"{action.max():.4g}" in row and row.split()[-4:-2] == ["0", "0"]

    images = import_lerobot(ImportLeRobotConfig(lerobot_sets[1], tmp_path / "images.zarr"))
    text, written = inspect_store(InspectConfig(images.path, out_dir=tmp_path / "images", frames_per_episode=4))
    assert sorted(p.name for p in written) == ["frames_image_top.png", "trajectories.png"]
    import imageio.v3 as iio

    sheet = iio.imread(tmp_path / "images" / "frames_image_top.png")
    assert sheet.shape == (3 * 64, 4 * 64, 3)  # first, middle, last episode x 4 frames
    np.testing.assert_array_equal(sheet[:64, :64], images.get_episode(0)["image_top"][0])
    cli = subprocess.run([sys.executable, "-m", "data.inspect", str(images.path), "--out-dir", str(tmp_path / "cli")], cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode == 0 and "image_top" in cli.stdout and (tmp_path / "cli" / "frames_image_top.png").is_file()
