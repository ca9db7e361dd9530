"""DSRL: steer a frozen Diffusion Policy by running RL in its initial-noise space (Wagenmaker et al. 2025).

    python train.py dsrl --base runs/x/checkpoints/last --env metaworld/sweep-into-v3
    python train.py dsrl --base ... --env ... --algo sac --total-env-steps 50000
    python train.py dsrl --base ... --env ... --run-dir R --resume      # continue from R's last checkpoint

The RL "action" is the DDIM sampler's initial latent w (horizon x action_dim), squashed by tanh to
+-noise_magnitude. Deterministic DDIM (eta=0) turns w into a chunk; its first n_action_steps actions run
in the env (rl/chunk_env.py), and the chunk's reward is the sum over the steps executed. The base is only
called through `predict_action_chunk(obs, noise=w)`; its weights never change.

Algorithms (--algo):
  sac  DSRL-SAC: SAC in noise space. Twin critics Q(s, w), tanh-Gaussian actor, automatic entropy tuning.
  na   DSRL-NA (noise aliasing, the paper's default):
       Q^A(s, a) is trained by TD on the executed chunk a;
       Q^W(s, w) is distilled from Q^A on (s, w, a = base(s, w)) with w ~ N(0, I) drawn fresh, clipped to the bound;
       the actor maximises Q^W. Noise that the base maps to the same chunk gets the same value (aliasing).
       Two choices made for CPU budgets:
       - the distillation pairs are produced while acting (K fresh w per env per decision, in the same
         batched base call) and stored, instead of re-running the base on every gradient step. Exact: the
         base is frozen, so base(s, w) is the same whenever it is computed;
       - Q^A's bootstrap target at s' uses Q^W_target(s', w' ~ actor) instead of Q^A(s', base(s', w')),
         which would need a base call per critic step. An approximation: Q^W is trained to equal the latter.

Env steps (not decisions) count everywhere: budgets, logs, checkpoints and the eval curve.

Run directory:
    train_config.json, train_log.jsonl, eval_log.jsonl (the success curve), tb/
    checkpoints/step_<env steps>/  a SteeredPolicy checkpoint (base/ included) + train_state/ (critics,
                                   optimizers, replay, RNG); only the newest keeps train_state/
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from core.io import CheckpointError
from policies.steered.config import for_base
from policies.steered.policy import SteeredPolicy
from rl.chunk_env import make_chunked_vector_env
from rl.common import RLRunConfig, adam, reset_finished
from rl.run import RLRun, run_cli
from rl.networks import QEnsemble, soft_update
from rl.replay import ReplayBuffer


@dataclass(frozen=True)
class DSRLConfig(RLRunConfig):
    algo: Literal["na", "sac"] = "na"
    """na: DSRL-NA (noise-aliased critics, the paper's default); sac: DSRL-SAC (SAC directly in noise space)."""
    noise_magnitude: float = 1.5
    """Bound of the latent: the actor's tanh output is scaled to [-noise_magnitude, noise_magnitude]."""
    hidden_dim: int = 128
    """Width of actor and critic MLPs (the paper uses 2048 on GPU; 128 keeps 20 updates per step affordable on 2 CPU cores)."""
    n_layers: int = 3
    """Hidden layers of actor and critic MLPs."""
    layer_norm: bool = True
    """LayerNorm in actor and critics."""
    activation: str = "relu"
    """Hidden activation of actor and critics."""
    gamma: float = 0.99
    """Discount per decision (per executed chunk)."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and entropy temperature."""
    batch_size: int = 256
    """Transitions per gradient step."""
    utd: int = 20
    """Gradient steps per vector-env step (n_envs new transitions)."""
    noise_critic_steps: int = 10
    """DSRL-NA: distillation steps of Q^W per vector-env step."""
    aliases_per_env: int = 2
    """DSRL-NA: fresh N(0, I) latents decoded by the base per env and decision, for distilling Q^W."""
    warmup_env_steps: int = 5_000
    """Act with the base's own Gaussian noise (clipped to the bound) and do no updates until this many env steps."""
    target_entropy: float = 0.0
    """Target of the automatic entropy tuning, in nats over the whole latent."""
    init_alpha: float = 0.01
    """Initial entropy temperature; with target_entropy 0 it decays as training proceeds."""
    backup_entropy: bool = False
    """Add the entropy bonus to the critics' bootstrap targets (standard SAC). Off by default: episodes end at
    success, and with ~60 nats of latent entropy the bonus is a living reward that makes success look worse than
    carrying on until the time limit (measured: mean Q 65 with returns of at most 1). Off, Q is the discounted
    success probability, bootstrap values are clipped to the possible return range, and the entropy only
    regularises the actor."""
    exact_bootstrap: bool | None = None
    """DSRL-NA: bootstrap Q^A at s' from a target copy of Q^A on the chunk the base decodes from the actor's
    latent, min_i Q^A_target_i(s', base(s', w' ~ actor)) (True), or from the distilled Q^W_target(s', w') as the
    DSRL paper does (False). None (default) = True for --algo na: on sweep-into it lifted a 54% base by +42 points
    in 100k env steps over 3 seeds, where the distilled bootstrap overestimated and lost 4.7 (docs/rl.md). Costs
    one batched base call per critic update: a few ms with the default MLP/flow base, about 1.7 s with
    UNet/DDIM-10. DSRL-SAC has no Q^A and refuses True."""
    deterministic: bool = False
    """Act with the actor's mean latent at evaluation and deployment instead of sampling it (see SteeredConfig)."""
    log_std_init: float = 0.0
    """Initial log-std of the actor's pre-tanh Gaussian: 0 starts at the base's own N(0, 1) noise scale."""
    replay_capacity: int = 1_000_000
    """Transitions kept (FIFO)."""
    save_every: int = 10_000
    """Env steps between checkpoints (the end is always saved)."""
    log_every: int = 2_000
    """Env steps between logged scalars."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise_magnitude <= 0:
            raise ValueError(f"noise_magnitude must be > 0, got {self.noise_magnitude}")
        if self.exact_bootstrap is True and self.algo != "na":
            raise ValueError("exact_bootstrap applies to --algo na (Q^A on executed chunks); DSRL-SAC has no Q^A")
        for name in ("total_env_steps", "n_envs", "batch_size", "utd", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def method_name(self) -> str:
        return f"dsrl-{self.algo}"

    @property
    def uses_exact_bootstrap(self) -> bool:
        return self.algo == "na" and self.exact_bootstrap is not False




class EntropyTemperature(torch.nn.Module):
    def __init__(self, init_alpha: float) -> None:
        super().__init__()
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(init_alpha)))

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()


def train(cfg: DSRLConfig) -> dict:
    run = RLRun(cfg, f"dsrl-{cfg.algo}")
    cfg = run.cfg  # with the episode limit resolved
    base, device = run.base, run.device
    if base.sampler_core() is not base:
        raise CheckpointError(f"{cfg.base} holds a {base.policy_type} policy; DSRL steers a Diffusion Policy (policy_type 'diffusion')")
    rng = run.rng

    policy = SteeredPolicy(
        for_base(base, noise_magnitude=cfg.noise_magnitude, hidden_dim=cfg.hidden_dim,
                 n_layers=cfg.n_layers, layer_norm=cfg.layer_norm, activation=cfg.activation, deterministic=cfg.deterministic),
        base,
    ).to(device)
    policy.actor.init_log_std(cfg.log_std_init)
    pc = policy.config
    obs_dim, latent_dim = pc.obs_feature_dim, pc.latent_dim
    chunk_dim = pc.n_action_steps * pc.action_dim
    first = pc.n_obs_steps - 1  # chunk index aligned with "now"
    mag = cfg.noise_magnitude
    actor = policy.actor
    # Largest discounted return: 1 when episodes end at success, else 1 per success step for ever.
    max_return = 1.0 if cfg.terminate_on_success else pc.n_action_steps / (1 - cfg.gamma)

    def critic(in_dim: int) -> QEnsemble:
        return QEnsemble(in_dim, 2, cfg.hidden_dim, cfg.n_layers, cfg.layer_norm, cfg.activation).to(device)

    # SAC: one twin critic on (s, w). NA: Q^A on (s, executed chunk) and Q^W on (s, w); only Q^W needs a target.
    noise_critic = critic(obs_dim + latent_dim)
    noise_critic_target = copy.deepcopy(noise_critic).requires_grad_(False)
    action_critic = critic(obs_dim + chunk_dim) if cfg.algo == "na" else None
    temperature = EntropyTemperature(cfg.init_alpha).to(device)
    nets = {"noise_critic": noise_critic, "noise_critic_target": noise_critic_target, "temperature": temperature}
    optimizers = {
        "actor": adam(actor.parameters(), lr=cfg.lr),
        "noise_critic": adam(noise_critic.parameters(), lr=cfg.lr),
        "temperature": adam(temperature.parameters(), lr=cfg.lr),
    }
    if action_critic is not None:
        nets["action_critic"] = action_critic
        optimizers["action_critic"] = adam(action_critic.parameters(), lr=cfg.lr)
    action_critic_target = copy.deepcopy(action_critic).requires_grad_(False) if cfg.uses_exact_bootstrap else None
    if action_critic_target is not None:
        nets["action_critic_target"] = action_critic_target
    replay = ReplayBuffer(cfg.replay_capacity, {"obs": (obs_dim,), "latent": (latent_dim,), "chunk": (chunk_dim,), "reward": (), "next_obs": (obs_dim,), "terminated": ()})
    buffers = {"transitions": replay}
    if cfg.algo == "na":
        aliases = ReplayBuffer(cfg.replay_capacity * (1 + cfg.aliases_per_env), {"obs": (obs_dim,), "latent": (latent_dim,), "chunk": (chunk_dim,)})
        buffers["aliases"] = aliases

    def sample_latent(features: torch.Tensor) -> torch.Tensor:
        if run.state["env_steps"] < cfg.warmup_env_steps:  # the base's own N(0, I) noise, held to the bound
            return torch.randn(features.shape[0], latent_dim).clamp(-mag, mag).to(device)
        return actor(features)[0]

    def decode(features: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """The executed part of the base's chunk, normalized and flat, for stored (normalized, flat) observation windows."""
        window = features.view(features.shape[0], pc.n_obs_steps, -1).split(list(pc.state_dims), dim=-1)
        obs = {k: base.normalizer.unnormalize(k, part) for k, part in zip(pc.state_keys, window)}
        chunk = base.predict_action_chunk(obs, noise=latent.view(base.noise_shape(latent.shape[0])))
        return base.normalizer.normalize(pc.action_key, chunk[:, first : first + pc.n_action_steps]).flatten(1)

    def update_critic_and_actor() -> dict[str, float]:
        b = replay.sample(cfg.batch_size, rng, device)
        alpha = temperature.alpha
        with torch.no_grad():
            next_latent, next_log_prob = actor(b["next_obs"])
            if action_critic_target is not None:  # exact: Q^A on the chunk the base makes of the actor's next latent
                next_value = action_critic_target(b["next_obs"], decode(b["next_obs"], next_latent)).min(0).values
            else:
                next_value = noise_critic_target(b["next_obs"], next_latent).min(0).values
            if cfg.backup_entropy:
                next_value = next_value - alpha * next_log_prob
            else:  # the value of a state lies in [0, max_return]; NA's Q^A -> Q^W -> Q^A loop otherwise inflates it
                next_value = next_value.clamp(0.0, max_return)
            target = b["reward"] + cfg.gamma * (1 - b["terminated"]) * next_value
        if action_critic is not None:  # Q^A on the executed chunk
            q = action_critic(b["obs"], b["chunk"])
            critic_opt = optimizers["action_critic"]
        else:
            q = noise_critic(b["obs"], b["latent"])
            critic_opt = optimizers["noise_critic"]
        critic_loss = F.mse_loss(q, target.expand_as(q)) * q.shape[0]
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_opt.step()

        latent, log_prob = actor(b["obs"])
        actor_loss = (alpha * log_prob - noise_critic(b["obs"], latent).min(0).values).mean()
        optimizers["actor"].zero_grad(set_to_none=True)
        actor_loss.backward()
        optimizers["actor"].step()
        temperature_loss = -(temperature.log_alpha * (log_prob.detach() + cfg.target_entropy)).mean()
        optimizers["temperature"].zero_grad(set_to_none=True)
        temperature_loss.backward()
        optimizers["temperature"].step()
        if action_critic is None:
            soft_update(noise_critic_target, noise_critic, cfg.tau)
        if action_critic_target is not None:
            soft_update(action_critic_target, action_critic, cfg.tau)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "alpha": alpha.item(),
                "entropy": -log_prob.mean().item(), "q_mean": q.mean().item()}

    def distill_noise_critic() -> dict[str, float]:
        """DSRL-NA: Q^W(s, w) <- min_i Q^A_i(s, base(s, w)) on stored fresh-noise pairs."""
        b = aliases.sample(cfg.batch_size, rng, device)
        with torch.no_grad():
            target = action_critic(b["obs"], b["chunk"]).min(0).values
        q = noise_critic(b["obs"], b["latent"])
        loss = F.mse_loss(q, target.expand_as(q)) * q.shape[0]
        optimizers["noise_critic"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["noise_critic"].step()
        soft_update(noise_critic_target, noise_critic, cfg.tau)
        return {"distill_loss": loss.item()}

    with run.open(policy, nets, optimizers, buffers, counters=("decisions", "updates"), log_every=cfg.log_every):
        state = run.state
        envs = run.own(make_chunked_vector_env(cfg.env, cfg.n_envs, pc.n_obs_steps, pc.n_action_steps,
                                               max_episode_steps=cfg.max_episode_steps, terminate_on_success=cfg.terminate_on_success))
        obs, _ = envs.reset(seed=run.seeds.take(cfg.n_envs))
        while not run.finished:
            obs_t = run.to_device(obs)
            with torch.no_grad():
                features = policy.state_features(obs_t)
                latent = sample_latent(features)
                if cfg.algo == "na":  # decode K fresh N(0, I) latents per env in the same batched base call
                    fresh = torch.randn(cfg.n_envs * cfg.aliases_per_env, latent_dim).clamp(-mag, mag).to(device)
                    all_latent = torch.cat([latent, fresh])
                    all_obs = {k: v.repeat(1 + cfg.aliases_per_env, *[1] * (v.ndim - 1)) for k, v in obs_t.items()}
                else:
                    all_latent, all_obs = latent, obs_t
                chunks = base.predict_action_chunk(all_obs, noise=all_latent.view(base.noise_shape(all_latent.shape[0])))
                executed = chunks[:, first : first + pc.n_action_steps]
                executed_norm = base.normalizer.normalize(pc.action_key, executed).flatten(1)
            next_obs, reward, terminated, truncated, info = envs.step(executed[: cfg.n_envs].cpu().numpy())
            with torch.no_grad():
                next_features = policy.state_features(run.to_device(next_obs))
            ends_value = terminated | (truncated & cfg.timeout_is_terminal)
            replay.add(obs=features, latent=latent, chunk=executed_norm[: cfg.n_envs], reward=reward, next_obs=next_features, terminated=ends_value)
            if cfg.algo == "na":
                aliases.add(obs=features.repeat(1 + cfg.aliases_per_env, 1), latent=all_latent, chunk=executed_norm)
            done = terminated | truncated
            run.advance(int(np.sum(info["env_steps"])), reward, done)
            state["decisions"] += cfg.n_envs
            obs = reset_finished(envs, next_obs, done, run.seeds)

            if state["env_steps"] >= cfg.warmup_env_steps and len(replay) >= cfg.batch_size:
                metrics: dict[str, float] = {}
                for _ in range(cfg.utd):
                    metrics = update_critic_and_actor()
                    state["updates"] += 1
                if cfg.algo == "na":
                    for _ in range(cfg.noise_critic_steps):
                        metrics |= distill_noise_critic()
                run.add_metrics(metrics)
            run.checkpoint_and_evaluate(policy, "dsrl", counter="updates")
        return run.summary(policy, "dsrl")


def main(argv: list[str] | None = None) -> dict:
    return run_cli(DSRLConfig, train, "train.py dsrl", argv)


if __name__ == "__main__":
    main()
