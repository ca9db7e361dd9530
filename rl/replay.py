"""A fixed-capacity FIFO replay buffer of float32 arrays, saved and restored as safetensors (no pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.io import CheckpointError, atomic_save_safetensors, load_safetensors


class ReplayBuffer:
    def __init__(self, capacity: int, shapes: dict[str, tuple[int, ...]]) -> None:
        self.capacity = capacity
        self.shapes = shapes
        self.arrays = {k: np.zeros((capacity, *shape), dtype=np.float32) for k, shape in shapes.items()}
        self.size = 0
        self.next = 0  # row the next transition goes to

    def __len__(self) -> int:
        return self.size

    def add(self, **rows: np.ndarray | torch.Tensor) -> None:
        """Append a batch of rows (leading dim N) for every field; the oldest rows are overwritten when full."""
        if set(rows) != set(self.shapes):
            raise KeyError(f"replay rows have fields {sorted(rows)}, expected {sorted(self.shapes)}")
        values = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float32) for k, v in rows.items()}
        n = len(next(iter(values.values())))
        for k, v in values.items():
            if v.shape != (n, *self.shapes[k]):
                raise ValueError(f"replay field {k!r}: got shape {v.shape}, expected ({n}, *{self.shapes[k]})")
        idx = (self.next + np.arange(n)) % self.capacity
        for k, v in values.items():
            self.arrays[k][idx] = v
        self.next = int((self.next + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, batch_size)
        return {k: torch.from_numpy(v[idx]).to(device) for k, v in self.arrays.items()}

    def save(self, path: Path) -> None:
        tensors = {k: torch.from_numpy(v[: self.size]) for k, v in self.arrays.items()}
        tensors["_cursor"] = torch.tensor([self.size, self.next, self.capacity], dtype=torch.int64)
        atomic_save_safetensors(path, tensors)

    def load(self, path: Path) -> None:
        tensors = load_safetensors(path)
        expected = {*self.shapes, "_cursor"}
        if set(tensors) != expected:
            raise CheckpointError(f"{path}: replay fields {sorted(tensors)}, expected {sorted(expected)}")
        size, next_row, capacity = (int(x) for x in tensors["_cursor"])
        if capacity != self.capacity:
            raise CheckpointError(f"{path}: replay capacity {capacity}, the run is configured for {self.capacity}")
        for k, shape in self.shapes.items():
            if tuple(tensors[k].shape) != (size, *shape):
                raise CheckpointError(f"{path}: replay field {k!r} has shape {tuple(tensors[k].shape)}, expected ({size}, *{shape})")
            self.arrays[k][:size] = tensors[k].numpy()
        self.size, self.next = size, next_row


class NStepAccumulator:
    """Turns per-env streams of 1-step transitions into n-step ones.

    `push(env, row, reward, terminated, done)` takes the transition of one env step: `row` holds the
    fields of the start state and action plus `next_*` fields of the state reached. It returns the
    n-step transitions completed by this step, each with
        reward   = sum_{k<m} gamma^k r_{t+k}       (m = n, or fewer when the episode ended first)
        discount = gamma^m, or 0 when the episode terminated within those m steps
    and the `next_*` fields of the state m steps later. A truncated episode keeps its bootstrap.
    """

    def __init__(self, n: int, gamma: float, n_envs: int) -> None:
        if n < 1:
            raise ValueError(f"n_step must be >= 1, got {n}")
        self.n, self.gamma = n, gamma
        self.pending: list[list[tuple[dict, float]]] = [[] for _ in range(n_envs)]

    def push(self, env: int, row: dict, reward: float, terminated: bool, done: bool) -> list[dict]:
        pending = self.pending[env]
        pending.append((row, float(reward)))
        out = []
        if len(pending) == self.n or done:
            next_fields = {k: v for k, v in row.items() if k.startswith("next_")}
            while pending and (len(pending) == self.n or done):
                ret = sum(self.gamma**k * r for k, (_, r) in enumerate(pending))
                discount = 0.0 if terminated else self.gamma ** len(pending)
                start = {k: v for k, v in pending[0][0].items() if not k.startswith("next_")}
                out.append({**start, **next_fields, "reward": ret, "discount": discount})
                pending.pop(0)
                if not done:
                    break
        return out

    def clear(self) -> None:
        for pending in self.pending:
            pending.clear()
