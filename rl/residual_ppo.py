"""On-policy residual RL (following ResiP): PPO over the per-step correction of a frozen chunked policy.

    python train.py residual --algo ppo --base runs/x --env metaworld/sweep-into-v3

Same residual policy as rl/residual_offpolicy.py (zero-initialised last layer, delta = residual_scale *
tanh(.) in normalized action units, sum clipped to the action bounds). Exploration: a Gaussian around
that mean with a fixed or learned state-independent std; the executed correction is clipped to the
residual bound. Vector envs, GAE, clipped surrogate, value function on (observation window, base action);
time-outs end the value (`--no-timeout-is-terminal` bootstraps them from the final state's value instead). Kept for comparison: the ResFiT paper
reports off-policy needing about 200x fewer env steps.

Checkpoints are written after a whole PPO iteration (rollout + update), so a resumed run starts a
fresh rollout from the saved networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from envs.make import make_env, make_vector_env
from policies.mlp import mlp
from policies.residual.config import for_base
from policies.residual.policy import ResidualPolicy
from rl.base_actions import BaseActionQueues
from rl.common import RLRunConfig, adam, reset_finished
from rl.run import RLRun, run_cli


@dataclass(frozen=True)
class ResidualPPOConfig(RLRunConfig):
    total_env_steps: int = 200_000
    """Budget in env steps."""
    rollout_steps: int = 128
    """Steps per env per PPO iteration (n_envs x rollout_steps samples)."""
    residual_scale: float = 0.1
    """Largest correction per dimension, in normalized action units."""
    hidden_dim: int = 256
    """Width of the residual actor and the value MLP."""
    n_layers: int = 2
    """Hidden layers of the residual actor and the value MLP."""
    init_std: float = 0.05
    """Initial exploration std of the correction, normalized action units."""
    learn_std: bool = True
    """Learn a state-independent log-std (else keep init_std fixed)."""
    gamma: float = 0.99
    """Discount per env step."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    update_epochs: int = 4
    """Passes over each rollout."""
    n_minibatches: int = 8
    """Minibatches per pass."""
    clip_coef: float = 0.2
    """PPO ratio clip."""
    vf_coef: float = 0.5
    """Value loss weight."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    max_grad_norm: float = 0.5
    """Gradient norm clip."""
    lr: float = 3e-4
    """Adam learning rate."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over total_env_steps (set at the start of each iteration)."""
    norm_adv: bool = True
    """Normalize advantages to zero mean and unit std within each minibatch."""
    clip_vloss: bool = False
    """Clip the value update: the loss is the larger of the plain and the clipped (within clip_coef of the
    rollout's value) squared errors, as in PPO2 / CleanRL."""
    target_kl: float | None = None
    """Stop an iteration's update epochs early once the approximate KL to the rollout policy exceeds this."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("total_env_steps", "n_envs", "rollout_steps", "update_epochs", "n_minibatches", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"target_kl must be > 0 (or None: no early stop), got {self.target_kl}")

    def method_name(self) -> str:
        return "residual-ppo"




class ValueAndStd(torch.nn.Module):
    """The PPO-only parts: value function V(s, a_base) and the exploration log-std."""

    def __init__(self, in_dim: int, action_dim: int, hidden_dim: int, n_layers: int, init_std: float, learn_std: bool) -> None:
        super().__init__()
        self.value = mlp(in_dim, 1, hidden_dim, n_layers, layer_norm=True, activation="tanh")
        self.log_std = torch.nn.Parameter(torch.full((action_dim,), math.log(init_std)), requires_grad=learn_std)

    def v(self, features: torch.Tensor, base_norm: torch.Tensor) -> torch.Tensor:
        return self.value(torch.cat([features, base_norm], dim=-1)).squeeze(-1)


def train(cfg: ResidualPPOConfig) -> dict:
    run = RLRun(cfg, "residual-ppo")
    cfg = run.cfg  # with the episode limit resolved
    base, device, rng = run.base, run.device, run.rng

    probe = make_env(cfg.env)
    low, high = probe.action_space.low, probe.action_space.high
    probe.close()
    policy = ResidualPolicy(for_base(base, low, high, residual_scale=cfg.residual_scale, hidden_dim=cfg.hidden_dim, n_layers=cfg.n_layers), base).to(device)
    pc = policy.config
    obs_dim, act_dim, scale = pc.obs_feature_dim, pc.action_dim, cfg.residual_scale
    normalize = lambda a: policy.normalizer.normalize(pc.action_key, a)  # noqa: E731
    extra = ValueAndStd(obs_dim + act_dim, act_dim, cfg.hidden_dim, cfg.n_layers, cfg.init_std, cfg.learn_std).to(device)
    params = [*policy.residual.parameters(), *(p for p in extra.parameters() if p.requires_grad)]
    optimizer = adam(params, cfg.lr)

    with run.open(policy, {"value_and_std": extra}, {"ppo": optimizer}, {}, counters=("iterations",), log_every=1):
        state = run.state
        envs = run.own(make_vector_env(cfg.env, cfg.n_envs, max_episode_steps=cfg.max_episode_steps, terminate_on_success=cfg.terminate_on_success))
        queues = BaseActionQueues(base, cfg.n_envs)
        obs, _ = envs.reset(seed=run.seeds.take(cfg.n_envs))
        base_action, features = queues.step(obs)
        T, N = cfg.rollout_steps, cfg.n_envs
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        while not run.finished:
            if cfg.anneal_lr:
                optimizer.param_groups[0]["lr"] = cfg.lr * max(0.0, 1.0 - state["env_steps"] / cfg.total_env_steps)
            buf = {"obs": zeros(T, N, obs_dim), "base": zeros(T, N, act_dim), "raw": zeros(T, N, act_dim),
                   "log_prob": zeros(T, N), "value": zeros(T, N), "reward": zeros(T, N), "terminal": zeros(T, N)}
            for t in range(T):
                with torch.no_grad():
                    base_norm = normalize(base_action)
                    mean = policy.correction(features, base_norm)
                    dist = torch.distributions.Normal(mean, extra.log_std.exp())
                    raw = dist.sample()
                    action = policy.combine(base_norm, raw.clamp(-scale, scale))
                    buf["value"][t] = extra.v(features, base_norm)
                buf["obs"][t], buf["base"][t], buf["raw"][t], buf["log_prob"][t] = features, base_norm, raw, dist.log_prob(raw).sum(-1)
                next_obs, _, terminated, truncated, info = envs.step(action.cpu().numpy())
                success = np.asarray(info["success"], dtype=np.float32)
                reward = torch.as_tensor(success, device=device)
                done = terminated | truncated
                next_base_action, next_features = queues.step(next_obs)
                if truncated.any() and not cfg.timeout_is_terminal:  # bootstrap a time-out from the final state's value
                    with torch.no_grad():
                        v_final = extra.v(next_features, normalize(next_base_action))
                    reward = reward + cfg.gamma * v_final * torch.as_tensor(truncated & ~terminated, dtype=torch.float32, device=device)
                buf["reward"][t], buf["terminal"][t] = reward, torch.as_tensor(done, dtype=torch.float32, device=device)
                run.advance(N, success, done)
                if done.any():
                    next_obs = reset_finished(envs, next_obs, done, run.seeds)
                    queues.reset(done)
                    fresh_action, fresh_features = queues.step({k: v[done] for k, v in next_obs.items()}, ids=np.flatnonzero(done).tolist())
                    next_base_action[done], next_features[done] = fresh_action, fresh_features
                base_action, features = next_base_action, next_features

            # GAE over the rollout, bootstrapping from the value of the state after it.
            with torch.no_grad():
                next_value = extra.v(features, normalize(base_action))
            advantages = zeros(T, N)
            last = zeros(N)
            for t in reversed(range(T)):
                value_after = next_value if t == T - 1 else buf["value"][t + 1]
                nonterminal = 1.0 - buf["terminal"][t]
                delta = buf["reward"][t] + cfg.gamma * value_after * nonterminal - buf["value"][t]
                last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last
                advantages[t] = last
            returns = advantages + buf["value"]
            flat = {k: v.reshape(T * N, *v.shape[2:]) for k, v in buf.items()}
            flat_adv, flat_ret = advantages.reshape(-1), returns.reshape(-1)

            minibatch = T * N // cfg.n_minibatches
            clip_fracs, approx_kl, epochs_run = [], 0.0, 0
            for _ in range(cfg.update_epochs):
                epochs_run += 1
                order = torch.from_numpy(rng.permutation(T * N)).to(device)
                for start in range(0, T * N, minibatch):
                    idx = order[start : start + minibatch]
                    mean = policy.correction(flat["obs"][idx], flat["base"][idx])
                    dist = torch.distributions.Normal(mean, extra.log_std.exp())
                    log_prob = dist.log_prob(flat["raw"][idx]).sum(-1)
                    log_ratio = log_prob - flat["log_prob"][idx]
                    ratio = log_ratio.exp()
                    adv = flat_adv[idx]
                    if cfg.norm_adv:
                        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                    value = extra.v(flat["obs"][idx], flat["base"][idx])
                    if cfg.clip_vloss:
                        clipped = flat["value"][idx] + (value - flat["value"][idx]).clamp(-cfg.clip_coef, cfg.clip_coef)
                        value_loss = 0.5 * torch.max((value - flat_ret[idx]) ** 2, (clipped - flat_ret[idx]) ** 2).mean()
                    else:
                        value_loss = 0.5 * F.mse_loss(value, flat_ret[idx])
                    entropy = dist.entropy().sum(-1).mean()
                    loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - log_ratio).mean().item()
                        clip_fracs.append(((ratio - 1).abs() > cfg.clip_coef).float().mean().item())
                if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                    break
            state["iterations"] += 1
            run.add_metrics({"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item(), "approx_kl": approx_kl,
                             "clip_frac": float(np.mean(clip_fracs)), "std_mean": extra.log_std.exp().mean().item(), "epochs": epochs_run,
                             "lr": optimizer.param_groups[0]["lr"]})
            run.checkpoint_and_evaluate(policy, "residual-ppo", counter="iterations")
        return run.summary(policy, "residual-ppo")


def main(argv: list[str] | None = None) -> dict:
    return run_cli(ResidualPPOConfig, train, "train.py residual --algo ppo", argv)


if __name__ == "__main__":
    main()
