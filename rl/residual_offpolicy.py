"""Off-policy residual RL (following ResFiT): per-step corrections on top of a frozen chunked policy.

    python train.py residual --base runs/x --env metaworld/sweep-into-v3                 # this file (--algo offpolicy)
    python train.py residual --algo ppo --base runs/x --env metaworld/sweep-into-v3      # rl/residual_ppo.py

The base (Diffusion Policy or VQ-BeT) is a black box that supplies its next action from its chunk queue
(rl/base_actions.py). The residual actor reads (normalized observation window, normalized base action)
and outputs delta = residual_scale * tanh(.), added in normalized action units; the sum is clipped to
the env's action bounds (policies/residual). Its last layer starts at zero: step 0 is the base exactly.

TD3-style learning:
- critic: an ensemble of `n_critics` LayerNorm MLPs Q(s, a_base, a) on the executed action a; the target
  is the min over `n_target_critics` heads drawn at random per update (REDQ), on n-step returns;
- actor: maximises the ensemble-mean Q, updated every `actor_delay` critic updates, after
  `critic_only_env_steps`; target policy smoothing with clipped Gaussian noise;
- batches: half demos, half online data (RLPD). Demo transitions are relabelled with the base's own
  action at each demo state (the base runs over the demo with its chunk queue, as in a rollout) and keep
  the demo's action as the executed action; their rewards come from replaying the demo in the env;
- warm-up: base + Gaussian noise of `exploration_std`, no updates, for `warmup_env_steps`;
- sparse success reward, terminate on success; budgets and logs count env steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.store import EpisodeStore, StoreError
from data.training import derivable_keys, with_derived
from envs.make import make_env, make_vector_env
from policies.residual.config import for_base
from policies.residual.policy import ResidualPolicy
from rl.base_actions import BaseActionQueues
from rl.common import RLRunConfig, adam, base_datasets, reset_finished
from rl.run import RLRun, run_cli
from rl.networks import QEnsemble, soft_update
from rl.replay import NStepAccumulator, ReplayBuffer


@dataclass(frozen=True)
class ResidualOffPolicyConfig(RLRunConfig):
    dataset: Path | None = None
    """Demos for the demo half of each batch (default: the dataset the base was trained on, from its run's train_config.json)."""
    total_env_steps: int = 200_000
    """Budget in env steps."""
    residual_scale: float = 0.3
    """Largest correction per dimension, in normalized action units. At 0.1 the corrections sat at the bound
    (mean |delta| 0.093) and success plateaued near +15 points on sweep-into; 0.3 gave +39 at 80k env steps,
    3 seeds (README, docs/rl.md)."""
    hidden_dim: int = 256
    """Width of the residual actor MLP."""
    n_layers: int = 2
    """Hidden layers of the residual actor."""
    critic_hidden_dim: int = 256
    """Width of each critic head."""
    critic_layers: int = 2
    """Hidden layers of each critic head."""
    n_critics: int = 10
    """Critic ensemble size."""
    n_target_critics: int = 2
    """Heads drawn at random for the min in the TD target."""
    gamma: float = 0.99
    """Discount per env step."""
    n_step: int = 3
    """n-step returns."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    lr: float = 3e-4
    """Adam learning rate of actor and critic."""
    batch_size: int = 256
    """Transitions per update (half demos, half online when `demo_fraction` is 0.5)."""
    demo_fraction: float = 0.5
    """Share of each batch drawn from the demos."""
    utd: int = 4
    """Critic updates per vector-env step (n_envs env steps)."""
    actor_delay: int = 2
    """One actor update per this many critic updates."""
    exploration_std: float = 0.05
    """Gaussian exploration noise on the correction, normalized action units (clipped to the residual bound)."""
    target_noise_std: float = 0.05
    """Target policy smoothing noise, normalized action units."""
    target_noise_clip: float = 0.1
    """Clip of the target smoothing noise."""
    warmup_env_steps: int = 5_000
    """Act with base + exploration noise and do no updates until this many env steps."""
    critic_only_env_steps: int = 10_000
    """Update only the critic until this many env steps."""
    replay_capacity: int = 1_000_000
    """Online transitions kept (FIFO)."""
    log_every: int = 2_000
    """Env steps between logged scalars."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.n_target_critics <= self.n_critics:
            raise ValueError(f"n_target_critics must be in [1, n_critics={self.n_critics}], got {self.n_target_critics}")
        if not 0.0 <= self.demo_fraction < 1.0:
            raise ValueError(f"demo_fraction must be in [0, 1), got {self.demo_fraction}")
        for name in ("total_env_steps", "n_envs", "batch_size", "utd", "actor_delay", "log_every", "save_every", "n_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def method_name(self) -> str:
        return "residual-offpolicy"




def base_dataset(base_path: Path) -> Path:
    """The one store the base was trained on (the demo half of each batch)."""
    datasets = base_datasets(base_path)
    if not datasets:
        raise ValueError(f"cannot tell which demos {base_path} was trained on (no train_config.json in its run dir); pass --dataset")
    if len(datasets) != 1:
        raise ValueError(f"{base_path} was trained on {len(datasets)} stores {[str(d) for d in datasets]}; pass the demos for the residual with --dataset")
    return datasets[0]


def ensemble_target(q_next: torch.Tensor, heads: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor) -> torch.Tensor:
    """TD target: reward + discount * min over the chosen heads of the target ensemble's Q (q_next: (n_critics, B))."""
    return reward + discount * q_next[heads].min(0).values


def demo_transitions(policy: ResidualPolicy, store_path: Path, env_name: str, max_episode_steps: int, gamma: float, n_step: int,
                     timeout_is_terminal: bool) -> tuple[dict[str, np.ndarray], dict]:
    """Relabel the demos: base action at every demo state, the demo action as the executed action, and
    sparse success rewards from replaying each demo in the env from its recorded seed."""
    store = EpisodeStore.open(store_path)
    if store.attrs.get("env_id") != env_name:
        raise StoreError(f"{store_path}: demos were recorded in {store.attrs.get('env_id')!r}, training runs in {env_name!r}")
    seeds = store.attrs.get("episode_seeds")
    if seeds is None or len(seeds) != store.n_episodes:
        raise StoreError(f"{store_path}: needs attrs['episode_seeds'] (one per episode) to replay the demos for their rewards")
    cfg = policy.config
    env = make_env(env_name, max_episode_steps=max_episode_steps, terminate_on_success=True)
    queues = BaseActionQueues(policy.base, 1)
    accumulator = NStepAccumulator(n_step, gamma, 1)
    derived = derivable_keys(store, cfg.state_keys)  # keys the env added after these demos were recorded
    rows: list[dict] = []
    stats = {"episodes": store.n_episodes, "replayed_successes": 0, "transitions": 0}
    for episode_index in range(store.n_episodes):
        episode = with_derived(store.get_episode(episode_index), derived)
        env.reset(seed=int(seeds[episode_index]))
        queues.reset()
        steps = min(len(episode[cfg.action_key]), max_episode_steps)

        def obs_at(t: int, episode: dict = episode) -> dict[str, np.ndarray]:
            return {k: episode[k][t : t + 1] for k in cfg.state_keys}

        base_action, features = queues.step(obs_at(0))
        for t in range(steps):
            action = episode[cfg.action_key][t]
            _, _, terminated, truncated, info = env.step(action)
            last = t + 1 >= len(episode[cfg.action_key])
            done = terminated or truncated or last
            next_obs = obs_at(min(t + 1, len(episode[cfg.action_key]) - 1))
            next_base, next_features = queues.step(next_obs)
            row = {
                "obs": features[0], "base": policy.normalizer.normalize(cfg.action_key, base_action)[0],
                "action": policy.normalizer.normalize(cfg.action_key, torch.as_tensor(action[None], dtype=torch.float32, device=features.device))[0],
                "next_obs": next_features[0], "next_base": policy.normalizer.normalize(cfg.action_key, next_base)[0],
            }
            row = {k: v.cpu().numpy() for k, v in row.items()}
            rows += accumulator.push(0, row, float(info["success"]), terminated or (truncated and timeout_is_terminal), done)
            base_action, features = next_base, next_features
            if done:
                stats["replayed_successes"] += int(terminated)
                break
    env.close()
    stats["transitions"] = len(rows)
    return {k: np.stack([r[k] for r in rows]).astype(np.float32) for k in rows[0]}, stats


def train(cfg: ResidualOffPolicyConfig) -> dict:
    run = RLRun(cfg, "residual-offpolicy", demos=[cfg.dataset] if cfg.dataset else None)
    cfg = run.cfg  # with the episode limit resolved
    base, device, rng = run.base, run.device, run.rng
    dataset = cfg.dataset or base_dataset(cfg.base)

    probe = make_env(cfg.env)
    low, high = probe.action_space.low, probe.action_space.high
    probe.close()
    policy = ResidualPolicy(
        for_base(base, low, high, residual_scale=cfg.residual_scale, hidden_dim=cfg.hidden_dim, n_layers=cfg.n_layers), base
    ).to(device)
    pc = policy.config
    obs_dim, act_dim, scale = pc.obs_feature_dim, pc.action_dim, cfg.residual_scale
    normalize = lambda a: policy.normalizer.normalize(pc.action_key, a)  # noqa: E731

    critic = QEnsemble(obs_dim + 2 * act_dim, cfg.n_critics, cfg.critic_hidden_dim, cfg.critic_layers, True, "relu").to(device)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    actor_target = copy.deepcopy(policy.residual).requires_grad_(False)
    nets = {"critic": critic, "critic_target": critic_target, "actor_target": actor_target}
    optimizers = {"actor": adam(policy.residual.parameters(), cfg.lr), "critic": adam(critic.parameters(), cfg.lr)}
    shapes = {"obs": (obs_dim,), "base": (act_dim,), "action": (act_dim,), "reward": (), "discount": (), "next_obs": (obs_dim,), "next_base": (act_dim,)}
    replay = ReplayBuffer(cfg.replay_capacity, shapes)

    demos, demo_stats = demo_transitions(policy, dataset, cfg.env, cfg.max_episode_steps, cfg.gamma, cfg.n_step, cfg.timeout_is_terminal)
    demo_buffer = ReplayBuffer(len(demos["obs"]), shapes)
    demo_buffer.add(**demos)
    print(f"demos: {demo_stats['episodes']} episodes from {dataset}, {demo_stats['replayed_successes']} reach success when replayed, "
          f"{demo_stats['transitions']} {cfg.n_step}-step transitions")
    n_demo = round(cfg.batch_size * cfg.demo_fraction)

    def sample_batch() -> dict[str, torch.Tensor]:
        online = replay.sample(cfg.batch_size - n_demo, rng, device)
        if not n_demo:
            return online
        demo = demo_buffer.sample(n_demo, rng, device)
        return {k: torch.cat([demo[k], online[k]]) for k in online}

    def update_critic() -> dict[str, float]:
        b = sample_batch()
        with torch.no_grad():
            smoothing = (torch.randn_like(b["next_base"]) * cfg.target_noise_std).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
            next_delta = (scale * torch.tanh(actor_target(b["next_obs"], b["next_base"])) + smoothing).clamp(-scale, scale)
            next_action = normalize(policy.combine(b["next_base"], next_delta))
            heads = torch.from_numpy(rng.choice(cfg.n_critics, cfg.n_target_critics, replace=False)).to(device)
            target = ensemble_target(critic_target(b["next_obs"], b["next_base"], next_action), heads, b["reward"], b["discount"])
        q = critic(b["obs"], b["base"], b["action"])
        loss = F.mse_loss(q, target.expand_as(q)) * cfg.n_critics
        optimizers["critic"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["critic"].step()
        soft_update(critic_target, critic, cfg.tau)
        return {"critic_loss": loss.item() / cfg.n_critics, "q_mean": q.mean().item(), "target_mean": target.mean().item()}

    def update_actor() -> dict[str, float]:
        b = sample_batch()
        delta = policy.correction(b["obs"], b["base"])
        q = critic(b["obs"], b["base"], normalize(policy.combine(b["base"], delta)))
        loss = -q.mean()
        optimizers["actor"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["actor"].step()
        soft_update(actor_target, policy.residual, cfg.tau)
        return {"actor_loss": loss.item(), "delta_abs_mean": delta.abs().mean().item()}

    # the run dir is created only here, once every input (base, env, demos) has been checked
    with run.open(policy, nets, optimizers, {"online": replay}, counters=("updates", "actor_updates"), log_every=cfg.log_every):
        state = run.state
        envs = run.own(make_vector_env(cfg.env, cfg.n_envs, max_episode_steps=cfg.max_episode_steps, terminate_on_success=cfg.terminate_on_success))
        queues = BaseActionQueues(base, cfg.n_envs)
        accumulator = NStepAccumulator(cfg.n_step, cfg.gamma, cfg.n_envs)
        obs, _ = envs.reset(seed=run.seeds.take(cfg.n_envs))
        base_action, features = queues.step(obs)
        while not run.finished:
            with torch.no_grad():
                base_norm = normalize(base_action)
                delta = torch.zeros_like(base_norm) if state["env_steps"] < cfg.warmup_env_steps else policy.correction(features, base_norm)
                delta = (delta + torch.randn_like(delta) * cfg.exploration_std).clamp(-scale, scale)
                action = policy.combine(base_norm, delta)
            next_obs, _, terminated, truncated, info = envs.step(action.cpu().numpy())
            reward = np.asarray(info["success"], dtype=np.float32)
            done = terminated | truncated
            next_base_action, next_features = queues.step(next_obs)  # for finished envs: the base's action at the final state
            action_norm, next_base_norm = normalize(action), normalize(next_base_action)
            for i in range(cfg.n_envs):
                row = {"obs": features[i].cpu().numpy(), "base": base_norm[i].cpu().numpy(), "action": action_norm[i].cpu().numpy(),
                       "next_obs": next_features[i].cpu().numpy(), "next_base": next_base_norm[i].cpu().numpy()}
                ends_value = bool(terminated[i]) or (bool(truncated[i]) and cfg.timeout_is_terminal)
                for transition in accumulator.push(i, row, float(reward[i]), ends_value, bool(done[i])):
                    replay.add(**{k: np.asarray(v)[None] for k, v in transition.items()})
            run.advance(cfg.n_envs, reward, done)
            if done.any():
                next_obs = reset_finished(envs, next_obs, done, run.seeds)
                queues.reset(done)
                fresh_action, fresh_features = queues.step({k: v[done] for k, v in next_obs.items()}, ids=np.flatnonzero(done).tolist())
                next_base_action[done], next_features[done] = fresh_action, fresh_features
            base_action, features = next_base_action, next_features

            if state["env_steps"] >= cfg.warmup_env_steps and len(replay) >= cfg.batch_size:
                metrics: dict[str, float] = {}
                for _ in range(cfg.utd):
                    metrics |= update_critic()
                    state["updates"] += 1
                    if state["env_steps"] >= cfg.critic_only_env_steps and state["updates"] % cfg.actor_delay == 0:
                        metrics |= update_actor()
                        state["actor_updates"] += 1
                run.add_metrics(metrics)
            run.checkpoint_and_evaluate(policy, "residual-offpolicy", counter="updates")
        return run.summary(policy, "residual-offpolicy")


def main(argv: list[str] | None = None) -> dict:
    return run_cli(ResidualOffPolicyConfig, train, "train.py residual --algo offpolicy", argv)


if __name__ == "__main__":
    main()
