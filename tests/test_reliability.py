"""Faults injected on purpose: kill -9 mid-write, corrupted chunks and weights. Nothing committed may be lost,
and damaged data must fail loudly instead of loading as garbage."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import train
from core.io import CheckpointError
from data.store import EpisodeStore, StoreError
from policies.base import Policy

ROOT = Path(__file__).resolve().parents[1]

APPENDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from data.store import EpisodeStore
    from tests_episode import episode
    path = Path({path!r})
    store = EpisodeStore.open(path, "a") if path.exists() else EpisodeStore.create(path, env_id="metaworld/push-v3", fps=80, source="kill test")
    print("ready", flush=True)
    while True:
        store.append_episode(episode(store.n_episodes))
    """
)

EPISODE_MODULE = textwrap.dedent(
    """
    import numpy as np
    def episode(k):
        T = 5 + k % 7
        rng = np.random.default_rng(k)
        return {"state": rng.normal(size=(T, 39)).astype(np.float32), "action": np.full((T, 4), k, np.float32),
                "image_cam": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8)}
    """
)


def expected_episode(k: int) -> dict[str, np.ndarray]:
    namespace: dict = {}
    exec(EPISODE_MODULE, namespace)
    return namespace["episode"](k)


def test_kill9_during_appends_loses_no_committed_episode_and_appending_resumes(tmp_path):
    (tmp_path / "tests_episode.py").write_text(EPISODE_MODULE)
    path = tmp_path / "demos.zarr"
    rng = np.random.default_rng(0)
    committed, interrupted = 0, 0
    for trial in range(10):
        proc = subprocess.Popen([sys.executable, "-c", APPENDER.format(root=str(ROOT), path=str(path))], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += bool(EpisodeStore.open(path).validate())  # a kill inside an append leaves an uncommitted tail
        store = EpisodeStore.open(path, "a")  # drops the tail; everything committed is still there
        assert store.validate() == []
        assert store.n_episodes >= committed, "a committed episode was lost"
        committed = store.n_episodes
        for k in range(committed):
            got, want = store.get_episode(k), expected_episode(k)
            assert got.keys() == want.keys() and all(np.array_equal(got[key], want[key]) for key in want), f"episode {k} differs"
    assert committed > 10  # the appender made progress across the kills
    print(f"{interrupted} of 10 kills landed inside an append")


def test_kill9_at_random_points_of_training_keeps_a_loadable_checkpoint_and_resumes(tmp_path, push_demos):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", "tiny", "--env", "metaworld/push-v3", "--dataset", str(push_demos), "--run-dir", str(run_dir),
           "--steps", "100000", "--save-every", "1", "--log-every", "1", "--eval-episodes", "0"]
    rng = np.random.default_rng(1)
    last_step = 0
    for trial in range(3):
        proc = subprocess.Popen(cmd + (["--resume"] if trial else []), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / "last").exists() or int((run_dir / "checkpoints" / "last").resolve().name[5:]) <= last_step:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "no new checkpoint"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))  # land anywhere: mid-step, mid-save, mid-rename
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        last = (run_dir / "checkpoints" / "last").resolve()
        step = json.loads((last / "train_state" / "state.json").read_text())["step"]
        assert step > last_step
        Policy.from_pretrained(last)  # complete and loadable
        last_step = step
    summary = train.main(["tiny", "--env", "metaworld/push-v3", "--dataset", str(push_demos), "--run-dir", str(run_dir), "--steps", "100000",
                          "--save-every", "1", "--log-every", "1", "--eval-episodes", "0", "--resume", "--stop-at", str(last_step + 2)])
    assert summary["steps"] == last_step + 2
    logged = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, last_step + 3))  # no gap, no duplicate across three kills


def chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_zarr_chunk_is_a_clear_error_naming_the_key(tmp_path, push_demos, damage):
    store_path = tmp_path / "demos.zarr"
    subprocess.run(["cp", "-r", str(push_demos), str(store_path)], check=True)
    target = chunk_files(store_path / "data" / "action")[0]
    raw = bytearray(target.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    target.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"data/action"):
        EpisodeStore.open(store_path).load(["action"])
    with pytest.raises(SystemExit, match=r"data/action"):
        train.main(["tiny", "--env", "metaworld/push-v3", "--dataset", str(store_path), "--run-dir", str(tmp_path / "run")])


def test_damaged_image_frame_is_a_clear_error(tmp_path):
    path = tmp_path / "img.zarr"
    store = EpisodeStore.create(path, env_id="metaworld/push-v3", fps=80, source="test")
    store.append_episode({"image_cam": np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), "action": np.zeros((6, 4), np.float32)})
    frame = chunk_files(path / "data" / "image_cam")[3]
    raw = bytearray(frame.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    frame.write_bytes(bytes(raw))
    frames = EpisodeStore.open(path).frames("image_cam")
    assert frames[np.array([0, 1])].shape == (2, 16, 16, 3)  # undamaged frames still read
    with pytest.raises(OSError, match=r"data/image_cam: cannot read frames"):
        frames[np.array([3])]


@pytest.mark.parametrize("name", ["model.safetensors", "normalizer.safetensors"])
def test_flipped_bit_in_checkpoint_is_detected_not_loaded(tmp_path, tiny_dp_checkpoint, name):
    ckpt = tmp_path / "ckpt"
    subprocess.run(["cp", "-r", str(tiny_dp_checkpoint), str(ckpt)], check=True)
    path = ckpt / name
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # one bit of the last tensor's data: safetensors alone would load it as a wrong weight
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{name}.*(digest|cannot read normalizer)"):
        Policy.from_pretrained(ckpt)


def test_unwritten_episode_ends_slot_is_reported_and_repaired(tmp_path):
    """The one kill window inside an append's commit: episode_ends resized, its value not yet written."""
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path, env_id="metaworld/push-v3", fps=80, source="test")
    for k in range(3):
        store.append_episode(expected_episode(k))
    ends = zarr.open_array(str(path / "meta" / "episode_ends"), mode="r+")
    ends.resize((4,))  # what a kill between resize and write leaves: a trailing fill value
    problems = EpisodeStore.open(path).validate()
    assert any("unwritten slot at index 3" in p for p in problems)
    assert EpisodeStore.open(path).n_episodes == 3
    repaired = EpisodeStore.open(path, "a")
    assert repaired.validate() == [] and repaired.n_episodes == 3
    repaired.append_episode(expected_episode(3))
    assert EpisodeStore.open(path).validate() == []


def test_killed_collection_resumes_to_the_same_store(tmp_path):
    """kill -9 mid-collection leaves <out>.partial; --resume finishes it with the demos a clean run records."""
    from data.collect import CollectConfig, CollectionError, collect

    clean, _ = collect(CollectConfig(env="metaworld/reach-v3", episodes=4, out=tmp_path / "clean.zarr"), progress=False)
    out = tmp_path / "demos.zarr"
    partial = out.with_name("demos.zarr.partial")
    cmd = [sys.executable, "-m", "data.collect", "--env", "metaworld/reach-v3", "--episodes", "4", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MUJOCO_GL": "egl"})
    deadline = time.time() + 120
    while not (partial.exists() and EpisodeStore.open(partial).n_episodes >= 1):
        assert proc.poll() is None and time.time() < deadline, "the collector finished or stalled before the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.exists()
    with pytest.raises(CollectionError, match="pass --resume"):
        collect(CollectConfig(env="metaworld/reach-v3", episodes=4, out=out), progress=False)
    with pytest.raises(CollectionError, match="seed_start: partial has 0, command has 5"):
        collect(CollectConfig(env="metaworld/reach-v3", episodes=4, out=out, seed_start=5, resume=True), progress=False)
    resumed, report = collect(CollectConfig(env="metaworld/reach-v3", episodes=4, out=out, resume=True), progress=False)
    assert not partial.exists() and resumed.validate() == []
    assert resumed.attrs["episode_seeds"] == clean.attrs["episode_seeds"] and "pending_seed" not in resumed.attrs
    for k in range(4):
        a, b = resumed.get_episode(k), clean.get_episode(k)
        assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)
