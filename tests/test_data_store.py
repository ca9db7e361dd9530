"""EpisodeStore / write_store_atomically on real zarr stores under tmp_path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from data.store import (
    SCHEMA_VERSION,
    EpisodeStore,
    KeySpec,
    StoreError,
    write_store_atomically,
)

ATTRS = dict(env_id="reach-v3", fps=80.0, source="metaworld scripted expert")
LENGTHS = (5, 3, 7)


def make_episode(T: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((T, 39)).astype(np.float32),
        "action": rng.uniform(-1, 1, (T, 4)).astype(np.float32),
        "image": rng.integers(0, 255, (T, 8, 8, 3), dtype=np.uint8),
    }


@pytest.fixture
def episodes() -> list[dict[str, np.ndarray]]:
    return [make_episode(T, seed=i) for i, T in enumerate(LENGTHS)]


@pytest.fixture
def store_path(tmp_path: Path, episodes: list[dict[str, np.ndarray]]) -> Path:
    path = tmp_path / "demos.zarr"
    store = EpisodeStore.create(path, **ATTRS, extra_attrs={"seed": 7})
    for ep in episodes:
        store.append_episode(ep)
    return path


def at(path: Path, pattern: str) -> str:
    """Regex: the literal ``path`` followed by ``pattern`` (which may span lines)."""
    return "(?s)" + re.escape(str(path)) + pattern


def raw_group(path: Path) -> zarr.Group:
    """The store's root group opened directly with zarr, to corrupt it on purpose."""
    return zarr.open_group(path, mode="r+")


def assert_unchanged(path: Path) -> None:
    store = EpisodeStore.open(path)
    assert store.n_steps == sum(LENGTHS)
    np.testing.assert_array_equal(store.episode_ends, np.cumsum(LENGTHS))
    assert {k: a.shape[0] for k, a in raw_group(path)["data"].arrays()} == dict.fromkeys(store.keys, sum(LENGTHS))
    assert store.validate() == []


# --------------------------------------------------------------------- round trip


def test_round_trip(store_path: Path, episodes: list[dict[str, np.ndarray]]) -> None:
    store = EpisodeStore.open(store_path)
    assert store.n_episodes == 3 and store.n_steps == sum(LENGTHS)
    assert store.episode_ends.dtype == np.int64
    np.testing.assert_array_equal(store.episode_ends, [5, 8, 15])
    assert store.keys == ["action", "image", "obs"]
    assert store.attrs == {"schema_version": SCHEMA_VERSION, **ATTRS, "seed": 7}
    assert store.key_specs() == {
        "action": KeySpec((4,), "float32"),
        "image": KeySpec((8, 8, 3), "uint8"),
        "obs": KeySpec((39,), "float32"),
    }
    for i, ep in enumerate(episodes):
        got = store.get_episode(i)
        assert got.keys() == ep.keys()
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
    loaded = store.load()
    for k in episodes[0]:
        np.testing.assert_array_equal(loaded[k], np.concatenate([ep[k] for ep in episodes]))
    assert list(store.load(["obs"])) == ["obs"]
    assert store.validate() == []
    store.check()


def test_layout_and_chunks(store_path: Path) -> None:
    root = raw_group(store_path)
    assert root["meta/episode_ends"].dtype == np.int64
    assert root["data/image"].chunks == (1, 8, 8, 3)  # one chunk per frame
    assert root["data/obs"].chunks[0] >= 1000


def test_float64_input_stored_as_float32(tmp_path: Path) -> None:
    store = EpisodeStore.create(tmp_path / "s.zarr", **ATTRS)
    store.append_episode({"obs": np.zeros((2, 3))})
    store.append_episode({"obs": np.ones((2, 3))})
    assert store.key_specs() == {"obs": KeySpec((3,), "float32")}


def test_get_episode_index_error_names_count(store_path: Path) -> None:
    with pytest.raises(IndexError, match="3 episodes"):
        EpisodeStore.open(store_path).get_episode(3)


def test_read_only_store_refuses_append(store_path: Path) -> None:
    with pytest.raises(StoreError, match="read-only"):
        EpisodeStore.open(store_path).append_episode(make_episode(2))


# --------------------------------------------------------------------- atomic write


def test_write_store_atomically(tmp_path: Path, episodes: list[dict[str, np.ndarray]]) -> None:
    path = tmp_path / "demos.zarr"
    store = write_store_atomically(path, episodes, **ATTRS)
    assert store.n_episodes == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.zarr"]

    with pytest.raises(StoreError, match=at(path, r".*already exists")):
        write_store_atomically(path, episodes[:1], **ATTRS)
    assert EpisodeStore.open(path).n_episodes == 3

    store = write_store_atomically(path, episodes[:1], **ATTRS, overwrite=True)
    assert store.n_episodes == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.zarr"]


def test_write_store_atomically_failure_leaves_path_untouched(
    tmp_path: Path, episodes: list[dict[str, np.ndarray]]
) -> None:
    path = tmp_path / "demos.zarr"
    write_store_atomically(path, episodes, **ATTRS)

    def crashing_episodes():
        yield episodes[0]
        raise RuntimeError("simulated collector crash")

    with pytest.raises(RuntimeError, match="simulated"):
        write_store_atomically(path, crashing_episodes(), **ATTRS, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.zarr"]
    assert_unchanged(path)

    fresh = tmp_path / "fresh.zarr"
    with pytest.raises(StoreError, match="obs"):
        write_store_atomically(fresh, [episodes[0], {"obs": episodes[0]["obs"]}], **ATTRS)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.zarr"]


def test_create_refuses_existing_path(store_path: Path) -> None:
    with pytest.raises(StoreError, match=at(store_path, r".*already exists")):
        EpisodeStore.create(store_path, **ATTRS)
    assert EpisodeStore.create(store_path, **ATTRS, overwrite=True).n_episodes == 0


# --------------------------------------------------------------------- rejected appends


def bad_nan(ep: dict[str, np.ndarray]) -> None:
    ep["action"][1, 2] = np.nan


def bad_inf(ep: dict[str, np.ndarray]) -> None:
    ep["obs"][2, 0] = np.inf


def bad_ragged(ep: dict[str, np.ndarray]) -> None:
    ep["action"] = ep["action"][:-1]


def bad_missing(ep: dict[str, np.ndarray]) -> None:
    del ep["image"]


def bad_extra(ep: dict[str, np.ndarray]) -> None:
    ep["reward"] = np.zeros((len(ep["obs"]), 1), np.float32)


def bad_shape(ep: dict[str, np.ndarray]) -> None:
    ep["obs"] = ep["obs"][:, :38]


def bad_dtype(ep: dict[str, np.ndarray]) -> None:
    ep["image"] = ep["image"].astype(np.float32)


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (bad_nan, r"'action'.*NaN at time index 1"),
        (bad_inf, r"'obs'.*inf at time index 2"),
        (bad_ragged, r"ragged.*'obs': 4.*'action': 3"),
        (bad_missing, r"missing \['image'\]"),
        (bad_extra, r"extra \['reward'\]"),
        (bad_shape, r"'obs' has per-step shape \(38,\).*expected \(39,\)"),
        (bad_dtype, r"'image' has dtype float32.*expected uint8"),
    ],
)
def test_bad_append_rejected_and_store_unchanged(store_path: Path, corrupt, expected: str) -> None:
    store = EpisodeStore.open(store_path, mode="a")
    episode = make_episode(4, seed=9)
    corrupt(episode)
    with pytest.raises(StoreError, match=expected) as info:
        store.append_episode(episode)
    assert str(store_path) in str(info.value)
    assert store.n_steps == sum(LENGTHS)
    assert_unchanged(store_path)


def test_empty_episode_rejected(store_path: Path) -> None:
    store = EpisodeStore.open(store_path, mode="a")
    with pytest.raises(StoreError, match="empty"):
        store.append_episode({})
    with pytest.raises(StoreError, match="0 steps"):
        store.append_episode({k: v[:0] for k, v in make_episode(2).items()})
    assert_unchanged(store_path)


# --------------------------------------------------------------------- crashes mid-append


def test_failure_during_commit_rolls_back(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original_setitem = zarr.Array.__setitem__

    def failing_setitem(self: zarr.Array, selection, value) -> None:
        if self.path == "meta/episode_ends":
            raise OSError("disk full (simulated)")
        original_setitem(self, selection, value)

    store = EpisodeStore.open(store_path, mode="a")
    monkeypatch.setattr(zarr.Array, "__setitem__", failing_setitem)
    with pytest.raises(OSError, match="simulated"):
        store.append_episode(make_episode(4))
    monkeypatch.undo()
    assert store.n_steps == sum(LENGTHS)
    assert_unchanged(store_path)
    store.append_episode(make_episode(4))  # the store is still usable
    assert EpisodeStore.open(store_path).n_episodes == 4


def test_failed_first_append_removes_created_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original_setitem = zarr.Array.__setitem__

    def failing_setitem(self: zarr.Array, selection, value) -> None:
        if self.path == "data/obs":
            raise OSError("disk full (simulated)")
        original_setitem(self, selection, value)

    store = EpisodeStore.create(tmp_path / "s.zarr", **ATTRS)
    monkeypatch.setattr(zarr.Array, "__setitem__", failing_setitem)
    with pytest.raises(OSError, match="simulated"):
        store.append_episode(make_episode(3))
    monkeypatch.undo()
    assert store.keys == [] and store.n_episodes == 0
    reopened = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    assert reopened.keys == [] and reopened.validate() == []
    reopened.append_episode({"state": np.zeros((2, 3), np.float32)})  # keys not fixed by the failed episode
    assert reopened.keys == ["state"]


def test_uncommitted_tail_ignored_reported_and_truncated(
    store_path: Path, episodes: list[dict[str, np.ndarray]]
) -> None:
    obs = raw_group(store_path)["data/obs"]  # simulate a crash after growing one data array
    obs.resize((sum(LENGTHS) + 6, 39))
    obs[sum(LENGTHS) :] = 99.0

    store = EpisodeStore.open(store_path)
    assert store.n_steps == sum(LENGTHS)
    assert len(store.load()["obs"]) == sum(LENGTHS)
    np.testing.assert_array_equal(store.get_episode(-1)["obs"], episodes[-1]["obs"])
    assert store.validate() == [
        f"data/obs: uncommitted tail of 6 steps (length {sum(LENGTHS) + 6} > n_steps {sum(LENGTHS)}); "
        "open with mode='a' to truncate it"
    ]
    with pytest.raises(StoreError, match=at(store_path, r".*uncommitted tail of 6 steps")):
        store.check()

    EpisodeStore.open(store_path, mode="a")
    assert_unchanged(store_path)


# --------------------------------------------------------------------- validate() problems


def test_validate_expected_specs(store_path: Path) -> None:
    store = EpisodeStore.open(store_path)
    good = store.key_specs()
    assert store.validate(good) == []
    problems = store.validate(
        {
            "obs": KeySpec((39,), "float64"),
            "action": KeySpec((7,), "float32"),
            "image": good["image"],
            "state": KeySpec((3,), "float32"),
        }
    )
    assert problems == [
        "data/obs: dtype float32, expected float64",
        "data/action: per-step shape (4,), expected (7,)",
        "data/state: missing; expected shape (3,) dtype float32 (available keys ['action', 'image', 'obs'])",
    ]


def test_validate_ragged(store_path: Path) -> None:
    raw_group(store_path)["data/action"].resize((10, 4))
    problems = EpisodeStore.open(store_path).validate()
    assert problems == [
        "data/action: ragged, length 10 < n_steps 15 (meta/episode_ends[-1]); "
        "array lengths {'action': 10, 'image': 15, 'obs': 15}"
    ]
    with pytest.raises(StoreError, match="data array lengths"):
        EpisodeStore.open(store_path, mode="a").append_episode(make_episode(2))


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (-np.inf, "inf")])
def test_validate_nonfinite(store_path: Path, value: float, word: str) -> None:
    raw_group(store_path)["data/obs"][9, 3] = value  # episode 2 starts at step 8
    assert EpisodeStore.open(store_path).validate() == [
        f"data/obs: {word} at step 9 (episode 2, step 1 within it); expected finite values"
    ]


def test_validate_non_increasing_episode_ends(store_path: Path) -> None:
    raw_group(store_path)["meta/episode_ends"][:] = [5, 5, 15]
    assert EpisodeStore.open(store_path).validate() == [
        "meta/episode_ends: not strictly increasing, episode_ends[1]=5 <= episode_ends[0]=5"
    ]


def test_validate_non_positive_first_end(store_path: Path) -> None:
    raw_group(store_path)["meta/episode_ends"][0] = 0
    problems = EpisodeStore.open(store_path).validate()
    assert problems == ["meta/episode_ends: first end is 0; expected a positive value"]


def test_validate_episode_ends_dtype(store_path: Path) -> None:
    store = EpisodeStore.open(store_path)
    meta = raw_group(store_path)["meta"]
    del meta["episode_ends"]
    meta.create_array("episode_ends", data=np.array([5.0, 8.0, 15.0]))
    assert store.validate() == [
        "meta/episode_ends: shape (3,) dtype float64; expected a 1-D integer array",
        "data/action: uncommitted tail of 15 steps (length 15 > n_steps 0); open with mode='a' to truncate it",
        "data/image: uncommitted tail of 15 steps (length 15 > n_steps 0); open with mode='a' to truncate it",
        "data/obs: uncommitted tail of 15 steps (length 15 > n_steps 0); open with mode='a' to truncate it",
    ]
    with pytest.raises(StoreError, match=at(store_path, r".*episode_ends.*float64.*expected a 1-D integer")):
        EpisodeStore.open(store_path)


def test_validate_and_open_missing_attrs(store_path: Path) -> None:
    store = EpisodeStore.open(store_path)
    root = raw_group(store_path)
    attrs = dict(root.attrs)
    del attrs["fps"], attrs["source"]
    root.attrs.clear()
    root.attrs.update(attrs)
    expected = "root attrs missing ['fps', 'source']; expected all of ['schema_version', 'env_id', 'fps', 'source']"
    assert store.validate() == [expected]
    with pytest.raises(StoreError, match=at(store_path, r": root attrs missing \['fps', 'source'\]")):
        EpisodeStore.open(store_path)


def test_open_rejects_newer_schema(store_path: Path) -> None:
    raw_group(store_path).attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match=at(store_path, r".*schema_version=2 is newer than supported")):
        EpisodeStore.open(store_path)


# --------------------------------------------------------------------- open() of non-stores


def test_open_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.zarr"
    with pytest.raises(StoreError, match="no episode store at " + re.escape(str(path))):
        EpisodeStore.open(path)


def test_open_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=at(tmp_path, r": not a readable zarr group")):
        EpisodeStore.open(tmp_path)


def test_open_garbage_zarr_json(tmp_path: Path) -> None:
    (tmp_path / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match=at(tmp_path, r": not a readable zarr group")):
        EpisodeStore.open(tmp_path)


def test_open_group_without_episode_ends(tmp_path: Path) -> None:
    root = zarr.open_group(tmp_path, mode="w")
    root.attrs.update({"schema_version": 1, **ATTRS})
    root.create_group("data")
    with pytest.raises(StoreError, match=at(tmp_path, r": missing meta/episode_ends")):
        EpisodeStore.open(tmp_path)
