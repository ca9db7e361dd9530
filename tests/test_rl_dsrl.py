"""DSRL on real Meta-World physics: chunk reward accounting, the noise bound, determinism, and a tiny
train -> save -> resume -> evaluate run with real SAC updates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from core.io import CheckpointError, atomic_save_safetensors, load_safetensors
from data.store import EpisodeStore
from envs.metaworld import MetaWorldEnv
from policies import DiffusionPolicy, Policy, SteeredPolicy
from policies.steered.config import for_base
from policies.steered.policy import NoiseActor
from rl.chunk_env import ChunkedEnv

ROOT = Path(__file__).resolve().parents[1]
ENV = "metaworld/push-v3"


def dsrl(run_dir: Path, base: Path, *extra: str) -> dict:
    args = ["dsrl", "--base", str(base), "--env", ENV, "--run-dir", str(run_dir), "--n-envs", "2", "--max-episode-steps", "24",
            "--warmup-env-steps", "48", "--utd", "2", "--noise-critic-steps", "2", "--aliases-per-env", "2", "--batch-size", "16",
            "--hidden-dim", "32", "--n-layers", "2", "--log-every", "32", "--eval-episodes", "2", "--eval-n-envs", "2", "--eval-every", "0",
            "--replay-capacity", "4096"]
    return train.main([*args, *extra])


# ---- reward accounting inside a chunk --------------------------------------------------------------


def test_truncation_inside_a_chunk_stops_the_chunk_and_counts_only_executed_steps():
    env = ChunkedEnv(ENV, n_obs_steps=2, n_action_steps=4, max_episode_steps=6)
    obs, _ = env.reset(seed=3)
    assert obs["state"].shape == (2, 39) and np.array_equal(obs["state"][0], obs["state"][1])  # first obs repeated
    zeros = np.zeros((4, 4), np.float32)
    _, reward, terminated, truncated, info = env.step(zeros)
    assert (info["env_steps"], terminated, truncated) == (4, False, False)
    obs, reward, terminated, truncated, info = env.step(zeros)
    assert (info["env_steps"], terminated, truncated, reward) == (2, False, True, 0.0)  # 2 of 4 actions ran
    assert not np.array_equal(obs["state"][0], obs["state"][1])
    with pytest.raises(ValueError, match=r"expected \(4, 4\)"):
        env.step(np.zeros((3, 4), np.float32))


def test_success_inside_a_chunk_ends_it_with_reward_one(push_demos):
    store = EpisodeStore.open(push_demos)
    seed = int(store.attrs["episode_seeds"][0])
    actions = store.get_episode(0)["action"]
    # Ground truth, step by step: which steps of the replayed demo are successes.
    env = MetaWorldEnv("push-v3")
    env.reset(seed=seed)
    success = np.array([env.step(a)[4]["success"] for a in actions])
    first = int(np.argmax(success))
    assert success[first]
    n = next(n for n in (4, 5, 6, 7) if first % n != n - 1)  # a chunk size that puts the success mid-chunk
    chunks = [actions[i : i + n] for i in range(0, len(actions) - n + 1, n)]
    env = ChunkedEnv(ENV, n_obs_steps=2, n_action_steps=n, terminate_on_success=True)
    env.reset(seed=seed)
    total_steps, rewards = 0, []
    for chunk in chunks:
        _, reward, terminated, truncated, info = env.step(chunk)
        total_steps += info["env_steps"]
        rewards.append(reward)
        if terminated:
            break
    assert terminated and not truncated and info["success"]
    assert total_steps == first + 1  # the actions after the success were not executed
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0

    # Without termination, the chunk's reward sums the per-step success rewards it executed.
    env = ChunkedEnv(ENV, n_obs_steps=2, n_action_steps=n, terminate_on_success=False)
    env.reset(seed=seed)
    start = first - first % n
    for i in range(0, start, n):
        assert env.step(actions[i : i + n])[1] == 0.0
    _, reward, terminated, _, info = env.step(actions[start : start + n])
    assert reward == float(success[start : start + n].sum()) and not terminated and info["env_steps"] == n


# ---- the noise space -------------------------------------------------------------------------------


def test_actor_latent_respects_the_noise_bound(tiny_dp_checkpoint):
    base = DiffusionPolicy.from_pretrained(tiny_dp_checkpoint)
    cfg = for_base(base, noise_magnitude=0.7, hidden_dim=16, n_layers=1)
    actor = NoiseActor(cfg)
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(1000.0)  # saturate the tanh
    features = torch.randn(256, cfg.obs_feature_dim) * 100
    for latent in (actor(features)[0], actor(features, deterministic=True)[0]):
        assert latent.shape == (256, cfg.latent_dim)
        assert latent.abs().max() <= 0.7 + 1e-6 and latent.abs().max() > 0.69


def test_identical_noise_gives_identical_chunk(tiny_dp_checkpoint):
    base = DiffusionPolicy.from_pretrained(tiny_dp_checkpoint)
    obs = {"state": torch.randn(3, base.config.n_obs_steps, 39)}
    noise = torch.randn(base.noise_shape(3))
    torch.manual_seed(1)
    a = base.predict_action_chunk(obs, noise=noise)
    torch.manual_seed(2)  # the sampler must not draw anything else (DDIM, eta = 0)
    b = base.predict_action_chunk(obs, noise=noise.clone())
    c = base.predict_action_chunk(obs, noise=noise + 0.5)
    assert torch.equal(a, b) and not torch.allclose(a, c)

    steered = SteeredPolicy(for_base(base, hidden_dim=16, n_layers=1), base)
    eps = torch.randn(base.noise_shape(3))
    assert torch.equal(steered.predict_action_chunk(obs, noise=eps), steered.predict_action_chunk(obs, noise=eps))
    assert not torch.equal(steered.predict_action_chunk(obs), steered.predict_action_chunk(obs))  # samples its actor by default
    mean_only = SteeredPolicy(for_base(base, hidden_dim=16, n_layers=1, deterministic=True), base)
    assert torch.equal(mean_only.predict_action_chunk(obs), mean_only.predict_action_chunk(obs))


# ---- training ------------------------------------------------------------------------------------


def test_tiny_dsrl_run_updates_saves_resumes_and_evaluates(tmp_path, tiny_dp_checkpoint):
    run_dir = tmp_path / "na"
    first = dsrl(run_dir, tiny_dp_checkpoint, "--total-env-steps", "160", "--save-every", "96")
    state_dir = Path(first["checkpoint"]) / "train_state"
    state = json.loads((state_dir / "state.json").read_text())
    assert state["env_steps"] == first["env_steps"] >= 160 and state["updates"] > 0
    replay = load_safetensors(state_dir / "replay_transitions.safetensors")
    assert replay["latent"].abs().max() <= 1.5  # every latent sent to the base honoured the bound
    assert int(replay["_cursor"][0]) * 4 >= 160 - 8  # one transition per decision, up to 4 env steps each
    aliases = load_safetensors(state_dir / "replay_aliases.safetensors")
    assert aliases["latent"].shape[0] == 3 * replay["latent"].shape[0]  # own latent + 2 fresh per decision

    policy = Policy.from_pretrained(first["checkpoint"])
    assert isinstance(policy, SteeredPolicy)
    # the same run stopped before its first update (32 env steps < 48 warmup) holds the actor as initialised
    untrained = Policy.from_pretrained(dsrl(tmp_path / "no_updates", tiny_dp_checkpoint, "--total-env-steps", "32")["checkpoint"])
    changed = [k for k, v in policy.actor.state_dict().items() if not torch.equal(v, untrained.actor.state_dict()[k])]
    assert changed, "the actor learned nothing: its weights equal the initial ones"
    assert policy.base.fingerprint() == DiffusionPolicy.from_pretrained(tiny_dp_checkpoint).fingerprint()  # base untouched

    resumed = dsrl(run_dir, tiny_dp_checkpoint, "--total-env-steps", "320", "--save-every", "96", "--resume")
    assert resumed["env_steps"] >= 320
    state2 = json.loads((Path(resumed["checkpoint"]) / "train_state" / "state.json").read_text())
    assert state2["updates"] > state["updates"] and state2["episodes"] > state["episodes"]
    evals = [json.loads(line) for line in (run_dir / "eval_log.jsonl").read_text().splitlines()]
    assert [e["policy"] for e in evals] == ["base", "dsrl", "dsrl"]
    assert all(e["n_episodes"] == 2 and e["max_episode_steps"] == 24 for e in evals)
    logs = [json.loads(line)["env_steps"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert logs == sorted(logs) and logs[-1] >= 288

    # eval.py runs the steered policy like any other checkpoint.
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "eval.py", str(run_dir), "--episodes", "2", "--n-envs", "2", "--max-episode-steps", "8", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "egl"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["policy_type"] == "dsrl" and result["n_episodes"] == 2


def test_dsrl_sac_runs(tmp_path, tiny_dp_checkpoint):
    summary = dsrl(tmp_path / "sac", tiny_dp_checkpoint, "--algo", "sac", "--total-env-steps", "96", "--eval-episodes", "0")
    state = json.loads((Path(summary["checkpoint"]) / "train_state" / "state.json").read_text())
    assert state["updates"] > 0
    assert not (Path(summary["checkpoint"]) / "train_state" / "replay_aliases.safetensors").exists()


# ---- bad input ------------------------------------------------------------------------------------


def test_base_must_be_a_diffusion_policy(tmp_path, vqbet_tiny_checkpoint):
    with pytest.raises(SystemExit, match="holds a vqbet policy; DSRL steers a Diffusion Policy"):
        dsrl(tmp_path / "rl", vqbet_tiny_checkpoint, "--total-env-steps", "32")
    assert not (tmp_path / "rl").exists()  # refused before any rollout or run dir


def test_base_that_does_not_fit_the_env_fails_before_rollouts(tmp_path, mismatched_dp_checkpoint):
    with pytest.raises(SystemExit, match=r"observation 'state' has shape \(39,\) in metaworld/push-v3, the policy expects \(20,\)"):
        dsrl(tmp_path / "rl", mismatched_dp_checkpoint, "--total-env-steps", "32")
    assert not (tmp_path / "rl").exists()


def test_steered_checkpoint_refuses_a_different_base(tmp_path, tiny_dp_checkpoint):
    base = DiffusionPolicy.from_pretrained(tiny_dp_checkpoint)
    SteeredPolicy(for_base(base, hidden_dim=16, n_layers=1), base).save_pretrained(tmp_path / "steered")
    assert isinstance(Policy.from_pretrained(tmp_path / "steered"), SteeredPolicy)
    weights_path = tmp_path / "steered" / "base" / "model.safetensors"
    weights = load_safetensors(weights_path)
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 1e-3
    atomic_save_safetensors(weights_path, weights)
    with pytest.raises(CheckpointError, match="does not match .* trained on a different base"):
        Policy.from_pretrained(tmp_path / "steered")


def test_exact_bootstrap_run_keeps_a_q_a_target_and_resumes(tmp_path, tiny_dp_checkpoint, capsys):
    run_dir = tmp_path / "exact"
    first = dsrl(run_dir, tiny_dp_checkpoint, "--exact-bootstrap", "True", "--total-env-steps", "96", "--save-every", "64", "--eval-episodes", "0")
    state_dir = Path(first["checkpoint"]) / "train_state"
    nets = load_safetensors(state_dir / "nets.safetensors")
    target = {k.split("/", 1)[1]: v for k, v in nets.items() if k.startswith("action_critic_target/")}
    online = {k.split("/", 1)[1]: v for k, v in nets.items() if k.startswith("action_critic/")}
    assert target and target.keys() == online.keys()
    assert any(not torch.equal(target[k], online[k]) for k in target)  # a lagging copy, soft-updated
    resumed = dsrl(run_dir, tiny_dp_checkpoint, "--exact-bootstrap", "True", "--total-env-steps", "160", "--save-every", "64", "--eval-episodes", "0", "--resume")
    assert resumed["env_steps"] >= 160
    with pytest.raises(SystemExit):
        dsrl(tmp_path / "sac", tiny_dp_checkpoint, "--algo", "sac", "--exact-bootstrap", "True", "--total-env-steps", "32")
    assert "exact_bootstrap applies to --algo na" in capsys.readouterr().err


def test_stored_windows_decode_to_the_executed_chunk(tiny_dp_checkpoint):
    """What the exact bootstrap decodes from a replay row equals the chunk the base executed from that window."""
    base = DiffusionPolicy.from_pretrained(tiny_dp_checkpoint)
    steered = SteeredPolicy(for_base(base, hidden_dim=16, n_layers=1), base)
    c = steered.config
    obs = {"state": torch.randn(3, c.n_obs_steps, 39)}
    features = steered.state_features(obs)
    window = features.view(3, c.n_obs_steps, -1).split(list(c.state_dims), dim=-1)
    restored = {k: base.normalizer.unnormalize(k, part) for k, part in zip(c.state_keys, window)}
    noise = torch.randn(base.noise_shape(3))
    torch.testing.assert_close(base.predict_action_chunk(restored, noise=noise), base.predict_action_chunk(obs, noise=noise), atol=1e-5, rtol=1e-5)
