"""Normalizer: fit, round trips, degenerate dims, safetensors persistence."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from data.normalize import Normalizer

MODES = {"obs": "mean_std", "action": "min_max", "image": "identity"}


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    obs = (rng.standard_normal((200, 6)) * [1, 10, 0.1, 5, 1, 1] + [0, 3, -2, 100, 0, 0]).astype(np.float32)
    obs[:, 4] = 7.5  # constant dim
    action = rng.uniform(-3, 5, (200, 4)).astype(np.float32)
    action[:, 2] = -0.25  # constant dim
    image = rng.integers(0, 255, (200, 4, 4, 3), dtype=np.uint8)
    return {"obs": obs, "action": action, "image": image}


@pytest.fixture
def normalizer(data: dict[str, np.ndarray]) -> Normalizer:
    return Normalizer.fit(data, MODES)


@pytest.mark.parametrize("key", ["obs", "action"])
def test_round_trip_is_identity(normalizer: Normalizer, data: dict[str, np.ndarray], key: str) -> None:
    x = torch.from_numpy(data[key]).reshape(20, 10, -1)  # arbitrary leading dims
    y = normalizer.normalize(key, x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(normalizer.unnormalize(key, y), x, rtol=1e-5, atol=1e-4)


def test_min_max_maps_exactly_to_unit_range(normalizer: Normalizer, data: dict[str, np.ndarray]) -> None:
    y = normalizer.normalize("action", torch.from_numpy(data["action"]))
    varying = [0, 1, 3]
    assert y[:, varying].min(dim=0).values.tolist() == [-1.0, -1.0, -1.0]
    assert y[:, varying].max(dim=0).values.tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(y[:, 2], torch.zeros(200))  # constant dim -> 0


def test_constant_dims_stay_finite(normalizer: Normalizer, data: dict[str, np.ndarray]) -> None:
    y = normalizer.normalize("obs", torch.from_numpy(data["obs"]))
    assert torch.isfinite(y).all()
    assert torch.equal(y[:, 4], torch.zeros(200))
    y_std = y[:, [0, 1, 2, 3, 5]].std(dim=0)
    torch.testing.assert_close(y_std, torch.ones(5), rtol=1e-2, atol=1e-2)
    shifted = normalizer.normalize("action", torch.full((1, 4), 0.0))  # off the constant value
    assert torch.isfinite(shifted).all() and abs(shifted[0, 2].item()) < 1


def test_identity_and_batch_passthrough(normalizer: Normalizer, data: dict[str, np.ndarray]) -> None:
    image = torch.from_numpy(data["image"][:2])
    is_pad = torch.zeros(2, 3, dtype=torch.bool)
    out = normalizer.normalize_batch({"image": image, "action": torch.zeros(2, 3, 4), "action_is_pad": is_pad})
    assert out["image"] is image and out["action_is_pad"] is is_pad
    assert out["action"].shape == (2, 3, 4)
    with pytest.raises(KeyError, match="'reward'"):
        normalizer.normalize("reward", torch.zeros(1, 1))


def test_dtype_and_shape_handling(normalizer: Normalizer) -> None:
    y = normalizer.normalize("action", torch.zeros(3, 4, dtype=torch.float64))
    assert y.dtype == torch.float64
    with pytest.raises(ValueError, match=r"'action': input shape \(3, 5\); expected last dim 4"):
        normalizer.normalize("action", torch.zeros(3, 5))
    normalizer.check_shapes({"obs": 6, "action": 4})
    with pytest.raises(ValueError, match="'obs': expected feature dim 39, got 6"):
        normalizer.check_shapes({"obs": 39})


def test_save_load_round_trip(normalizer: Normalizer, tmp_path: Path) -> None:
    path = tmp_path / "normalizer.safetensors"
    normalizer.save(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = Normalizer.load(path)
    assert loaded.modes_dict() == MODES
    original, restored = normalizer.to_tensors(), loaded.to_tensors()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    x = torch.randn(5, 4)
    assert torch.equal(loaded.normalize("action", x), normalizer.normalize("action", x))


@pytest.mark.parametrize("content", ["truncated", "garbage", "missing"])
def test_load_bad_file_names_path(normalizer: Normalizer, tmp_path: Path, content: str) -> None:
    path = tmp_path / "normalizer.safetensors"
    normalizer.save(path)
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:-20])
    elif content == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    else:
        path.unlink()
    expected = re.escape(str(path)) + r".*expected a safetensors file written by Normalizer\.save"
    with pytest.raises(ValueError, match=expected):
        Normalizer.load(path)


def test_from_tensors_missing_stat(normalizer: Normalizer) -> None:
    tensors = normalizer.to_tensors()
    del tensors["action/max"]
    with pytest.raises(ValueError, match=r"'action' \(mode 'min_max'\): missing stat 'max'"):
        Normalizer.from_tensors(tensors, MODES)


def test_fit_errors(data: dict[str, np.ndarray]) -> None:
    allowed = r"allowed modes \['min_max', 'mean_std', 'identity'\]"
    with pytest.raises(ValueError, match=r"'obs': unknown mode 'zscore'; " + allowed):
        Normalizer.fit(data, {"obs": "zscore"})
    with pytest.raises(ValueError, match=r"'state' not in data; available keys \['action', 'image', 'obs'\]"):
        Normalizer.fit(data, {"state": "min_max"})
    bad = dict(data, obs=np.where(np.arange(6) == 1, np.nan, data["obs"]))
    with pytest.raises(ValueError, match="'obs'.*NaN/inf"):
        Normalizer.fit(bad, {"obs": "mean_std"})
