"""The observation window a chunked policy reads: the last n steps, padded at the episode start.

Training windows come from `data.sampler.WindowSampler`, which pads before an episode's first step by repeating
that step. Everything that builds windows online (select_action, the residual's correction, the RL chunk
env and base-action cache, the policy server, the robot-side executor) must pad the same way, so they all
use this class. Pure Python: it stacks with whatever function it is given (np.stack, torch.stack).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ObsWindow(Generic[T]):
    """The last `n_steps` observations (key -> array); the first observation of an episode fills every slot."""

    def __init__(self, n_steps: int) -> None:
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.n_steps = n_steps
        self._steps: deque[Mapping[str, T]] = deque(maxlen=n_steps)

    def push(self, obs: Mapping[str, T]) -> None:
        """Add this step's observation; at an episode start (empty window) it is repeated n_steps times."""
        if not self._steps:
            self._steps.extend([obs] * self.n_steps)
        else:
            self._steps.append(obs)

    def clear(self) -> None:
        """Forget everything (call at an episode start)."""
        self._steps.clear()

    def __bool__(self) -> bool:
        return bool(self._steps)

    def stacked(self, stack: Callable[[list[T]], Any], keys: Any = None) -> dict[str, Any]:
        """key -> stack([oldest, ..., newest]) for `keys` (default: the newest observation's keys)."""
        if not self._steps:
            raise RuntimeError("the observation window is empty: push an observation first")
        return {k: stack([o[k] for o in self._steps]) for k in (keys if keys is not None else self._steps[-1])}
