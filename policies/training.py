"""Train a policy from demonstrations (behaviour cloning), then evaluate it: the library behind train.py.

`TrainConfig` holds every hyperparameter of a run, `PRESETS` the named starting points (train.py's first
argument), `train(cfg)` runs one (DDP under torchrun; resumes bit-exactly). Data assembly lives in
data/training.py, the policies in policies/<type>/.

Run directory:
    train_config.json         every hyperparameter of the run
    demos.zarr                collected demos (when --dataset is not given)
    checkpoints/step_XXXXXXX/ config.json, model.safetensors (EMA weights), normalizer.safetensors,
                              train_state/ (raw weights, optimizer, lr schedule, step, RNG states)
    checkpoints/last          symlink to the newest complete checkpoint
    tb/                       tensorboard scalars; train_log.jsonl: one line per logged step
    eval.json                 final evaluation (success rate, CI, per-episode seeds)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm import tqdm

from core.checkpoint import (
    commit_checkpoint,
    load_rng_states,
    open_jsonl_log,
    prepare_run_dir,
    save_rng_states,
)
from core.distributed import DistInfo, init_distributed, rank_torch_seed, shutdown_distributed
from core.ema import EMA
from core.io import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    config_to_dict,
    load_safetensors,
    optimizer_state_from_safetensors,
    optimizer_state_to_safetensors,
    read_json,
)
from data.stream import limit_malloc_arenas
from data.training import demo_stores, load_datasets, training_windows
from envs.make import env_properties, split_env_name
from policies import (
    DiffusionConfig,
    PolicyConfig,
    VQBeTConfig,
    make_policy,
    policy_class_for_config,
)
from policies.base import WEIGHTS_FILE, Policy, load_state_dict_strict
from policies.io_config import ENV_STATE_KEY, TASK_KEY


@dataclass(frozen=True)
class TrainConfig:
    env: str = "metaworld/button-press-topdown-v3"
    """Environment to collect demos in and evaluate on, as <suite>/<task>."""
    dataset: tuple[Path, ...] = ()
    """Zarr episode store(s) to train on, concatenated. Stores recorded in different envs make a multi-task
    policy: a `task` one-hot (index in first-appearance order) joins the state keys. Default: collect `n_demos`
    scripted demos into <run_dir>/demos.zarr."""
    n_demos: int = 50
    """Scripted demos to collect when no dataset is given."""
    policy: PolicyConfig = DiffusionConfig()
    """Policy type and hyperparameters (shapes are filled in from the dataset). The preset picks the type."""
    steps: int = 2000
    """Optimizer steps; also the length of the cosine learning-rate schedule."""
    stop_at: int | None = None
    """Save and stop at this step, e.g. to fit a time-boxed job; continue later with --resume."""
    batch_size: int = 128
    """Windows per batch and process: under torchrun the effective batch is batch_size * world size."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.95, 0.999)
    """AdamW betas."""
    warmup_steps: int = 100
    """Linear warm-up before the cosine decay."""
    grad_clip_norm: float = 1.0
    """Clip the global gradient norm to this value."""
    ema_power: float = 0.75
    """EMA warm-up power (decay = 1 - (1 + step) ** -power)."""
    ema_max_decay: float = 0.9999
    """Largest EMA decay. The EMA weights are evaluated and saved as model.safetensors."""
    seed: int = 0
    """Seeds model init, batch sampling and diffusion noise."""
    log_every: int = 25
    """Steps between logged scalars."""
    save_every: int = 500
    """Steps between checkpoints (the last step is always saved)."""
    eval_every: int = 0
    """Steps between periodic evaluations (0: none before the final one)."""
    eval_episodes_periodic: int = 10
    """Episodes per periodic evaluation."""
    eval_episodes: int = 50
    """Episodes in the final evaluation (0: skip)."""
    eval_n_envs: int = 10
    """Parallel envs (subprocesses) during evaluation."""
    eval_seed_start: int = 100_000
    """Seed of the first evaluation episode; far from the demo seeds, so no eval episode repeats a demo."""
    eval_max_episode_steps: int | None = None
    """Step limit per evaluation episode (default: the env's, 500 for Meta-World)."""
    run_dir: Path | None = None
    """Where everything goes. Default: runs/<task>-<policy>-seed<seed>. Never overwritten: use --resume."""
    resume: bool = False
    """Continue the run in --run-dir from its last checkpoint."""
    device: str = "cpu"
    """torch device."""
    num_threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    num_workers: int = 2
    """Loader processes that read and batch image windows (image policies only; state windows come from RAM)."""
    data_ram_gb: float | None = None
    """RAM cap for the low-dim keys (state, action) and window indices. None: load them whole. Set, whole episodes
    stream from the store through a resident set of 40% of the cap that rotates (data/stream.py; docs/scaling.md)."""
    stream_rotate_every: int = 200
    """With --data-ram-gb: optimizer steps between rotations of the resident episode set."""
    image_size: int = 84
    """Camera resolution (square) when train.py collects demos for an image policy."""

    def __post_init__(self) -> None:
        split_env_name(self.env)
        for name in ("steps", "batch_size", "log_every", "save_every", "stream_rotate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data_ram_gb is not None and not self.data_ram_gb > 0:
            raise ValueError(f"data_ram_gb must be > 0 (or unset to load the low-dim data whole), got {self.data_ram_gb}")

    def resolved_run_dir(self) -> Path:
        if self.run_dir is not None:
            return self.run_dir
        return Path("runs") / f"{split_env_name(self.env)[1]}-{policy_class_for_config(self.policy).policy_type}-seed{self.seed}"


# What the smoke presets share: 2 demos, 4 steps, checkpoints at 2 and 4, one 16-step eval episode.
SMOKE = dict(n_demos=2, steps=4, batch_size=8, log_every=1, save_every=2, warmup_steps=1, eval_episodes=1, eval_n_envs=1, eval_max_episode_steps=16)

# The default Diffusion Policy recipe, chosen by bench/recipe_sweep.py (docs/policies.md): a residual-MLP
# denoiser trained with rectified flow, sampled with 3 Euler steps. Against the paper's UNet + DDPM + DDIM-10 it
# trains about 8x faster per step and answers a chunk in about 1 ms at batch 1 on 2 CPU threads.
FAST_DP = DiffusionConfig(backbone="mlp", objective="flow", inference_scheduler="euler", num_inference_steps=3)

# The state presets read the env's recommended keys (the "env" state key, resolved by `with_env_state_keys`):
# on Meta-World the 39-D state plus its hand/object/goal difference vectors, on robosuite its state.
ENV_KEYS = (ENV_STATE_KEY,)


def with_env_state_keys(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the "env" state key replaced by the env's recommended keys (envs.make.env_properties)."""
    if ENV_STATE_KEY not in cfg.policy.state_keys:
        return cfg
    env_keys = env_properties(cfg.env)["state_keys"]
    keys = tuple(dict.fromkeys(k for key in cfg.policy.state_keys for k in (env_keys if key == ENV_STATE_KEY else (key,))))
    return replace(cfg, policy=replace(cfg.policy, state_keys=keys))


PRESETS: dict[str, tuple[str, TrainConfig]] = {
    "default": (
        "Meta-World button-press-topdown-v3, 50 scripted demos, state Diffusion Policy (the env's state keys: on Meta-World state + relative vectors; MLP denoiser, flow matching, 3 Euler steps), 5000 steps, 50-episode eval.",
        TrainConfig(policy=replace(FAST_DP, state_keys=ENV_KEYS), steps=5000, batch_size=256),
    ),
    "unet": (
        "The Diffusion Policy paper's recipe: 1-D UNet (64,128,256), DDPM training, DDIM-10 sampling, 2000 steps at batch 128 (the default before the recipe sweep).",
        TrainConfig(),
    ),
    "tiny": (
        "Seconds-long smoke run: 2 demos, a small MLP flow policy, 4 steps, 1 short eval episode.",
        TrainConfig(
            **SMOKE,
            policy=replace(FAST_DP, mlp_hidden_dim=32, mlp_blocks=2, diffusion_step_embed_dim=16, horizon=8, n_action_steps=4),
        ),
    ),
    "vqbet": (
        "Meta-World button-press-topdown-v3, 50 scripted demos, state VQ-BeT (state + relative vectors; 250 tokenizer steps, then the GPT), 50-episode eval.",
        TrainConfig(policy=VQBeTConfig(state_keys=ENV_KEYS)),
    ),
    "vqbet-tiny": (
        "Seconds-long VQ-BeT smoke run: 2 tokenizer steps, then 2 GPT steps.",
        TrainConfig(
            **SMOKE,
            policy=VQBeTConfig(vq_train_steps=2, vq_latent_dim=16, vq_hidden_dim=32, gpt_layers=1, gpt_heads=2, gpt_dim=32, head_hidden_dim=32, action_chunk_size=4, n_action_steps=4, horizon=8),
        ),
    ),
    "image": (
        "Camera Diffusion Policy, the CPU recipe: corner2 at 84x84 (random 76x76 crops) plus the 4-D hand proprio, 50 demos, "
        "4-layer conv trunk, MLP denoiser, flow matching, 3 Euler steps, 6000 steps at batch 64 (about 45 CPU-minutes; "
        "robosuite Lift 98% at this point, bench/camera_success.py). For the paper's ResNet-18 + UNet use --policy.vision-encoder resnet18 "
        "--policy.backbone unet --policy.objective ddpm --policy.inference-scheduler ddim --policy.num-inference-steps 10.",
        TrainConfig(policy=replace(FAST_DP, state_keys=("proprio",), image_keys=("image_corner2",), vision_encoder="conv"), batch_size=64, steps=6000),
    ),
    "pointcloud": (
        "Sensor-only point-cloud Diffusion Policy (DP3's inputs): the suite's point cloud (Meta-World: corner2 depth, 512 "
        "points) plus proprio, DP3's point encoder at 32-64-128, MLP denoiser, flow matching, 3 Euler steps; batches of 16 "
        "observations with 4 noise draws each (level-2 minibatching: the encoder dominates a step), 4000 steps.",
        TrainConfig(
            policy=replace(FAST_DP, state_keys=("proprio",), point_cloud_key="point_cloud", observability="sensor_only", point_hidden_dims=(32, 64, 128), level2_samples=4),
            n_demos=10, batch_size=16, steps=4000,
        ),
    ),
    "pointcloud-tiny": (
        "Seconds-long point-cloud smoke run: 2 demos with a 512-point cloud, a small encoder and MLP, 4 steps.",
        TrainConfig(
            **SMOKE,
            policy=replace(
                FAST_DP, state_keys=("proprio",), point_cloud_key="point_cloud", observability="sensor_only", point_hidden_dims=(16, 32),
                point_feature_dim=16, mlp_hidden_dim=32, mlp_blocks=2, diffusion_step_embed_dim=16, horizon=8, n_action_steps=4,
            ),
        ),
    ),
    "image-tiny": (
        "Seconds-long image smoke run: one 40x40 camera, a small UNet, 4 steps, one loader worker.",
        TrainConfig(
            **SMOKE,
            image_size=40,
            num_workers=1,
            policy=DiffusionConfig(
                state_keys=("proprio",), image_keys=("image_corner2",), vision_feature_dim=16, vision_keypoints=8,
                down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=16, horizon=8, n_action_steps=4, num_inference_steps=3,
            ),
        ),
    ),
}

# Fields that may change on resume without changing what the run computes.
RESUMABLE_CHANGES = {"resume", "stop_at", "eval_every", "eval_episodes", "eval_n_envs", "log_every", "save_every", "device", "num_threads", "eval_episodes_periodic", "num_workers"}


# ---- checkpoints ------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: Path, step: int, policy: Policy, ema: EMA, optimizer, lr_schedule, rng: np.random.Generator, torch_rng_states: list[torch.Tensor] | None = None
) -> Path:
    """checkpoints/step_N: the EMA policy at the top level, everything needed to resume in train_state/.

    `torch_rng_states`: every rank's torch RNG state under torchrun (rank 0 writes the checkpoint)."""

    def write(tmp: Path) -> None:
        ema.model.save_pretrained(tmp)
        state_dir = tmp / "train_state"
        atomic_save_safetensors(state_dir / "raw_model.safetensors", policy.state_dict())
        opt_tensors, opt_skeleton = optimizer_state_to_safetensors(optimizer.state_dict())
        atomic_save_safetensors(state_dir / "optimizer.safetensors", opt_tensors)
        numpy_rng = save_rng_states(state_dir / "rng.safetensors", rng, torch_rng_states)
        atomic_write_json(
            state_dir / "state.json",
            {
                "step": step,
                "world_size": len(torch_rng_states or [None]),
                "optimizer": opt_skeleton,
                "lr_schedule": lr_schedule.state_dict(),
                "ema_num_updates": ema.num_updates,
                "numpy_rng": numpy_rng,
            },
        )

    return commit_checkpoint(run_dir / "checkpoints", f"step_{step:07d}", write)


def load_checkpoint(ckpt: Path, policy: Policy, ema: EMA, optimizer, lr_schedule, rng: np.random.Generator, dist_info: DistInfo = DistInfo()) -> int:
    """Restore everything `save_checkpoint` wrote; returns the step. Any missing or bad file is an error."""
    state_dir = ckpt / "train_state"
    state = read_json(state_dir / "state.json")
    saved_world = state.get("world_size", 1)
    if saved_world != dist_info.world_size:
        raise CheckpointError(
            f"{ckpt}: saved by {saved_world} process(es), resumed with {dist_info.world_size}; the effective batch and the batch "
            f"stream would change. Resume with torchrun --nproc_per_node {saved_world} (or start a new run from model.safetensors)"
        )
    load_state_dict_strict(ema.model, load_safetensors(ckpt / WEIGHTS_FILE), str(ckpt / WEIGHTS_FILE))
    load_state_dict_strict(policy, load_safetensors(state_dir / "raw_model.safetensors"), str(state_dir / "raw_model.safetensors"))
    optimizer.load_state_dict(optimizer_state_from_safetensors(load_safetensors(state_dir / "optimizer.safetensors"), state["optimizer"]))
    lr_schedule.load_state_dict(state["lr_schedule"])
    ema.num_updates = state["ema_num_updates"]
    load_rng_states(state_dir / "rng.safetensors", rng, state["numpy_rng"], dist_info.rank)
    return int(state["step"])


# ---- main loop --------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> dict:
    """Train (and evaluate) one run. Under torchrun: DDP over all ranks; rank 0 alone writes and evaluates."""
    cfg = with_env_state_keys(cfg)  # before the run dir: train_config.json and the checkpoints name the real keys
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dist_info, device_name = init_distributed(cfg.device)
    main_rank = dist_info.is_main
    run_dir = cfg.resolved_run_dir()
    if main_rank:
        prepare_run_dir(run_dir, config_to_dict(cfg), cfg.resume, RESUMABLE_CHANGES)
        demo_stores(cfg.dataset, run_dir, cfg.env, cfg.n_demos, cfg.policy.image_keys, cfg.image_size, cfg.resume, bool(cfg.policy.point_cloud_key))
    dist_info.barrier()  # the run dir and the demos exist before the other ranks read them

    store_paths = demo_stores(cfg.dataset, run_dir, cfg.env, cfg.n_demos, cfg.policy.image_keys, cfg.image_size, cfg.resume, bool(cfg.policy.point_cloud_key))
    if cfg.data_ram_gb is not None:
        limit_malloc_arenas()  # before the first store scan; see data/stream.py
    data = load_datasets(store_paths, cfg.policy, load_vectors=cfg.data_ram_gb is None)
    policy_cfg = data.policy_cfg
    if cfg.env not in data.env_ids and main_rank:
        print(f"warning: the dataset was recorded in {sorted(set(data.env_ids))}, evaluating in {cfg.env}")
    if main_rank:
        print(f"dataset: {data.n_episodes} episodes, {data.n_steps} steps from {', '.join(map(str, store_paths))}")
        if policy_cfg.task_names:
            print(f"multi-task policy over {list(policy_cfg.task_names)}: state key {TASK_KEY!r} is the task one-hot")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # the same stream on every rank: it draws the global batch
    sampler, normalizer = training_windows(data, cfg.data_ram_gb, cfg.seed, cfg.stream_rotate_every)
    if cfg.data_ram_gb is not None and main_rank:
        resident = len(sampler.resident_episodes(0))
        print(f"streaming: {resident} of {data.n_episodes} episodes resident at a time (cap {cfg.data_ram_gb} GB), rotating every {cfg.stream_rotate_every} steps")
    device = torch.device(device_name)
    policy = make_policy(policy_cfg, normalizer)
    if policy_cfg.vision_backbone_weights and not cfg.resume:
        from policies.vision import load_backbone_weights

        load_backbone_weights(policy.vision, policy_cfg.vision_backbone_weights)
        print(f"vision backbones start from {policy_cfg.vision_backbone_weights}")
    policy = policy.to(device)
    ema = EMA(policy, power=cfg.ema_power, max_decay=cfg.ema_max_decay)
    optimizer = torch.optim.AdamW(policy.optim_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    n_params = sum(p.numel() for p in policy.parameters())
    torch.manual_seed(rank_torch_seed(cfg.seed, dist_info.rank))  # diffusion noise: one stream per rank

    step = 0
    last = run_dir / "checkpoints" / "last"
    if cfg.resume and last.exists():
        step = load_checkpoint(last.resolve(), policy, ema, optimizer, lr_schedule, rng, dist_info)
        if main_rank:
            print(f"resumed from {last.resolve()} at step {step}")
    model: torch.nn.Module = policy
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # VQ-BeT trains its tokenizer, then freezes it: parameters go unused in one phase or the other
        model = DistributedDataParallel(policy, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=policy.trains_in_phases)

    effective_batch = cfg.batch_size * dist_info.world_size
    writer = log_file = bar = None
    if main_rank:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)
        log_file = open_jsonl_log(run_dir / "train_log.jsonl", cfg.resume, "step", step)  # later lines get recomputed identically
        print(
            f"training {policy.policy_type} ({n_params / 1e6:.2f}M params) for {cfg.steps} steps, effective batch {effective_batch} "
            f"({dist_info.world_size} process(es) x {cfg.batch_size}), run dir {run_dir}"
        )
        bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True)

    policy.train()
    window_start, data_wait, samples = time.perf_counter(), 0.0, 0
    stop_at = min(cfg.stop_at or cfg.steps, cfg.steps)
    image_batches = None
    if policy_cfg.image_keys:  # frames stream from disk in worker processes; batch s depends only on (seed, s)
        from data.loader import step_batch_loader

        image_batches = step_batch_loader(
            sampler, cfg.batch_size, cfg.seed, step, stop_at, cfg.num_workers, device.type == "cuda", dist_info
        )
    while step < stop_at:
        t0 = time.perf_counter()
        if image_batches is not None:
            batch = {k: v.to(device, non_blocking=True) for k, v in next(image_batches).items()}
        else:
            windows = sampler.sampler_at(step)
            ids = dist_info.rank_slice(rng.integers(0, len(windows), effective_batch))
            batch = {k: torch.from_numpy(v).to(device) for k, v in windows.sample(ids).items()}
        data_wait += time.perf_counter() - t0
        loss, metrics = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients arrive averaged over ranks
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip_norm).item()
        optimizer.step()
        lr_schedule.step()
        ema.update(policy)
        step += 1
        samples += effective_batch
        if bar is not None:
            bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps or metrics.pop("log_now", False):
            elapsed = time.perf_counter() - window_start
            metrics["loss"] = dist_info.mean(metrics["loss"], device)  # every rank reaches this step together
            scalars = {
                **metrics,
                "lr": lr_schedule.get_last_lr()[-1],
                "grad_norm": grad_norm,
                "samples_per_s": samples / elapsed,
                "data_wait_frac": data_wait / elapsed,
                "ema_decay": ema.decay(),
            }
            if main_rank:
                for name, value in scalars.items():
                    writer.add_scalar(f"train/{name}", value, step)
                log_file.write(json.dumps({"step": step, **scalars}) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.1e}")
            window_start, data_wait, samples = time.perf_counter(), 0.0, 0
        if step % cfg.save_every == 0 or step == stop_at:
            torch_rng_states = dist_info.gather_to_main(torch.get_rng_state(), device) if dist_info.enabled else None
            if main_rank:
                save_checkpoint(run_dir, step, policy, ema, optimizer, lr_schedule, rng, torch_rng_states)
            dist_info.barrier()
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            if main_rank:
                result = run_eval(cfg, ema.model, cfg.eval_episodes_periodic)
                writer.add_scalar("eval/success_rate", result.success_rate, step)
                tqdm.write(f"step {step}: {result.summary()}")
            dist_info.barrier()
            policy.train()
    summary: dict = {"run_dir": str(run_dir), "steps": step, "checkpoint": str(last.resolve()), "world_size": dist_info.world_size}
    shutdown_distributed(dist_info)  # the other ranks are done; rank 0 evaluates alone
    if main_rank:
        bar.close()
        log_file.close()
        if cfg.eval_episodes and step == cfg.steps:
            result = run_eval(cfg, ema.model, cfg.eval_episodes, video_dir=run_dir / "videos")
            writer.add_scalar("eval/success_rate", result.success_rate, step)
            payload = {"checkpoint": str(last.resolve()), "step": step, **result.to_dict()}
            atomic_write_json(run_dir / "eval.json", payload)
            print(result.summary())
            print(f"success definition: {result.success_definition}; per-episode seeds in {run_dir / 'eval.json'}")
            summary["eval"] = payload
        writer.close()
    return summary


def run_eval(cfg: TrainConfig, policy: Policy, n_episodes: int, video_dir: Path | None = None):
    """Evaluate as eval.py does: through the compiled sampling graph (dropped afterwards; the weights keep training)."""
    from envs.rollout import evaluate
    from policies.diffusion.compile import compiled

    with compiled(policy):
        return evaluate(
            policy,
            cfg.env,
            n_episodes,
            seed_start=cfg.eval_seed_start,
            n_envs=cfg.eval_n_envs,
            max_episode_steps=cfg.eval_max_episode_steps,
            video_dir=video_dir,
            n_videos=0,
        )
