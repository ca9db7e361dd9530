"""Pieces every RL finetuning script shares: loading the frozen base, run logs with the success curve,
periodic evaluation, resetting finished envs with recorded seeds, and checkpoints with replay buffers."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.checkpoint import (
    commit_checkpoint,
    load_rng_states,
    open_jsonl_log,
    resolve_checkpoint,
    save_rng_states,
)
from core.io import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors,
    optimizer_state_from_safetensors,
    optimizer_state_to_safetensors,
    read_json,
)
from envs.make import split_env_name
from envs.rollout import evaluate, make_eval_envs
from policies.base import Policy, load_state_dict_strict
from rl.replay import ReplayBuffer


@dataclass(frozen=True)
class RLRunConfig:
    """Fields every RL finetuning run shares; each algorithm's config adds its own."""

    base: Path
    """Checkpoint dir of the frozen base policy, or its run dir (checkpoints/last is used)."""
    env: str
    """Environment as <suite>/<task>, e.g. metaworld/sweep-into-v3."""
    total_env_steps: int = 100_000
    """Budget in env steps (never decisions or chunks)."""
    n_envs: int = 8
    """Parallel training envs (spawned subprocesses)."""
    max_episode_steps: int | None = None
    """Step limit of training and evaluation episodes. Default: a quarter more than the longest demo the base was
    trained on, at least 100 steps and at most the env's own limit (`episode_limit`); the resolved number is
    printed and saved in the run's train_config.json."""
    terminate_on_success: bool = True
    """End a training episode at its first success (sparse reward 1 there); otherwise reward 1 at every success step."""
    timeout_is_terminal: bool = True
    """Treat the step limit as the end of the task in TD targets (no bootstrap past it), as the DSRL reference
    does. With bootstrapping, a success that might come after the limit counts as if it would come: values
    drift towards 1 everywhere (measured: mean Q 0.93 while rollouts succeeded 35-58%) and stop telling
    good actions from bad ones."""
    eval_every: int = 20_000
    """Env steps between evaluations (0: only at the end)."""
    eval_episodes: int = 50
    """Seeded episodes per evaluation."""
    eval_n_envs: int = 10
    """Parallel envs during evaluation."""
    eval_seed_start: int = 100_000
    """Evaluation episode i uses seed eval_seed_start + i; training episodes use seeds from 1_000_000 * (seed + 1)."""
    eval_base: bool = True
    """Evaluate the base alone (with its own sampling noise) at env step 0, the curve's starting point."""
    save_every: int = 20_000
    """Env steps between checkpoints (the end is always saved)."""
    seed: int = 0
    """Seeds networks, exploration and the training episodes' initial states."""
    run_dir: Path | None = None
    """Default: runs/<method>-<task>-seed<seed>. Never overwritten: use --resume."""
    resume: bool = False
    """Continue the run in --run-dir from its last checkpoint (episodes in flight restart with new seeds)."""
    num_threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    device: str = "cpu"
    """torch device of the networks and the base (cuda where there is a GPU); replay buffers stay in host RAM."""

    def __post_init__(self) -> None:
        split_env_name(self.env)
        for name in ("total_env_steps", "n_envs", "max_episode_steps", "save_every", "eval_n_envs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def method_name(self) -> str:
        raise NotImplementedError

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / f"{self.method_name()}-{split_env_name(self.env)[1]}-seed{self.seed}"


# Fields that may change on --resume without changing what a run computes.
RESUMABLE_CHANGES = {"resume", "total_env_steps", "eval_every", "eval_episodes", "eval_n_envs", "eval_base", "save_every", "log_every", "num_threads", "device"}

# Training episode k of an RL run with seed s starts from env seed TRAIN_SEED_BASE * (s + 1) + k,
# far from the evaluation seeds (100000+) and the demo seeds (0+).
TRAIN_SEED_BASE = 1_000_000


# The shortest default episode limit: a base that solves a task in 60 steps still gets room to recover.
MIN_EPISODE_LIMIT = 100


def base_datasets(base_path: Path) -> list[Path]:
    """The stores the base was trained on, from its run's train_config.json; [] when no run dir is found."""
    for run_dir in (base_path, base_path.parent.parent, base_path.resolve().parent.parent):
        config = run_dir / "train_config.json"
        if config.is_file():
            dataset = read_json(config).get("dataset") or [run_dir / "demos.zarr"]
            return [Path(d) for d in ([dataset] if isinstance(dataset, str) else dataset)]  # a single path in runs before multi-store training
    return []


def episode_limit(env: str, demos: list[Path], base: Path) -> int:
    """RL episode limit for `env`: 1.25 x the longest demo, at least MIN_EPISODE_LIMIT, at most the env's limit.

    A fixed limit fits some tasks only: Meta-World push-back demos take 84-352 steps, so at 100 most demos (and
    the base's slower successes) would count as failures."""
    if not demos:
        raise ValueError(f"cannot derive the RL episode limit: no demos known for base {base} (no train_config.json in its run dir); pass --max-episode-steps")
    from data.store import EpisodeStore
    from envs.make import env_properties

    longest = max(int(np.diff(EpisodeStore.open(p).episode_ends, prepend=0).max()) for p in demos)
    return min(int(env_properties(env)["max_episode_steps"]), max(MIN_EPISODE_LIMIT, math.ceil(1.25 * longest)))


def load_base(path: Path, device: torch.device | str = "cpu") -> Policy:
    """A policy checkpoint dir, or a run dir (its checkpoints/last). The base is frozen, so a diffusion base samples
    through the compiled graph that eval.py and the server use (policies/diffusion/compile.py)."""
    from policies.diffusion.compile import compile_sampling

    base = Policy.from_pretrained(resolve_checkpoint(path), map_location=device)
    compile_sampling(base)
    return base


def adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, foreach=True)  # foreach: about 1.6x faster steps on CPU for these small nets


class EpisodeSeeds:
    """Hands out training-episode seeds in order; the counter is part of the checkpointed state."""

    def __init__(self, seed: int, state: dict) -> None:
        self.start = TRAIN_SEED_BASE * (seed + 1)
        self.state = state

    def take(self, n: int) -> list[int]:
        seeds = [self.start + self.state["episodes"] + i for i in range(n)]
        self.state["episodes"] += n
        return seeds


def reset_finished(envs, obs: dict[str, np.ndarray], done: np.ndarray, seeds: EpisodeSeeds) -> dict[str, np.ndarray]:
    """Reset the envs in `done` with fresh seeds; return the observations with theirs replaced."""
    if not done.any():
        return obs
    fresh = iter(seeds.take(int(done.sum())))
    reset_obs, _ = envs.reset(seed=[next(fresh) if d else None for d in done], options={"reset_mask": done})
    return {k: np.where(done.reshape(-1, *[1] * (v.ndim - 1)), reset_obs[k], v) for k, v in obs.items()}


class RolloutStats:
    """Episode outcomes and averaged update metrics since the last log line."""

    def __init__(self, n_envs: int, state: dict) -> None:
        self.episode_return = np.zeros(n_envs)
        self.state = state  # its "successes" counter covers the whole run
        self.clear()

    def clear(self) -> None:
        self.episodes, self.successes, self.metrics, self.n_metrics = 0, 0, {}, 0

    def step(self, reward: np.ndarray, done: np.ndarray) -> None:
        """Add one vector step's rewards; count the episodes that ended (success: positive return)."""
        self.episode_return += reward
        if done.any():
            successes = int((self.episode_return[done] > 0).sum())
            self.episodes += int(done.sum())
            self.successes += successes
            self.state["successes"] += successes
            self.episode_return[done] = 0.0

    def add_metrics(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v
        self.n_metrics += 1

    def flush(self, log: RunLog, bar, **extra: float) -> None:
        """Write the averages (plus `extra` scalars) to the run log, show the success rate, start a new window."""
        scalars = {f"train/{k}": v / self.n_metrics for k, v in self.metrics.items()}
        if self.episodes:
            scalars |= {"rollout/success_rate": self.successes / self.episodes, "rollout/episodes": self.episodes}
            bar.set_postfix(rollout_success=f"{self.successes / self.episodes:.2f}")
        state = self.state
        scalars |= {"rollout/steps_per_s": state["env_steps"] / max(state["wall_s"] - state["eval_wall_s"], 1e-9), **extra}
        log.scalars(state["env_steps"], state["wall_s"], scalars)
        self.clear()


class RunLog:
    """tensorboard + train_log.jsonl (scalars) + eval_log.jsonl (the success curve), all keyed by env steps."""

    def __init__(self, run_dir: Path, resume: bool, env_steps: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=env_steps or None)
        self.train = open_jsonl_log(run_dir / "train_log.jsonl", resume, "env_steps", env_steps)
        self.evals = open_jsonl_log(run_dir / "eval_log.jsonl", resume, "env_steps", env_steps)

    def scalars(self, env_steps: int, wall_s: float, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, env_steps)
        self.train.write(json.dumps({"env_steps": env_steps, "wall_s": wall_s, **scalars}) + "\n")
        self.train.flush()

    def eval_point(self, record: dict) -> None:
        self.evals.write(json.dumps(record) + "\n")
        self.evals.flush()
        self.writer.add_scalar("eval/success_rate", record["success_rate"], record["env_steps"])

    def close(self) -> None:
        self.train.close()
        self.evals.close()
        self.writer.close()


class Evaluator:
    """Seeded evaluation on a vector env that is spawned once and reused (starting 10 Meta-World
    processes takes tens of seconds on 2 cores)."""

    def __init__(self, env: str, episodes: int, n_envs: int, seed_start: int, max_episode_steps: int, log: RunLog, state: dict) -> None:
        self.env, self.episodes, self.n_envs, self.seed_start, self.max_steps = env, episodes, n_envs, seed_start, max_episode_steps
        self.log, self.state = log, state
        self.envs = None

    def __call__(self, policy: Policy, label: str) -> float:
        from tqdm import tqdm

        t0 = time.perf_counter()
        if self.envs is None:
            self.envs = make_eval_envs(self.env, min(self.n_envs, self.episodes), self.max_steps)
        result = evaluate(policy, self.env, self.episodes, seed_start=self.seed_start, max_episode_steps=self.max_steps, progress=False, envs=self.envs)
        self.state["eval_wall_s"] += time.perf_counter() - t0
        self.log.eval_point({
            "env_steps": self.state["env_steps"], "policy": label, "success_rate": result.success_rate, "ci95": list(result.ci95),
            "n_episodes": result.n_episodes, "seed_start": self.seed_start, "max_episode_steps": self.max_steps,
            "success_definition": result.success_definition, "wall_s": self.state["wall_s"],
        })
        tqdm.write(f"env step {self.state['env_steps']}: {label} {result.summary()}")
        return result.success_rate

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()


class Cadence:
    """Fires once each time env steps cross a multiple of `every` (0: never)."""

    def __init__(self, every: int, env_steps: int) -> None:
        self.every = every
        self.next = (env_steps // every + 1) * every if every else float("inf")

    def due(self, env_steps: int) -> bool:
        if env_steps < self.next:
            return False
        self.next = (env_steps // self.every + 1) * self.every
        return True


# ---- checkpoints ------------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, policy: Policy, nets: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    buffers: dict[str, ReplayBuffer], state: dict[str, Any], rng: np.random.Generator) -> Path:
    """checkpoints/step_<env steps>/: the policy (loadable by eval.py) + train_state/ to resume.

    Replay buffers are large, so only the newest checkpoint keeps its train_state/.
    """

    def write(tmp: Path) -> None:
        policy.save_pretrained(tmp)
        state_dir = tmp / "train_state"
        atomic_save_safetensors(state_dir / "nets.safetensors", {f"{name}/{k}": v for name, net in nets.items() for k, v in net.state_dict().items()})
        skeletons = {}
        for name, opt in optimizers.items():
            tensors, skeletons[name] = optimizer_state_to_safetensors(opt.state_dict())
            atomic_save_safetensors(state_dir / f"optimizer_{name}.safetensors", tensors)
        for name, buffer in buffers.items():
            buffer.save(state_dir / f"replay_{name}.safetensors")
        numpy_rng = save_rng_states(state_dir / "rng.safetensors", rng)
        atomic_write_json(state_dir / "state.json", {**state, "optimizers": skeletons, "numpy_rng": numpy_rng})

    ckpt = commit_checkpoint(run_dir / "checkpoints", f"step_{state['env_steps']:09d}", write)
    for older in (run_dir / "checkpoints").glob("step_*"):
        if older != ckpt:
            shutil.rmtree(older / "train_state", ignore_errors=True)
    return ckpt


def load_checkpoint(ckpt: Path, policy: Policy, nets: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    buffers: dict[str, ReplayBuffer], rng: np.random.Generator, state_keys: tuple[str, ...]) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote into the given objects; returns the counters in `state_keys`."""
    state_dir = ckpt / "train_state"
    if not state_dir.is_dir():
        raise CheckpointError(f"{ckpt} has no train_state/ (only the newest checkpoint of a run can be resumed)")
    saved = type(policy).from_pretrained(ckpt)  # checks the base fingerprint
    if saved.config != policy.config:
        raise CheckpointError(f"{ckpt}: policy config differs from this run's")
    policy.load_state_dict(saved.state_dict())
    tensors = load_safetensors(state_dir / "nets.safetensors")
    for name, net in nets.items():
        own = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == name}
        load_state_dict_strict(net, own, f"{state_dir / 'nets.safetensors'}[{name}]")
    state = read_json(state_dir / "state.json")
    for name, opt in optimizers.items():
        opt.load_state_dict(optimizer_state_from_safetensors(load_safetensors(state_dir / f"optimizer_{name}.safetensors"), state["optimizers"][name]))
    for name, buffer in buffers.items():
        buffer.load(state_dir / f"replay_{name}.safetensors")
    load_rng_states(state_dir / "rng.safetensors", rng, state["numpy_rng"])
    return {k: state[k] for k in state_keys}
