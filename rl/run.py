"""The frame every RL algorithm runs in; the algorithm's own act/update loop stays flat in its file (CleanRL).

    run = RLRun(cfg)                                     # loads the base and checks it against the env; nothing on disk yet
    policy, nets, optimizers, buffers = ...              # built from run.base (seeded by RLRun)
    with run.open(policy, nets, optimizers, buffers, counters=("updates",), log_every=cfg.log_every):
        envs = run.own(make_vector_env(...))             # closed with the run
        obs, _ = envs.reset(seed=run.seeds.take(cfg.n_envs))
        while not run.finished:
            ...act, step the envs, store...
            run.advance(env_steps, reward, done)         # the budget, the progress bar, rollout success
            ...update...; run.add_metrics(metrics)
            run.checkpoint_and_evaluate(policy, label)   # log / evaluate / save, each on its env-step schedule
        return run.summary(policy, label)                # final evaluation

It owns: threads and device, loading the frozen base and checking it against the env, the run dir (created
only in `open`, after every input was checked; never overwritten), resume from the last checkpoint, the
tensorboard + JSONL logs, the base's evaluation at env step 0, evaluations and checkpoints by env steps,
training-episode seeds, the summary, and closing everything it opened.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import tyro
from tqdm import tqdm

from core.checkpoint import last_checkpoint, prepare_run_dir
from core.io import CheckpointError, config_to_dict
from policies.base import Policy
from rl.chunk_env import check_policy_matches_env
from rl.common import (
    RESUMABLE_CHANGES,
    Cadence,
    EpisodeSeeds,
    Evaluator,
    RLRunConfig,
    MIN_EPISODE_LIMIT,
    RolloutStats,
    RunLog,
    base_datasets,
    episode_limit,
    load_base,
    load_checkpoint,
    save_checkpoint,
)
from rl.replay import ReplayBuffer


class RLRun:
    def __init__(self, cfg: RLRunConfig, label: str, demos: list[Path] | None = None) -> None:
        """`demos`: the stores that set the default episode limit (default: the ones the base was trained on)."""
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.label = label
        self.device = torch.device(cfg.device)
        self.base: Policy = load_base(cfg.base, self.device)
        check_policy_matches_env(self.base.config, cfg.env, f"base {cfg.base}")
        self.base.check_ready()
        if cfg.max_episode_steps is None:
            cfg = replace(cfg, max_episode_steps=episode_limit(cfg.env, demos if demos is not None else base_datasets(cfg.base), cfg.base))
            print(f"episode limit: {cfg.max_episode_steps} steps (1.25 x the longest demo, at least {MIN_EPISODE_LIMIT}, at most the env's; --max-episode-steps sets it)")
        self.cfg = cfg
        self.run_dir: Path = cfg.resolved_run_dir()
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self._closing: list[Any] = []

    # ---- opening ------------------------------------------------------------------------------------
    def open(self, policy: Policy, nets: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             buffers: dict[str, ReplayBuffer], counters: tuple[str, ...], log_every: int) -> RLRun:
        """Create (or, with --resume, reload) the run; evaluate the base at env step 0. Use as a context manager."""
        cfg = self.cfg
        self.policy, self.nets, self.optimizers, self.buffers = policy, nets, optimizers, buffers
        prepare_run_dir(self.run_dir, config_to_dict(cfg), cfg.resume, RESUMABLE_CHANGES)
        state = {"env_steps": 0, **dict.fromkeys(counters, 0), "episodes": 0, "successes": 0, "wall_s": 0.0, "eval_wall_s": 0.0}
        ckpt = last_checkpoint(self.run_dir) if cfg.resume else None
        if ckpt is not None:
            state = load_checkpoint(ckpt, policy, nets, optimizers, buffers, self.rng, tuple(state))
            print(f"resumed from {ckpt} at env step {state['env_steps']}")
        self.state = state
        self.log = RunLog(self.run_dir, cfg.resume, state["env_steps"])
        self.evaluator = Evaluator(cfg.env, cfg.eval_episodes, cfg.eval_n_envs, cfg.eval_seed_start, cfg.max_episode_steps, self.log, state)
        self._t_start = time.perf_counter() - state["wall_s"]  # wall time includes evaluations; eval_wall_s says how much
        if state["env_steps"] == 0 and cfg.eval_base and cfg.eval_episodes:
            self.evaluator(self.base, "base")
        self.seeds = EpisodeSeeds(cfg.seed, state)
        self.stats = RolloutStats(cfg.n_envs, state)
        steps = state["env_steps"]
        self._log_due, self._eval_due, self._save_due = Cadence(log_every, steps), Cadence(cfg.eval_every, steps), Cadence(cfg.save_every, steps)
        self.bar = tqdm(total=cfg.total_env_steps, initial=steps, desc=self.label, unit="step", dynamic_ncols=True)
        return self

    def own(self, closable: Any) -> Any:
        """Close `closable` (e.g. the training vector env) when the run closes; returns it."""
        self._closing.append(closable)
        return closable

    def __enter__(self) -> RLRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        for closable in reversed(self._closing):
            closable.close()
        self.evaluator.close()
        self.log.close()

    # ---- the loop's bookkeeping ---------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state["env_steps"] >= self.cfg.total_env_steps

    def advance(self, env_steps: int, reward: np.ndarray, done: np.ndarray) -> None:
        """Count `env_steps` more env steps and one vector step's rewards and episode ends."""
        self.state["env_steps"] += env_steps
        self.bar.update(env_steps)
        self.stats.step(reward, done)

    def add_metrics(self, metrics: dict[str, float]) -> None:
        self.stats.add_metrics(metrics)

    def checkpoint_and_evaluate(self, policy: Policy, label: str, counter: str) -> None:
        """After a step or iteration: log, evaluate and save when their env-step schedules say so (save at the end)."""
        state = self.state
        state["wall_s"] = time.perf_counter() - self._t_start
        if self._log_due.due(state["env_steps"]):
            self.stats.flush(self.log, self.bar, **{f"train/{counter}": state[counter]})
        if self._eval_due.due(state["env_steps"]) and not self.finished:
            self.evaluator(policy, label)
        if self._save_due.due(state["env_steps"]) or self.finished:
            save_checkpoint(self.run_dir, policy, self.nets, self.optimizers, self.buffers, state, self.rng)

    def summary(self, policy: Policy, label: str) -> dict:
        """The run's result: paths, env steps, wall time and (with eval episodes) the final success rate."""
        state = self.state
        summary = {"run_dir": str(self.run_dir), "checkpoint": str(last_checkpoint(self.run_dir)), "env_steps": state["env_steps"], "wall_s": state["wall_s"]}
        if self.cfg.eval_episodes:
            summary["success_rate"] = self.evaluator(policy, label)
        return summary

    def to_device(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Env observations (state-only) as float32 tensors on the run's device."""
        return {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in obs.items()}


def run_cli(config_cls: type, train: Callable[[Any], dict], prog: str, argv: list[str] | None) -> dict:
    """Parse `config_cls` from the command line and run `train`; bad input (a bad base, store or option)
    exits with one clear line instead of a traceback."""
    cfg = tyro.cli(config_cls, args=argv, prog=prog)
    try:
        return train(cfg)
    except (CheckpointError, ValueError) as e:  # StoreError is a ValueError
        raise SystemExit(f"error: {e}") from None
