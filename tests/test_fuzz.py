"""Property-based fuzzing (hypothesis) of store validation and config parsing: damaged input must give a clear
StoreError / CheckpointError / ValueError, never another exception and never a store that validates but fails."""

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tyro
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import training
from core.io import CheckpointError, config_from_dict, config_to_dict
from data.sampler import WindowSampler
from data.store import EpisodeStore, StoreError
from policies import DiffusionConfig, VQBeTConfig
from policies.base import Policy

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ints = st.integers(-5, 40)
mutation = st.one_of(
    st.tuples(st.just("ends"), st.lists(ints, max_size=6)),
    st.tuples(st.just("ends_float"), st.lists(st.floats(allow_nan=True), min_size=1, max_size=4)),
    st.tuples(st.just("resize"), st.sampled_from(["state", "action"]), ints.filter(lambda n: n >= 0)),
    st.tuples(st.just("nonfinite"), st.sampled_from(["state", "action"]), ints.filter(lambda n: n >= 0), st.sampled_from([np.nan, np.inf, -np.inf])),
    st.tuples(st.just("attr"), st.sampled_from(["env_id", "fps", "source", "schema_version"]), st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats())),
    st.tuples(st.just("drop_attr"), st.sampled_from(["env_id", "fps", "source", "schema_version"])),
    st.tuples(st.just("drop_array"), st.sampled_from(["state", "action", "meta/episode_ends"])),
    st.tuples(st.just("garbage_json"), st.sampled_from(["zarr.json", "data/zarr.json", "data/action/zarr.json", "meta/episode_ends/zarr.json"]), st.binary(max_size=30)),
)


def base_store(path: Path) -> None:
    store = EpisodeStore.create(path, env_id="metaworld/push-v3", fps=80, source="fuzz")
    rng = np.random.default_rng(0)
    for length in (4, 6, 3):
        store.append_episode({"state": rng.normal(size=(length, 5)).astype(np.float32), "action": rng.normal(size=(length, 2)).astype(np.float32)})


def apply(path: Path, change: tuple) -> None:
    kind, *args = change
    root = zarr.open_group(str(path), mode="r+")
    if kind == "ends":
        del root["meta/episode_ends"]
        root["meta"].create_array("episode_ends", data=np.asarray(args[0], dtype=np.int64))
    elif kind == "ends_float":
        del root["meta/episode_ends"]
        root["meta"].create_array("episode_ends", data=np.asarray(args[0], dtype=np.float64))
    elif kind == "resize" and args[0] in root["data"]:
        arr = root["data"][args[0]]
        arr.resize((args[1], *arr.shape[1:]))
    elif kind == "nonfinite" and args[0] in root["data"]:
        arr = root["data"][args[0]]
        if args[1] < arr.shape[0]:
            arr[args[1], 0] = args[2]
    elif kind == "attr":
        root.attrs[args[0]] = args[1]
    elif kind == "drop_attr":
        attrs = dict(root.attrs)
        attrs.pop(args[0], None)
        root.attrs.clear()
        root.attrs.update(attrs)
    elif kind == "drop_array":
        with contextlib.suppress(KeyError):
            del root[args[0] if "/" in args[0] else f"data/{args[0]}"]
    elif kind == "garbage_json" and (path / args[0]).exists():
        (path / args[0]).write_bytes(args[1])


@FUZZ
@given(changes=st.lists(mutation, min_size=1, max_size=3))
def test_store_validation_never_crashes_and_valid_means_usable(changes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        base_store(path)
        for change in changes:
            with contextlib.suppress(Exception):  # a mutation may itself be impossible on an already damaged store
                apply(path, change)
        try:
            store = EpisodeStore.open(path)
        except StoreError as e:
            assert str(path) in str(e)
            return
        problems = store.validate()
        assert isinstance(problems, list) and all(isinstance(p, str) and p for p in problems)
        if problems:
            with pytest.raises(StoreError, match="invalid episode store"):
                store.check()
            return
        # the store says it is valid: then every read the trainer does must work and agree with episode_ends
        keys = store.keys
        data = store.load(keys)
        assert all(len(v) == store.n_steps for v in data.values())
        for i in range(store.n_episodes):
            store.get_episode(i)
        if store.n_episodes and keys:
            sampler = WindowSampler(data, store.episode_ends, {k: [-1, 0, 1] for k in keys})
            assert len(sampler) == store.n_steps
            sampler.sample(np.arange(len(sampler)))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6)


@FUZZ
@given(data=st.data(), cls=st.sampled_from([DiffusionConfig, VQBeTConfig]))
def test_policy_config_parsing_rejects_bad_fields_clearly(data, cls):
    good = config_to_dict(cls())
    fields = sorted(good)
    bad = dict(good)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["drop", "add", "retype"]))
        name = data.draw(st.sampled_from(fields))
        if action == "drop":
            bad.pop(name, None)
        elif action == "add":
            bad[data.draw(st.text(min_size=1, max_size=6))] = data.draw(json_values)
        else:
            bad[name] = data.draw(json_values)
    try:
        parsed = config_from_dict(cls, bad, where="config.json:config")
    except CheckpointError as e:
        assert "config.json:config" in str(e)
        return
    except ValueError:  # a value of the right type that the config's own checks refuse
        return
    if bad == good:
        assert parsed == cls()


@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_checkpoint_config_file_fuzz_gives_checkpoint_errors(payload):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_bytes(payload)
        with pytest.raises(CheckpointError):
            Policy.load_config(tmp)


FLAGS = ["--steps", "--batch-size", "--lr", "--policy.horizon", "--policy.down-dims", "--seed", "--env", "--eval-episodes", "--betas", "--resume", "--data-ram-gb"]


@FUZZ
@given(args=st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(["0", "-3", "2", "1e-3", "x", "metaworld/push-v3", "nan", "128", "push-v3"])), max_size=6),
       preset=st.sampled_from(list(training.PRESETS)))
def test_train_cli_parsing_fuzz(args, preset):
    """Any argument list: a TrainConfig, or a usage error (tyro exits 2) / a ValueError naming the field."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cfg = tyro.extras.overridable_config_cli(training.PRESETS, args=[preset, *args])
    except SystemExit as e:
        assert e.code == 2 and err.getvalue()
        return
    except ValueError as e:
        assert str(e)
        return
    assert isinstance(cfg, training.TrainConfig) and cfg.steps >= 1 and cfg.batch_size >= 1
