"""VQ-BeT: tokenizer fit, code usage, checkpoint round trip, phase handling, golden outputs, bad input."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_values import assert_matches_golden

import train
from data.normalize import Normalizer
from policies.base import Policy
from policies.vqbet.config import VQBeTConfig
from policies.vqbet.policy import VQBeTPolicy
from policies.vqbet.rvq import ResidualVQ

GOLDEN = Path(__file__).parent / "golden" / "vqbet.json"
SMALL = VQBeTConfig(
    state_dims=(6,), action_dim=3, vq_train_steps=3, vq_latent_dim=16, vq_hidden_dim=32, gpt_layers=1, gpt_heads=2,
    gpt_dim=32, head_hidden_dim=32, action_chunk_size=4, n_action_steps=4, horizon=7, n_action_pred_token=2,
)


def make_policy(seed: int = 0, config: VQBeTConfig = SMALL) -> VQBeTPolicy:
    g = np.random.default_rng(seed)
    data = {"state": g.normal(size=(100, 6)).astype(np.float32), "action": g.uniform(-2, 3, size=(100, 3)).astype(np.float32)}
    torch.manual_seed(seed)
    return VQBeTPolicy(config, Normalizer.fit(data, {"state": "min_max", "action": "min_max"}))


def train_batch(batch: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "state": torch.randn(batch, SMALL.n_obs_steps, 6, generator=g),
        "action": torch.rand(batch, SMALL.action_window, 3, generator=g) * 5 - 2,
    }


def trained_policy() -> VQBeTPolicy:
    """Runs through phase 1 (3 tokenizer steps) and 2 GPT steps."""
    policy = make_policy()
    policy.train()
    opt = torch.optim.AdamW(policy.optim_groups(1e-3, 0.0))
    for step in range(5):
        loss, metrics = policy(train_batch(seed=step))
        assert metrics["phase"] == (1.0 if step < 3 else 2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


def test_rvq_reconstructs_structured_chunks_after_short_fit():
    torch.manual_seed(0)
    # structured data: straight-line chunks from 8 prototypes plus small noise
    protos = torch.randn(8, 3)
    def sample(n):
        idx = torch.randint(0, 8, (n,))
        ramp = torch.linspace(0, 1, 5)[None, :, None]
        return protos[idx][:, None, :] * ramp + 0.01 * torch.randn(n, 5, 3)
    rvq = ResidualVQ(chunk=5, action_dim=3, layers=2, codes=16, latent_dim=16, hidden_dim=64, decay=0.9, dead_threshold=0.03, commitment_weight=5.0)
    opt = torch.optim.Adam(rvq.parameters(), lr=3e-3)
    fixed = sample(256)
    assert not bool(rvq.codebooks[0].initialized)  # seeded from the first training batch
    for _ in range(400):
        loss, metrics = rvq(sample(256))
        opt.zero_grad()
        loss.backward()
        opt.step()
    rvq.eval()
    codes = rvq.encode(fixed)
    assert codes.shape == (256, 2) and codes.dtype == torch.long
    error = (rvq.decode(codes) - fixed).abs().mean().item()
    assert error < 0.1, f"mean L1 reconstruction error {error:.3f} after a short fit"
    assert rvq.used_fraction(codes) > 0.25  # several codes in use, not a collapsed codebook


def test_codes_do_not_collapse_in_phase_1():
    policy = make_policy()
    policy.train()
    metrics = {}
    for step in range(3):
        _, metrics = policy(train_batch(seed=step))
    assert policy.tokenizer_ready
    # more than one code per layer in use: a collapsed codebook (every chunk on one code) scores 1 / vq_codes
    assert metrics["vq_codes_used_frac"] > 1 / SMALL.vq_codes
    codes = torch.tensor([[0, 1], [0, 1], [2, 1]])  # layer 0 uses codes {0, 2}, layer 1 uses {1}
    assert policy.rvq.used_fraction(codes) == (2 + 1) / (2 * SMALL.vq_codes)
    assert not any(p.requires_grad for p in policy.rvq.parameters())  # frozen after phase 1


def test_save_load_identical_actions_for_fixed_seed_and_temperature(tmp_path):
    policy = trained_policy()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, VQBeTPolicy) and loaded.tokenizer_ready
    obs = {"state": torch.randn(3, SMALL.n_obs_steps, 6)}
    torch.manual_seed(5)
    a = policy.predict_action_chunk(obs)
    torch.manual_seed(5)
    b = loaded.predict_action_chunk(obs)
    assert a.shape == (3, SMALL.horizon, 3)
    assert torch.equal(a, b)


def test_golden_outputs():
    policy = trained_policy()
    obs = {"state": torch.randn(2, SMALL.n_obs_steps, 6, generator=torch.Generator().manual_seed(9))}
    torch.manual_seed(3)
    chunk = policy.predict_action_chunk(obs)
    policy.train()
    torch.manual_seed(4)
    loss, _ = policy(train_batch(seed=11))
    golden = json.loads(GOLDEN.read_text())
    assert_matches_golden(chunk, golden["chunk"], "vqbet chunk")
    assert_matches_golden(loss.item(), golden["loss"], "vqbet loss")


def test_averaging_overlapping_chunks_switch():
    policy = trained_policy()
    chunks = torch.arange(SMALL.n_pred_tokens, dtype=torch.float32)[None, :, None, None].expand(1, -1, SMALL.action_chunk_size, 1)
    plain = policy.assemble(chunks)[0, :, 0]
    # executed steps (from position n_obs_steps-1) come from the current step's token
    now = SMALL.n_obs_steps - 1
    assert torch.all(plain[now : now + SMALL.n_action_steps] == now)
    averaging = replace(SMALL, average_overlapping_chunks=True)
    policy.config = averaging
    averaged = policy.assemble(chunks)[0, :, 0]
    # position p is the mean of the token indices j with j <= p < j + chunk
    expected = torch.tensor([np.mean([j for j in range(SMALL.n_pred_tokens) if j <= p < j + SMALL.action_chunk_size]) for p in range(SMALL.horizon)], dtype=torch.float32)
    assert torch.allclose(averaged, expected)


def test_checkpoint_before_phase_1_finished_cannot_act(tmp_path):
    policy = make_policy()
    policy.train()
    policy(train_batch())  # 1 of 3 tokenizer steps
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(RuntimeError, match="has not finished phase 1: the action tokenizer trained 1 of 3 steps"):
        loaded.check_ready()
    with pytest.raises(RuntimeError, match="has not finished phase 1"):
        loaded.predict_action_chunk({"state": torch.zeros(1, SMALL.n_obs_steps, 6)})


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="action_chunk_size=10 is longer than horizon=7"):
        replace(SMALL, action_chunk_size=10)
    with pytest.raises(ValueError, match="n_action_steps=6 must be <= action_chunk_size=4"):
        replace(SMALL, n_action_steps=6)
    with pytest.raises(ValueError, match="takes no initial noise"):
        trained_policy().predict_action_chunk({"state": torch.zeros(1, 2, 6)}, noise=torch.zeros(1, 8, 3))


def test_tiny_train_resume_across_phase_boundary_and_eval(tmp_path, push_demos, vqbet_tiny_checkpoint):
    """Stop inside phase 1, resume across the boundary; must match an uninterrupted run step for step."""
    def run(run_dir, *extra):
        return train.main(["vqbet-tiny", "--env", "metaworld/push-v3", "--run-dir", str(run_dir), "--dataset", str(push_demos), *extra])

    straight = vqbet_tiny_checkpoint  # the same command run without interruption
    resumed = tmp_path / "resumed"
    run(resumed, "--stop-at", "1")  # phase 1 is 2 steps: stop in the middle of it
    assert not Policy.from_pretrained(resumed / "checkpoints" / "last").tokenizer_ready
    summary = run(resumed, "--resume")
    log = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == [1.0, 1.0, 2.0, 2.0]
    ref = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in ref]
    final = Policy.from_pretrained(resumed / "checkpoints" / "last")
    assert final.tokenizer_ready
    ev = summary["eval"]
    assert ev["n_episodes"] == 1 and ev["episodes"][0]["length"] == 16


def test_action_dim_mismatch_with_store_fails(tmp_path, push_demos):
    with pytest.raises(SystemExit, match=r"policy.action_dim=7 but the store has 4"):
        train.main(["vqbet-tiny", "--env", "metaworld/push-v3", "--run-dir", str(tmp_path / "r"), "--dataset", str(push_demos), "--policy.action-dim", "7"])


def test_inference_bench_varies_only_inference_options_and_refuses_other_policies(vqbet_tiny_checkpoint, tiny_dp_checkpoint, tmp_path) -> None:
    """bench/vqbet_inference.py evaluates the checkpoint once per variant in the run's env, rejects unknown
    variants and refuses a Diffusion Policy run."""
    import json

    from bench import vqbet_inference

    out = tmp_path / "knobs.json"
    payload = vqbet_inference.main(["--runs", str(vqbet_tiny_checkpoint), "--variants", "as trained", "temperature 0", "--episodes", "2", "--num-threads", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert rows == payload["results"]
    assert [r["variant"] for r in rows] == ["as trained", "temperature 0"]
    assert all(r["n"] == 2 and 0.0 <= r["success_rate"] <= 1.0 and r["env"] == "metaworld/push-v3" for r in rows)
    with pytest.raises(SystemExit, match="unknown variants"):
        vqbet_inference.main(["--runs", str(vqbet_tiny_checkpoint), "--variants", "argmax"])
    with pytest.raises(SystemExit, match="holds a diffusion checkpoint"):
        vqbet_inference.main(["--runs", str(tiny_dp_checkpoint.parents[1]), "--variants", "as trained", "--episodes", "1"])
