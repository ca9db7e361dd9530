"""What is deployed is what was evaluated: for every policy type, a real policy server on loopback driven by
the deployment executor at zero latency sends exactly the actions eval.py's rollout takes, and scores the
same episodes the same way. Also: the observation-window helper, the registry and the declared capabilities."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from core.window import ObsWindow
from data.sampler import WindowSampler
from deploy.client import PolicyClient
from deploy.executor import ChunkExecutor, ExecutorConfig, SafetyLimits, simulated_tick
from deploy.server import PolicyServer, ServerOptions, ServerThread, load_for_serving
from deploy.sim import evaluate_with_latency
from envs.rollout import SelectActionController, evaluate
from policies import DiffusionConfig, Policy, ResidualPolicy, VQBeTConfig, policy_class, policy_class_for_config
from policies.diffusion.compile import compile_sampling

ENV = "metaworld/push-v3"
EPISODES, STEPS = 2, 30


class Recorded(SelectActionController):
    """eval.py's way of acting (`select_action` on the batched observation), recording what it sends."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        self.sent: list[np.ndarray] = []

    def actions(self, obs, done, tick):
        actions = super().actions(obs, done, tick)
        self.sent.append(actions[0].copy())
        return actions


class Served:
    """The deployed way: each step goes through the executor (zero latency, no safety layer) and a real
    websocket server; one connection per episode, as a robot would reconnect or reset."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.sent: list[np.ndarray] = []
        self.client: PolicyClient | None = None

    def start_wave(self, n_envs: int) -> None:
        assert n_envs == 1
        if self.client is not None:
            self.client.close()
        self.client = PolicyClient(self.uri)
        self.executor = ChunkExecutor(ExecutorConfig.from_metadata(self.client.metadata, fps=80.0, safety=SafetyLimits()))
        self.pending = [deque()]

    def actions(self, obs, done, tick):
        infer = lambda windows, robots: [np.asarray(self.client.infer(w)["actions"]) for w in windows]  # noqa: E731
        (action,) = simulated_tick([self.executor], [{k: v[0] for k, v in obs.items()}], infer, 0, tick, self.pending)
        self.sent.append(action)
        return action[None]

    def end_wave(self, n_active: int) -> None:
        pass


@pytest.mark.parametrize("which", ["diffusion", "vqbet", "dsrl", "residual", "pointcloud"])
def test_served_actions_and_success_equal_the_evaluated_ones(which, request):
    checkpoint = request.getfixturevalue({"diffusion": "tiny_dp_checkpoint", "vqbet": "vqbet_tiny_checkpoint", "dsrl": "dsrl_checkpoint",
                                          "residual": "residual_checkpoint", "pointcloud": "tiny_pointcloud_checkpoint"}[which])
    from core.checkpoint import resolve_checkpoint

    evaluated = Policy.from_pretrained(resolve_checkpoint(checkpoint))
    compile_sampling(evaluated)  # as eval.py
    recorded = Recorded(evaluated)
    expected = evaluate(evaluated, ENV, EPISODES, n_envs=1, max_episode_steps=STEPS, progress=False, controller=recorded)

    policy, metadata = load_for_serving(checkpoint, env=ENV)
    assert metadata["acts_per_step"] is (which == "residual")
    with ServerThread(PolicyServer(policy, metadata, ServerOptions(port=0))) as running:
        served = Served(running.uri)
        got = evaluate(evaluated, ENV, EPISODES, n_envs=1, max_episode_steps=STEPS, progress=False, controller=served)
        served.client.close()
    assert len(served.sent) == len(recorded.sent) == sum(e.length for e in expected.episodes)
    np.testing.assert_array_equal(np.stack(served.sent), np.stack(recorded.sent))  # bit-identical
    assert [(e.seed, e.success, e.length) for e in got.episodes] == [(e.seed, e.success, e.length) for e in expected.episodes]


def test_latency_eval_runs_a_residual_per_step(residual_checkpoint):
    policy = Policy.from_pretrained(residual_checkpoint)
    assert isinstance(policy, ResidualPolicy) and policy.acts_per_step
    recorded = Recorded(policy)
    expected = evaluate(policy, ENV, EPISODES, n_envs=1, max_episode_steps=STEPS, progress=False, controller=recorded)
    at_zero = evaluate_with_latency(policy, ENV, EPISODES, latency_ms=0, n_envs=1, max_episode_steps=STEPS, progress=False)
    assert [(e.success, e.length) for e in at_zero.result.episodes] == [(e.success, e.length) for e in expected.episodes]
    assert at_zero.hold_fraction == 0.0
    delayed = evaluate_with_latency(policy, ENV, EPISODES, latency_ms=25, n_envs=2, max_episode_steps=STEPS, progress=False)
    assert delayed.latency_ticks == 2 and delayed.hold_fraction > 0  # one fresh action per request: the arm waits for it


def test_obs_window_pads_like_the_training_sampler():
    episode = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    sampler = WindowSampler({"state": episode}, np.array([5]), {"state": [-2, -1, 0]})
    window = ObsWindow(3)
    for t in range(5):
        window.push({"state": episode[t]})
        np.testing.assert_array_equal(window.stacked(np.stack)["state"], sampler.sample(np.array([t]))["state"][0])
    window.clear()
    window.push({"state": episode[3]})
    np.testing.assert_array_equal(window.stacked(np.stack)["state"], np.stack([episode[3]] * 3))
    with pytest.raises(RuntimeError, match="empty"):
        ObsWindow(2).stacked(np.stack)


def test_registry_and_declared_capabilities(tiny_dp_checkpoint, vqbet_tiny_checkpoint, residual_checkpoint, dsrl_checkpoint):
    assert policy_class("diffusion").config_class is DiffusionConfig and policy_class_for_config(VQBeTConfig()).policy_type == "vqbet"
    with pytest.raises(KeyError, match=r"unknown policy type 'act'; known: \['diffusion', 'dsrl', 'residual', 'vqbet'\]"):
        policy_class("act")
    with pytest.raises(KeyError, match=r"no policy type takes a dict"):
        policy_class_for_config({})
    from core.checkpoint import resolve_checkpoint

    dp, vq, res, steered = (Policy.from_pretrained(resolve_checkpoint(p)) for p in (tiny_dp_checkpoint, vqbet_tiny_checkpoint, residual_checkpoint, dsrl_checkpoint))
    assert [p.acts_per_step for p in (dp, vq, res, steered)] == [False, False, True, False]
    assert dp.noise_shape(3) == res.noise_shape(3) == steered.noise_shape(3) == (3, dp.config.horizon, dp.config.action_dim) and vq.noise_shape(3) is None
    assert dp.sampler_core() is dp and res.sampler_core() is res.base and vq.sampler_core() is None
    assert res.action_bounds() == ([-1.0] * 4, [1.0] * 4) and dp.action_bounds() is None
    assert vq.trains_in_phases and not dp.trains_in_phases
    with pytest.raises(ValueError, match="a vqbet policy has no diffusion sampler to change"):
        vq.set_sampler("ddim", 3)
    fork = res.fork()  # shares weights, not episode state
    assert fork.residual.net[-1].weight is res.residual.net[-1].weight and fork.base is not res.base
    obs = {"state": torch.randn(1, 39)}
    res.reset()
    fork.reset()
    torch.manual_seed(0)
    a = res.select_action(obs)
    torch.manual_seed(0)
    assert torch.equal(fork.select_action(obs), a) and len(res.base._action_queue) == len(fork.base._action_queue)
    res.reset()
    assert len(fork.base._action_queue) > 0  # resetting one leaves the other's episode alone
