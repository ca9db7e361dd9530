"""Residual RL on real Meta-World physics: identity at initialisation, n-step and ensemble-target
arithmetic against hand-computed cases, and tiny off-policy and PPO runs with save, resume and eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from core.io import CheckpointError, atomic_save_safetensors, load_safetensors
from envs.make import make_env
from policies import DiffusionPolicy, Policy, ResidualPolicy
from policies.residual.config import for_base
from rl.base_actions import BaseActionQueues
from rl.replay import NStepAccumulator
from rl.residual_offpolicy import ensemble_target

ROOT = Path(__file__).resolve().parents[1]
ENV = "metaworld/push-v3"
TINY = ["--env", ENV, "--n-envs", "2", "--max-episode-steps", "24", "--hidden-dim", "32", "--eval-episodes", "2", "--eval-n-envs", "2",
        "--eval-every", "0"]


def residual(run_dir: Path, base: Path, algo: str, *extra: str) -> dict:
    args = ["residual", "--algo", algo, "--base", str(base), "--run-dir", str(run_dir), *TINY]
    if algo == "offpolicy":
        args += ["--warmup-env-steps", "32", "--critic-only-env-steps", "48", "--utd", "2", "--batch-size", "16", "--critic-hidden-dim", "32",
                 "--n-critics", "4", "--log-every", "16", "--replay-capacity", "4096"]
    else:
        args += ["--rollout-steps", "16", "--n-minibatches", "2", "--update-epochs", "2"]
    return train.main([*args, *extra])


def test_untrained_residual_policy_acts_exactly_like_its_base(tiny_dp_checkpoint):
    base = DiffusionPolicy.from_pretrained(tiny_dp_checkpoint)
    env = make_env(ENV)
    policy = ResidualPolicy(for_base(base, env.action_space.low, env.action_space.high), DiffusionPolicy.from_pretrained(tiny_dp_checkpoint))
    obs, _ = env.reset(seed=5)
    base.reset()
    policy.reset()
    for _ in range(10):  # spans two chunks of the tiny base (n_action_steps 4)
        o = {"state": torch.as_tensor(obs["state"][None])}
        torch.manual_seed(0)
        a_base = base.select_action(o)
        torch.manual_seed(0)
        a_res = policy.select_action(o)
        assert torch.allclose(a_res, a_base.clamp(-1, 1), atol=1e-6)
        obs = env.step(a_base[0].numpy())[0]
    env.close()


def test_base_action_queues_match_select_action(tiny_dp_checkpoint):
    base = DiffusionPolicy.from_pretrained(tiny_dp_checkpoint)
    states = torch.randn(9, 1, 39)
    torch.manual_seed(0)
    base.reset()
    expected = [base.select_action({"state": s}) for s in states]
    torch.manual_seed(0)
    queues = BaseActionQueues(base, 1)
    got = [queues.step({"state": s.numpy()})[0] for s in states]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_n_step_returns_by_hand():
    gamma = 0.9
    acc = NStepAccumulator(3, gamma, n_envs=1)
    row = lambda t: {"obs": t, "next_obs": t + 1}  # noqa: E731
    # Episode A: rewards 0, 0, 1 and termination at the third step.
    assert acc.push(0, row(0), 0.0, False, False) == []
    assert acc.push(0, row(1), 0.0, False, False) == []
    out = acc.push(0, row(2), 1.0, True, True)
    assert [(o["obs"], o["next_obs"], round(o["reward"], 6), o["discount"]) for o in out] == [(0, 3, 0.81, 0.0), (1, 3, 0.9, 0.0), (2, 3, 1.0, 0.0)]
    # Episode B: five steps of reward 1, then truncation (not terminal): bootstrap with gamma^m.
    outs = [acc.push(0, row(t), 1.0, False, t == 4) for t in range(5)]
    assert [len(o) for o in outs] == [0, 0, 1, 1, 3]
    first = outs[2][0]
    assert (first["obs"], first["next_obs"], round(first["reward"], 6), round(first["discount"], 6)) == (0, 3, 2.71, 0.729)
    tail = [(o["obs"], o["next_obs"], round(o["reward"], 6), round(o["discount"], 6)) for o in outs[4]]
    assert tail == [(2, 5, 2.71, 0.729), (3, 5, 1.9, 0.81), (4, 5, 1.0, 0.9)]


def test_ensemble_target_by_hand():
    q_next = torch.tensor([[1.0, 5.0], [2.0, 3.0], [0.5, 9.0], [4.0, 4.0]])  # 4 heads, 2 samples
    reward, discount = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0])
    target = ensemble_target(q_next, torch.tensor([1, 3]), reward, discount)
    assert torch.allclose(target, torch.tensor([1.0 + 0.5 * 2.0, 0.0]))  # min(2, 4) = 2; terminal ignores Q
    assert torch.allclose(ensemble_target(q_next, torch.tensor([0, 2]), reward, torch.tensor([1.0, 1.0])), torch.tensor([1.5, 5.0]))


@pytest.mark.parametrize("algo", ["offpolicy", "ppo"])
def test_tiny_residual_run_updates_saves_resumes_and_evaluates(tmp_path, tiny_dp_checkpoint, algo):
    run_dir = tmp_path / algo
    first = residual(run_dir, tiny_dp_checkpoint, algo, "--total-env-steps", "96", "--save-every", "64")
    state = json.loads((Path(first["checkpoint"]) / "train_state" / "state.json").read_text())
    assert state["env_steps"] == first["env_steps"] >= 96
    assert (state["updates"] if algo == "offpolicy" else state["iterations"]) > 0
    policy = Policy.from_pretrained(first["checkpoint"])
    assert isinstance(policy, ResidualPolicy)
    last = policy.residual.net[-1]
    assert last.weight.abs().sum() > 0  # the zero-initialised output layer has learned

    resumed = residual(run_dir, tiny_dp_checkpoint, algo, "--total-env-steps", "192", "--save-every", "64", "--resume")
    state2 = json.loads((Path(resumed["checkpoint"]) / "train_state" / "state.json").read_text())
    assert state2["env_steps"] >= 192 and state2["episodes"] > state["episodes"]
    evals = [json.loads(line) for line in (run_dir / "eval_log.jsonl").read_text().splitlines()]
    assert [e["policy"] for e in evals] == ["base", f"residual-{algo}", f"residual-{algo}"]

    out = tmp_path / "eval.json"
    cmd = [sys.executable, "eval.py", str(run_dir), "--episodes", "2", "--n-envs", "2", "--max-episode-steps", "8", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "egl"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["policy_type"] == "residual"


def test_residual_on_a_vqbet_base_and_a_different_base_is_refused(tmp_path, vqbet_tiny_checkpoint):
    summary = residual(tmp_path / "rl", vqbet_tiny_checkpoint, "offpolicy", "--total-env-steps", "64", "--eval-episodes", "0")
    ckpt = Path(summary["checkpoint"])
    assert Policy.from_pretrained(ckpt).base.policy_type == "vqbet"
    weights_path = ckpt / "base" / "model.safetensors"
    weights = load_safetensors(weights_path)
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 1e-3
    atomic_save_safetensors(weights_path, weights)
    with pytest.raises(CheckpointError, match="trained on a different base"):
        Policy.from_pretrained(ckpt)


def test_residual_refuses_a_base_that_does_not_fit_the_env(tmp_path, mismatched_dp_checkpoint, tiny_dp_checkpoint):
    for algo in ("offpolicy", "ppo"):
        with pytest.raises(SystemExit, match=r"observation 'state' has shape \(39,\) in metaworld/push-v3, the policy expects \(20,\)"):
            residual(tmp_path / algo, mismatched_dp_checkpoint, algo, "--total-env-steps", "32")
        assert not (tmp_path / algo).exists()
    with pytest.raises(SystemExit, match="demos were recorded in 'metaworld/push-v3'"):
        train.main(["residual", "--base", str(tiny_dp_checkpoint), "--run-dir", str(tmp_path / "rl"), *TINY[2:], "--env", "metaworld/reach-v3"])
    assert not (tmp_path / "rl").exists()


def test_default_episode_limit_follows_the_demos(tmp_path, tiny_dp_checkpoint):
    """Without --max-episode-steps the limit is 1.25 x the longest demo, at least 100, at most the env's 500;
    the run saves the number it used in train_config.json."""
    import numpy as np

    from data.store import EpisodeStore
    from rl.common import base_datasets, episode_limit

    def store(name: str, lengths: list[int]) -> Path:
        s = EpisodeStore.create(tmp_path / f"{name}.zarr", env_id="push-v3", fps=80.0, source="test")
        for n in lengths:
            s.append_episode({"action": np.zeros((n, 4), np.float32)})
        return s.path

    assert episode_limit(ENV, [store("short", [30, 60])], tmp_path) == 100
    assert episode_limit(ENV, [store("push_back_like", [84, 352, 90])], tmp_path) == 440
    assert episode_limit(ENV, [store("a", [90]), store("long", [450])], tmp_path) == 500
    with pytest.raises(ValueError, match="no demos known for base .*pass --max-episode-steps"):
        episode_limit(ENV, [], tmp_path / "exported")

    (demos,) = base_datasets(tiny_dp_checkpoint)
    expected = episode_limit(ENV, [demos], tiny_dp_checkpoint)
    run_dir = tmp_path / "rl"
    args = ["residual", "--base", str(tiny_dp_checkpoint), "--run-dir", str(run_dir), "--env", ENV, "--n-envs", "2", "--hidden-dim", "32",
            "--eval-episodes", "0", "--total-env-steps", "32", "--warmup-env-steps", "16", "--critic-only-env-steps", "16", "--utd", "1",
            "--batch-size", "8", "--critic-hidden-dim", "32", "--n-critics", "2", "--replay-capacity", "1024"]
    train.main(args)
    assert json.loads((run_dir / "train_config.json").read_text())["max_episode_steps"] == expected >= 100
    train.main([*args, "--total-env-steps", "48", "--resume"])  # the resolved limit matches the saved one on resume
