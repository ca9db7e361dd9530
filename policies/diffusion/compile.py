"""Compiled CPU inference for Diffusion Policy: the whole sampling loop as one TorchScript graph.

At batch 1 a chunk costs a few hundred small kernels (denoiser layers x sampling steps), and eager PyTorch
spends most of that time in Python and dispatcher overhead. `compile_sampling(policy)` traces
`cond, noise -> normalized chunk` for the policy's sampler (step contexts, every denoiser call and
sampler update unrolled) with `torch.jit.trace`, then freezes it (weights become constants, so the
graph is optimized for inference). Graphs are traced lazily per batch size.

Equivalence: each new graph is checked against eager sampling on its first inputs; if the maximum
absolute difference exceeds `TOLERANCE` (or tracing fails) the policy stays on eager sampling and the
reason is recorded in `policy.compiled_sampling.fallback_reason`. Stochastic samplers (ddpm) are never
compiled. Mechanism choice (TorchScript over torch.compile and ONNX Runtime) is measured in
bench/latency.py and docs/policies.md.

Frozen graphs hold a copy of the weights: compile a policy for evaluation or serving, not while it trains
(`uncompiled()` restores eager sampling).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from policies.base import Policy
from policies.diffusion.policy import DiffusionPolicy

log = logging.getLogger(__name__)
TOLERANCE = 1e-4
"""Largest absolute difference (normalized action units) allowed between compiled and eager chunks."""


class _SamplingLoop(nn.Module):
    """`policy.sample_eager` as a module, so torch.jit.trace/freeze see the weights it uses."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.policy.sample_eager(cond, noise)


class CompiledSampling:
    """Per-batch-size TorchScript graphs of a policy's sampling loop, with eager fallback."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        self.policy = policy
        self.graphs: dict[tuple, torch.jit.ScriptModule] = {}
        self.fallback_reason: str | None = None
        self.max_abs_diff = 0.0
        if not policy.deterministic_sampling:
            self.fallback_reason = f"sampler {policy.sampler.name!r} is stochastic"

    @property
    def active(self) -> bool:
        return self.fallback_reason is None

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor | None:
        """The compiled chunk, or None when the caller must sample eagerly."""
        if not self.active:
            return None
        key = (tuple(cond.shape), cond.dtype, cond.device)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._trace(cond, noise)
            if graph is None:
                return None
            self.graphs[key] = graph
        return graph(cond, noise)

    def _trace(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.jit.ScriptModule | None:
        loop = _SamplingLoop(self.policy).eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.x; see docs/policies.md
                graph = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(loop, (cond, noise), check_trace=False)))
                expected = loop(cond, noise)
                got = graph(cond, noise)
                got = graph(cond, noise)  # the profiling executor specializes on the first calls
        except Exception as e:  # noqa: BLE001  (any tracing failure means: stay eager, say why)
            self.fallback_reason = f"tracing failed: {type(e).__name__}: {e}"
            log.warning("compiled sampling unavailable, using eager: %s", self.fallback_reason)
            return None
        diff = (got - expected).abs().max().item()
        self.max_abs_diff = max(self.max_abs_diff, diff)
        if not diff <= TOLERANCE:
            self.fallback_reason = f"compiled chunk differs from eager by {diff:.2e} > {TOLERANCE:.0e}"
            log.warning("compiled sampling unavailable, using eager: %s", self.fallback_reason)
            return None
        return graph


def compile_sampling(policy: Policy) -> str:
    """Route `policy`'s chunk sampling through TorchScript graphs; returns a one-line description."""
    core = policy.sampler_core()  # itself, or the diffusion base of a DSRL/residual wrapper
    if core is None:
        return f"eager ({policy.policy_type} policies have no diffusion sampling loop)"
    core.compiled_sampling = CompiledSampling(core)
    if not core.compiled_sampling.active:
        return f"eager ({core.compiled_sampling.fallback_reason})"
    return f"torchscript (frozen, {core.sampler.name}-{core.sampler.steps}, traced per batch size on first use)"


@contextlib.contextmanager
def compiled(policy: Policy) -> Iterator[str]:
    """`compile_sampling` for the duration of a block (e.g. an evaluation during training), then eager again."""
    description = compile_sampling(policy)
    try:
        yield description
    finally:
        uncompiled(policy)


def uncompiled(policy: Policy) -> None:
    core = policy.sampler_core()
    if core is not None:
        core.compiled_sampling = None
