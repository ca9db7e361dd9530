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

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, batch_size)
        return {k: torch.from_numpy(v[idx]) for k, v in self.arrays.items()}

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
