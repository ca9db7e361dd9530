"""Diffusion Policy: checkpoint round trip, strict loading, golden outputs, chunk queue."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_values import assert_matches_golden

from core.io import CheckpointError
from data.normalize import Normalizer
from policies.base import Policy
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.policy import DiffusionPolicy

GOLDEN = Path(__file__).parent / "golden" / "diffusion.json"
SMALL = DiffusionConfig(state_dims=(6,), action_dim=3, down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=16, horizon=8, n_action_steps=4, num_inference_steps=4)


def make_policy(seed: int = 0, config: DiffusionConfig = SMALL) -> DiffusionPolicy:
    g = np.random.default_rng(seed)
    data = {"state": g.normal(size=(100, 6)).astype(np.float32), "action": g.uniform(-2, 3, size=(100, 3)).astype(np.float32)}
    normalizer = Normalizer.fit(data, {"state": "min_max", "action": "min_max"})
    torch.manual_seed(seed)
    return DiffusionPolicy(config, normalizer).eval()


def fixed_inputs(batch: int = 2):
    g = torch.Generator().manual_seed(123)
    obs = {"state": torch.randn(batch, SMALL.n_obs_steps, 6, generator=g)}
    noise = torch.randn(batch, SMALL.horizon, SMALL.action_dim, generator=g)
    train_batch = {
        "state": torch.randn(batch, SMALL.n_obs_steps, 6, generator=g),
        "action": torch.rand(batch, SMALL.horizon, 3, generator=g) * 5 - 2,
        "action_is_pad": torch.zeros(batch, SMALL.horizon, dtype=torch.bool),
    }
    return obs, noise, train_batch


def test_save_load_gives_identical_actions_for_fixed_noise(tmp_path):
    policy = make_policy()
    obs, noise, _ = fixed_inputs()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, DiffusionPolicy) and loaded.config == policy.config
    a = policy.predict_action_chunk(obs, noise=noise)
    b = loaded.predict_action_chunk(obs, noise=noise)
    assert a.shape == (2, SMALL.horizon, SMALL.action_dim)
    assert torch.equal(a, b)
    # the noise is what drives sampling: a different latent gives different actions
    assert not torch.allclose(a, policy.predict_action_chunk(obs, noise=noise + 1.0))


def test_golden_outputs():
    """Pins the model's numbers: a refactor that changes them must update tests/golden deliberately."""
    policy = make_policy()
    obs, noise, train_batch = fixed_inputs()
    chunk = policy.predict_action_chunk(obs, noise=noise)
    torch.manual_seed(7)
    policy.train()
    loss, _ = policy(train_batch)
    golden = json.loads(GOLDEN.read_text())
    assert_matches_golden(chunk, golden["chunk"], "diffusion chunk")
    assert_matches_golden(loss.item(), golden["loss"], "diffusion loss")


def test_from_pretrained_fails_loudly_on_missing_or_bad_files(tmp_path):
    policy = make_policy()
    ckpt = tmp_path / "ckpt"
    policy.save_pretrained(ckpt)
    for name in ["model.safetensors", "normalizer.safetensors", "config.json"]:
        broken = tmp_path / f"missing_{name}"
        shutil.copytree(ckpt, broken)
        (broken / name).unlink()
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            Policy.from_pretrained(broken)
        truncated = tmp_path / f"truncated_{name}"
        shutil.copytree(ckpt, truncated)
        data = (truncated / name).read_bytes()
        (truncated / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            Policy.from_pretrained(truncated)


def test_config_mismatch_and_missing_fields_fail(tmp_path):
    policy = make_policy()
    ckpt = tmp_path / "ckpt"
    policy.save_pretrained(ckpt)
    payload = json.loads((ckpt / "config.json").read_text())
    payload["config"]["down_dims"] = [16, 64]  # weights no longer fit
    (ckpt / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        Policy.from_pretrained(ckpt)
    del payload["config"]["horizon"]  # no silent default
    (ckpt / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="missing \\['horizon'\\]"):
        Policy.from_pretrained(ckpt)


def test_select_action_replans_every_n_action_steps():
    policy = make_policy()
    calls = []
    original = policy.predict_action_chunk

    def counting(obs, noise=None):
        calls.append(obs["state"].clone())
        return original(obs, noise)

    policy.predict_action_chunk = counting
    policy.reset()
    states = torch.randn(10, 1, 6)
    actions = [policy.select_action({"state": s}) for s in states]
    assert len(calls) == 3  # steps 0, 4, 8 with n_action_steps=4
    assert all(a.shape == (1, 3) for a in actions)
    # the first window repeats the first observation; later windows are the last n_obs_steps observations
    assert torch.equal(calls[0][0, 0], states[0, 0]) and torch.equal(calls[0][0, 1], states[0, 0])
    assert torch.equal(calls[1][0], states[3:5, 0])


def test_bad_config_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match="horizon=8 is too short"):
        DiffusionConfig(horizon=8, n_action_steps=8)
    policy = make_policy()
    with pytest.raises(ValueError, match="expected last dim 6"):
        policy.predict_action_chunk({"state": torch.zeros(1, 2, 5)})
    with pytest.raises(ValueError, match="noise has shape"):
        policy.predict_action_chunk({"state": torch.zeros(1, 2, 6)}, noise=torch.zeros(1, 4, 3))
