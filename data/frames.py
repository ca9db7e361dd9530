"""Lazy views of a store's image frames: indexing reads only the frames asked for (one zarr chunk per frame).

Low-dim keys are small and live in RAM; image keys can be many GB, so samplers index these views instead.
"""

from __future__ import annotations

import numpy as np
import zarr


class LazyFrames:
    """A zarr array (T, H, W, C) that reads frames only when indexed: `frames[index]` for any int array."""

    def __init__(self, array: zarr.Array, n_steps: int, where: str) -> None:
        self.array = array
        self.n_steps = n_steps
        self.where = where
        self.shape = (n_steps, *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return self.n_steps

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        unique, inverse = np.unique(index.reshape(-1), return_inverse=True)
        try:
            frames = self.array.get_orthogonal_selection((unique,))
        except Exception as exc:
            raise OSError(f"{self.where}: cannot read frames {unique[:4].tolist()}...: {exc}") from exc
        return frames[inverse].reshape(*index.shape, *frames.shape[1:])


class ConcatFrames:
    """Several stores' lazy frames as one: global step i lies in the part whose range holds it."""

    def __init__(self, parts: list[LazyFrames]) -> None:
        shapes = {(p.shape[1:], str(p.dtype)) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"frames differ in shape/dtype across stores: {[(p.where, p.shape[1:], str(p.dtype)) for p in parts]}")
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        flat = index.reshape(-1)
        part = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty((len(flat), *self.shape[1:]), self.dtype)
        for p in np.unique(part):
            mask = part == p
            out[mask] = self.parts[p][flat[mask] - self.starts[p]]
        return out.reshape(*index.shape, *self.shape[1:])
