"""Windowed sampling over in-RAM episode arrays with edge-repeat padding.

Every timestep ``t`` of every selected episode is an anchor. For each key, a window is
``data[key][clip(t + offset, ep_start, ep_end - 1)]`` over that key's offsets, and
``<key>_is_pad`` marks the offsets that fell outside the episode.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np


class WindowSampler:
    """Fixed-offset windows around every anchor timestep; batches are one fancy-index per key."""

    def __init__(
        self,
        data: Mapping[str, np.ndarray],
        episode_ends: np.ndarray,
        offsets: Mapping[str, Sequence[int]],
        episode_indices: Sequence[int] | None = None,
    ) -> None:
        """
        Args:
            data: key -> (n_steps, *shape) arrays, e.g. from ``EpisodeStore.load``.
            episode_ends: cumulative episode ends (strictly increasing, positive).
            offsets: key -> window offsets relative to the anchor, e.g. ``{"obs": [-1, 0]}``.
            episode_indices: episodes to draw anchors from (default all), e.g. a train split.
        """
        ends = np.asarray(episode_ends)
        if ends.ndim != 1 or len(ends) == 0 or not np.issubdtype(ends.dtype, np.integer):
            raise ValueError(
                f"episode_ends has shape {ends.shape} dtype {ends.dtype}; expected a non-empty 1-D integer array"
            )
        if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
            raise ValueError(f"episode_ends {ends.tolist()} must be positive and strictly increasing")
        if not offsets:
            raise ValueError("offsets is empty; expected key -> list of int offsets")
        missing = sorted(set(offsets) - set(data))
        if missing:
            raise ValueError(f"offsets keys {missing} not in data; available keys {sorted(data)}")
        for key in offsets:
            if len(data[key]) < ends[-1]:
                raise ValueError(
                    f"data[{key!r}] has shape {np.shape(data[key])}; expected at least "
                    f"episode_ends[-1] = {int(ends[-1])} steps"
                )

        if episode_indices is None:
            episodes = np.arange(len(ends))
        else:
            episodes = np.asarray(episode_indices, dtype=np.int64).reshape(-1)
            out_of_range = episodes[(episodes < 0) | (episodes >= len(ends))]
            if out_of_range.size:
                raise ValueError(
                    f"episode_indices {out_of_range.tolist()} out of range; there are {len(ends)} episodes"
                )
        ends = ends.astype(np.int64)
        starts = np.concatenate([[0], ends[:-1]])[episodes]
        stops = ends[episodes]
        anchors = np.concatenate([np.zeros(0, np.int64)] + [np.arange(s, e) for s, e in zip(starts, stops)])
        anchor_ep_start = np.repeat(starts, stops - starts)
        anchor_ep_last = np.repeat(stops - 1, stops - starts)

        self._data = {key: data[key] for key in offsets}
        self._index: dict[str, np.ndarray] = {}
        self._is_pad: dict[str, np.ndarray] = {}
        for key, key_offsets in offsets.items():
            offs = np.asarray(key_offsets)
            if offs.ndim != 1 or offs.size == 0 or not np.issubdtype(offs.dtype, np.integer):
                raise ValueError(f"offsets[{key!r}] = {list(key_offsets)}; expected a non-empty list of ints")
            raw = anchors[:, None] + offs[None, :]
            lo, hi = anchor_ep_start[:, None], anchor_ep_last[:, None]
            self._index[key] = np.clip(raw, lo, hi)
            self._is_pad[key] = (raw < lo) | (raw > hi)

    def sampler_at(self, step: int) -> WindowSampler:
        """The sampler for optimizer step `step`: this one (data.stream.StreamingWindows rotates instead)."""
        return self

    def __len__(self) -> int:
        """Number of anchors (= steps in the selected episodes)."""
        return len(next(iter(self._index.values())))

    def sample(self, anchor_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Windows for anchors ``anchor_ids``: key -> (B, L, *shape), ``key_is_pad`` -> (B, L) bool."""
        ids = np.asarray(anchor_ids)
        batch: dict[str, np.ndarray] = {}
        for key, index in self._index.items():
            batch[key] = self._data[key][index[ids]]
            batch[f"{key}_is_pad"] = self._is_pad[key][ids]
        return batch

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """One window without the batch dimension (torch Dataset compatible)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"anchor index {i} out of range; sampler has {n} anchors")
        return {k: v[0] for k, v in self.sample(np.array([i])).items()}

    def batches(
        self, batch_size: int, rng: np.random.Generator, drop_last: bool = True
    ) -> Iterator[dict[str, np.ndarray]]:
        """One shuffled epoch of batches; each anchor appears once (short last batch dropped if drop_last)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = rng.permutation(len(self))
        for start in range(0, len(order), batch_size):
            ids = order[start : start + batch_size]
            if drop_last and len(ids) < batch_size:
                return
            yield self.sample(ids)
