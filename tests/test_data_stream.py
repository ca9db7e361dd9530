"""Streaming windows from stores larger than a RAM cap (data/stream.py), on real zarr stores."""

import json
from pathlib import Path

import numpy as np
import pytest

import train
from data.normalize import Normalizer
from data.sampler import WindowSampler
from data.store import EpisodeStore, StoreError
from data.stream import RESIDENT_FRACTION, StreamingWindows

OFFSETS = {"state": [-1, 0], "action": [-1, 0, 1, 2]}
LENGTHS = [7, 3, 12, 5, 9, 4, 11, 6, 8, 10]


@pytest.fixture
def step_store(tmp_path: Path) -> Path:
    """state[t] = (global step t, episode id): every window says where it came from."""
    path = tmp_path / "steps.zarr"
    store = EpisodeStore.create(path, env_id="metaworld/push-v3", fps=80, source="test")
    t = 0
    for e, length in enumerate(LENGTHS):
        steps = np.arange(t, t + length, dtype=np.float32)
        store.append_episode({"state": np.stack([steps, np.full(length, e, np.float32)], 1), "action": np.stack([steps] * 3, 1)})
        t += length
    return path


def full_sampler(path: Path) -> WindowSampler:
    store = EpisodeStore.open(path)
    return WindowSampler(store.load(["state", "action"]), store.episode_ends, OFFSETS)


def streaming(path: Path, budget_bytes: int, rotate_every: int = 5) -> StreamingWindows:
    return StreamingWindows(path, ["state", "action"], [], OFFSETS, budget_bytes, seed=3, rotate_every=rotate_every)


def test_store_that_fits_gives_the_in_ram_windows(step_store):
    windows = streaming(step_store, 10**9)
    assert windows.fits_whole and windows.resident_episodes(0) == list(range(len(LENGTHS)))
    ids = np.random.default_rng(0).integers(0, sum(LENGTHS), 64)
    ours, ref = windows.sampler_at(12345).sample(ids), full_sampler(step_store).sample(ids)
    assert ours.keys() == ref.keys() and all(np.array_equal(ours[k], ref[k]) for k in ref)


def test_small_cap_keeps_resident_set_bounded_rotates_through_all_episodes_and_windows_are_exact(step_store):
    windows = streaming(step_store, budget_bytes=int(30 / RESIDENT_FRACTION) * streaming(step_store, 10**9).step_bytes)  # 30 of 75 steps resident
    assert not windows.fits_whole
    ref = full_sampler(step_store)
    seen: set[int] = set()
    for step in range(0, 200, 5):
        episodes = windows.resident_episodes(step)
        sampler = windows.sampler_at(step)
        assert sum(LENGTHS[e] for e in episodes) * windows.step_bytes <= windows.resident_budget
        assert windows.resident_bytes() <= windows.resident_budget
        seen |= set(episodes)
        batch = sampler.sample(np.arange(len(sampler)))  # every resident window
        anchors = batch["state"][:, -1, 0].astype(int)  # the anchor's global step
        assert set(batch["state"][:, -1, 1].astype(int)) == set(episodes)
        expected = ref.sample(anchors)  # the same windows, padding included, as the whole-store sampler
        assert all(np.array_equal(batch[k], expected[k]) for k in expected)
    assert seen == set(range(len(LENGTHS)))  # rotation visits every episode
    assert windows.resident_episodes(7) == windows.resident_episodes(9) != windows.resident_episodes(10)


def test_streamed_normalizer_equals_in_ram_fit(step_store):
    modes = {"state": "mean_std", "action": "min_max"}
    windows = streaming(step_store, budget_bytes=int(20 / RESIDENT_FRACTION) * streaming(step_store, 10**9).step_bytes)
    streamed = windows.fit_normalizer(modes).to_tensors()
    exact = Normalizer.fit(EpisodeStore.open(step_store).load(["state", "action"]), modes).to_tensors()
    assert streamed.keys() == exact.keys()
    for k in exact:
        np.testing.assert_allclose(streamed[k].numpy(), exact[k].numpy(), rtol=1e-6, atol=1e-6)


def test_an_episode_larger_than_the_cap_is_refused_with_sizes(step_store):
    with pytest.raises(StoreError, match=r"longest episode \(12 steps.*raise --data-ram-gb"):
        streaming(step_store, budget_bytes=100)


def run(run_dir: Path, dataset: Path, *extra: str) -> list[float]:
    train.main(["tiny", "--env", "metaworld/push-v3", "--run-dir", str(run_dir), "--dataset", str(dataset), "--eval-episodes", "0", *extra])
    return [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_train_with_a_cap_that_fits_matches_in_ram_training(tmp_path, push_demos):
    in_ram = run(tmp_path / "ram", push_demos, "--steps", "4")
    capped = run(tmp_path / "cap", push_demos, "--steps", "4", "--data-ram-gb", "1")
    assert capped == in_ram


def test_train_streaming_under_a_tiny_cap_resumes_exactly(tmp_path, push_demos, capsys):
    lengths = np.diff(EpisodeStore.open(push_demos).episode_ends, prepend=0)
    step_bytes = StreamingWindows(push_demos, ["state", "action"], [], {"state": [-1, 0], "action": list(range(-1, 7))}, 10**9, 0, 1).step_bytes
    cap_gb = (lengths.max() + 1) * step_bytes / RESIDENT_FRACTION / 1e9  # room for one demo at a time: the resident demo changes every step
    cap = ["--data-ram-gb", f"{cap_gb:.9f}", "--stream-rotate-every", "1"]
    straight = run(tmp_path / "straight", push_demos, "--steps", "4", *cap)
    assert "streaming: 1 of 2 episodes resident" in capsys.readouterr().out
    run(tmp_path / "resumed", push_demos, "--steps", "4", "--stop-at", "2", *cap)
    resumed = run(tmp_path / "resumed", push_demos, "--steps", "4", "--resume", *cap)
    assert resumed == straight and len(straight) == 4
