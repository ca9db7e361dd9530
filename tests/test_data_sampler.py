"""WindowSampler on two hand-made episodes whose data equals the global time index."""

from __future__ import annotations

import numpy as np
import pytest

from data.sampler import WindowSampler

ENDS = np.array([5, 8])  # episode 0: steps 0..4, episode 1: steps 5..7
OFFSETS = {"obs": [-1, 0], "action": [-1, 0, 1, 2, 3, 4]}


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    t = np.arange(8, dtype=np.float32)
    return {"obs": np.stack([t, -t], axis=1), "action": t[:, None].copy()}


@pytest.fixture
def sampler(data: dict[str, np.ndarray]) -> WindowSampler:
    return WindowSampler(data, ENDS, OFFSETS)


def action_steps(window: dict[str, np.ndarray]) -> list[int]:
    return window["action"][:, 0].astype(int).tolist()


def test_len_and_shapes(sampler: WindowSampler) -> None:
    assert len(sampler) == 8
    batch = sampler.sample(np.arange(8))
    assert batch["obs"].shape == (8, 2, 2) and batch["obs_is_pad"].shape == (8, 2)
    assert batch["action"].shape == (8, 6, 1) and batch["action_is_pad"].shape == (8, 6)
    assert batch["obs_is_pad"].dtype == bool and batch["obs"].dtype == np.float32


def test_first_anchor_of_each_episode_pads_start(sampler: WindowSampler) -> None:
    for start in (0, 5):
        w = sampler[start]
        assert w["obs"][:, 0].tolist() == [start, start]
        np.testing.assert_array_equal(w["obs"][:, 1], -w["obs"][:, 0])
        assert w["obs_is_pad"].tolist() == [True, False]
        assert action_steps(w)[:2] == [start, start]
        assert w["action_is_pad"][:2].tolist() == [True, False]
    assert action_steps(sampler[0]) == [0, 0, 1, 2, 3, 4]
    assert not sampler[0]["action_is_pad"][1:].any()


def test_last_anchors_pad_end_with_edge_repeat(sampler: WindowSampler) -> None:
    w = sampler[3]  # episode 0, second-to-last step
    assert action_steps(w) == [2, 3, 4, 4, 4, 4]
    assert w["action_is_pad"].tolist() == [False, False, False, True, True, True]
    w = sampler[7]  # episode 1, last step
    assert w["obs"][:, 0].tolist() == [6, 7] and w["obs_is_pad"].tolist() == [False, False]
    assert action_steps(w) == [6, 7, 7, 7, 7, 7]
    assert w["action_is_pad"].tolist() == [False, False, True, True, True, True]
    w = sampler[5]  # short episode 1: pads at both ends
    assert action_steps(w) == [5, 5, 6, 7, 7, 7]
    assert w["action_is_pad"].tolist() == [True, False, False, False, True, True]


def test_windows_never_cross_episodes_and_mask_is_exact(sampler: WindowSampler) -> None:
    batch = sampler.sample(np.arange(len(sampler)))
    offsets = np.array(OFFSETS["action"])
    for anchor in range(8):
        lo, hi = (0, 4) if anchor < 5 else (5, 7)
        raw = anchor + offsets
        assert action_steps({"action": batch["action"][anchor]}) == np.clip(raw, lo, hi).tolist()
        assert batch["action_is_pad"][anchor].tolist() == ((raw < lo) | (raw > hi)).tolist()


def test_episode_indices_subset(data: dict[str, np.ndarray]) -> None:
    only_second = WindowSampler(data, ENDS, OFFSETS, episode_indices=[1])
    assert len(only_second) == 3
    assert only_second[0]["obs"][:, 0].tolist() == [5, 5]
    assert sorted(only_second.sample(np.arange(3))["obs"][:, 1, 0].tolist()) == [5, 6, 7]
    assert len(WindowSampler(data, ENDS, OFFSETS, episode_indices=[])) == 0
    with pytest.raises(ValueError, match=r"episode_indices \[2\] out of range; there are 2 episodes"):
        WindowSampler(data, ENDS, OFFSETS, episode_indices=[0, 2])


def test_batches_cover_each_anchor_once(sampler: WindowSampler) -> None:
    rng = np.random.default_rng(0)
    seen = [b["obs"][:, 1, 0] for b in sampler.batches(3, rng, drop_last=False)]
    assert [len(s) for s in seen] == [3, 3, 2]
    assert sorted(np.concatenate(seen).astype(int).tolist()) == list(range(8))
    assert [len(b["obs"]) for b in sampler.batches(3, rng)] == [3, 3]


def test_getitem_equals_sample_of_one(sampler: WindowSampler) -> None:
    for i in range(len(sampler)):
        one = sampler.sample(np.array([i]))
        item = sampler[i]
        assert item.keys() == one.keys()
        for k in item:
            np.testing.assert_array_equal(item[k], one[k][0])
    with pytest.raises(IndexError, match="8 anchors"):
        sampler[8]


def test_bad_arguments(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"\['image'\] not in data; available keys \['action', 'obs'\]"):
        WindowSampler(data, ENDS, {"image": [0]})
    with pytest.raises(ValueError, match="strictly increasing"):
        WindowSampler(data, np.array([5, 5]), OFFSETS)
    with pytest.raises(ValueError, match=r"data\['obs'\] has shape \(8, 2\); expected at least episode_ends\[-1\] = 9"):
        WindowSampler(data, np.array([5, 9]), OFFSETS)
