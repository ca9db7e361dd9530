"""Training objectives and samplers of Diffusion Policy, on diffusers schedulers.

Objectives (`DiffusionConfig.objective`):
- `ddpm`: the network predicts the noise (or the clean chunk) of a DDPM forward process with
  `num_train_timesteps` discrete steps. Samplers: `ddim` (deterministic), `dpm_solver` (DPM-Solver++
  multistep, deterministic), `unipc` (UniPC multistep, deterministic) and `ddpm` (ancestral, stochastic).
  DPM-Solver++ and UniPC need no retraining: they integrate the same model in fewer steps.
- `flow`: rectified flow. x_s = (1 - s) * chunk + s * noise for s in [0, 1]; the network predicts the
  velocity noise - chunk. Sampler `euler` integrates from s=1 to s=0 on diffusers'
  `FlowMatchEulerDiscreteScheduler` sigma grid: x <- x + (s_next - s) * v, deterministic given the noise.

Every deterministic sampler is a fixed function of (observation, initial noise): the map DSRL steers.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from policies.diffusion.config import DiffusionConfig, check_sampler

Denoise = Callable[[torch.Tensor, int], torch.Tensor]
"""(noisy chunk, step index) -> network prediction for that sampling step."""


def ddpm_kwargs(config: DiffusionConfig) -> dict:
    return dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
    )


class Sampler:
    """One sampler with a fixed number of steps: `timesteps` are the network's time inputs, `run` integrates."""

    def __init__(self, config: DiffusionConfig, name: str, steps: int) -> None:
        check_sampler(config.objective, name, steps, config.num_train_timesteps)
        self.name, self.steps, self.clip = name, steps, config.clip_sample_range if config.clip_sample else None
        clip = dict(clip_sample=config.clip_sample, clip_sample_range=config.clip_sample_range)
        if name == "euler":
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps, shift=1.0)
            scheduler.set_timesteps(steps)
            self.sigmas = scheduler.sigmas.float()  # steps + 1 values from 1 down to 0
            self.timesteps = self.sigmas[:-1] * config.num_train_timesteps
            self.scheduler = scheduler
            return
        if name == "ddim":
            self.scheduler = DDIMScheduler(**ddpm_kwargs(config), **clip, set_alpha_to_one=True, steps_offset=0)
        elif name == "ddpm":
            self.scheduler = DDPMScheduler(**ddpm_kwargs(config), **clip)
        elif name == "dpm_solver":
            # thresholding clips the predicted clean chunk, as clip_sample does for DDIM
            self.scheduler = DPMSolverMultistepScheduler(
                **ddpm_kwargs(config), algorithm_type="dpmsolver++", solver_order=2, thresholding=config.clip_sample,
                sample_max_value=config.clip_sample_range, dynamic_thresholding_ratio=1.0, lower_order_final=True,
            )
        else:  # unipc
            self.scheduler = UniPCMultistepScheduler(
                **ddpm_kwargs(config), solver_order=2, thresholding=config.clip_sample,
                sample_max_value=config.clip_sample_range, dynamic_thresholding_ratio=1.0, lower_order_final=True,
            )
        self.scheduler.set_timesteps(steps)
        self.timesteps = self.scheduler.timesteps.clone()
        self.stateful = name in ("dpm_solver", "unipc")  # multistep solvers keep past outputs: reset per chunk

    def run(self, denoise: Denoise, noise: torch.Tensor) -> torch.Tensor:
        x = noise
        if self.name == "euler":
            sigmas = self.sigmas.tolist()
            for i in range(self.steps):
                x = x + (sigmas[i + 1] - sigmas[i]) * denoise(x, i)
            return x.clamp(-self.clip, self.clip) if self.clip is not None else x
        if self.stateful:
            self.scheduler.set_timesteps(self.steps)
        for i, t in enumerate(self.timesteps):
            x = self.scheduler.step(denoise(x, i), t, x).prev_sample
        return x


def training_target(config: DiffusionConfig, scheduler: DDPMScheduler, actions: torch.Tensor, noise: torch.Tensor, times: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy input, network time input, regression target) for a batch of normalized chunks.

    `times`: fixed network times (B,) (reproducible losses, the DDP gradient test); drawn when None.
    """
    batch, device = actions.shape[0], actions.device
    if config.objective == "flow":
        if times is None:
            times = torch.rand(batch, device=device) * config.num_train_timesteps
        s = (times.float() / config.num_train_timesteps)[:, None, None]
        return (1 - s) * actions + s * noise, times, noise - actions
    if times is None:
        times = torch.randint(0, config.num_train_timesteps, (batch,), device=device)
    target = noise if config.prediction_type == "epsilon" else actions
    return scheduler.add_noise(actions, noise, times), times, target
