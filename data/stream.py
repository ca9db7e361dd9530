"""Training windows from stores larger than RAM: a resident set of whole episodes that rotates.

`train.py --data-ram-gb X` uses this instead of loading the low-dim keys whole. At any step the sampler
draws windows from a *resident set*: whole episodes, read from zarr as contiguous slices, whose low-dim data
plus window indices fit in 40% of the cap (the next set is built beside it, and the sampler's index
construction needs temporaries). Every
`rotate_every` optimizer steps the set slides along a fixed random episode order: the oldest
`rotate_fraction` of it is dropped and as many new episodes are read. Over the run every episode becomes
resident; within a rotation period batches come from the resident set only (the usual shuffle-buffer trade).

Everything is a function of (seed, step): the resident set of step s is that of rotation s // rotate_every,
so a resumed run, any number of loader workers and every rank see the same windows. When the whole store
fits, the set holds every episode and never rotates (batches then equal the in-RAM sampler's for the same
ids). Image keys stay lazy frame views over the store (one zarr chunk per frame) in either case.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from data.normalize import Normalizer
from data.sampler import WindowSampler
from data.store import EpisodeStore, StoreError

INDEX_BYTES_PER_OFFSET = 9  # WindowSampler keeps an int64 index and a bool pad flag per offset and anchor
M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
RESIDENT_FRACTION = 0.4  # of the cap: the old and the new set coexist during a rotation, plus the sampler's temporaries


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's heap arenas. zarr decompresses chunks in a thread pool and glibc gives each thread an
    arena that keeps freed chunk buffers: scanning a 2 GB store left +196 MB RSS with the default arenas,
    +53 MB with 2. No-op off glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


class RemappedFrames:
    """Lazy frames of the resident steps: local step i is global store step `global_steps[i]`."""

    def __init__(self, frames, global_steps: np.ndarray) -> None:
        self.frames, self.global_steps = frames, global_steps
        self.shape = (len(global_steps), *frames.shape[1:])
        self.dtype = frames.dtype

    def __len__(self) -> int:
        return len(self.global_steps)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return self.frames[self.global_steps[np.asarray(index)]]


class StreamingWindows:
    """`sampler_at(step)` -> a WindowSampler over the episodes resident at that step."""

    def __init__(
        self,
        store_path: Path,
        vector_keys: Sequence[str],
        image_keys: Sequence[str],
        offsets: Mapping[str, Sequence[int]],
        ram_budget_bytes: int,
        seed: int,
        rotate_every: int,
        rotate_fraction: float = 0.25,
    ) -> None:
        if rotate_every < 1 or not 0 < rotate_fraction <= 1:
            raise ValueError(f"rotate_every must be >= 1 and rotate_fraction in (0, 1], got {rotate_every}, {rotate_fraction}")
        self.store_path = Path(store_path)
        self.vector_keys, self.image_keys = list(vector_keys), list(image_keys)
        self.offsets = {k: list(v) for k, v in offsets.items()}
        self.rotate_every = rotate_every
        store = EpisodeStore.open(self.store_path)
        self.ends = store.episode_ends.astype(np.int64)
        self.lengths = np.diff(self.ends, prepend=0)
        specs = store.key_specs()
        row_bytes = sum(int(np.prod(specs[k].shape)) * np.dtype(specs[k].dtype).itemsize for k in self.vector_keys)
        self.step_bytes = row_bytes + INDEX_BYTES_PER_OFFSET * sum(len(v) for v in self.offsets.values()) + 8
        self.resident_budget = int(ram_budget_bytes * RESIDENT_FRACTION)
        if self.lengths.max() * self.step_bytes > self.resident_budget:
            raise StoreError(
                f"{self.store_path}: the longest episode ({int(self.lengths.max())} steps, {self.lengths.max() * self.step_bytes / 1e6:.1f} MB "
                f"of low-dim data and window indices) exceeds {RESIDENT_FRACTION:.0%} of the data RAM cap ({ram_budget_bytes / 1e9:.3f} GB); raise --data-ram-gb"
            )
        self.order = np.random.default_rng([seed, 0x5EED]).permutation(len(self.ends))
        self.fits_whole = int(self.lengths.sum()) * self.step_bytes <= self.resident_budget
        self.stride = 1 if self.fits_whole else max(1, int(rotate_fraction * len(self._episodes_from(0))))
        self._round: int | None = None
        self._sampler: WindowSampler | None = None
        self._resident: dict[int, tuple[int, int]] = {}  # episode -> (start, stop) in the resident arrays
        self._arrays: dict[str, np.ndarray] = {}

    # ---- which episodes are resident ----------------------------------------------------------------
    def _episodes_from(self, position: int) -> list[int]:
        """Episodes order[position], order[position+1], ... (wrapping) while they fit the resident budget."""
        if self.fits_whole:
            return list(range(len(self.ends)))
        chosen, used = [], 0
        for i in range(len(self.order)):
            episode = int(self.order[(position + i) % len(self.order)])
            cost = int(self.lengths[episode]) * self.step_bytes
            if used + cost > self.resident_budget:
                break
            chosen.append(episode)
            used += cost
        return sorted(chosen)  # store order: contiguous reads, deterministic layout

    def resident_episodes(self, step: int) -> list[int]:
        return self._episodes_from(((step // self.rotate_every) * self.stride) % len(self.order))

    # ---- the sampler ---------------------------------------------------------------------------------
    def sampler_at(self, step: int) -> WindowSampler:
        rotation = 0 if self.fits_whole else step // self.rotate_every
        if rotation != self._round:
            self._build(self.resident_episodes(step))
            self._round = rotation
        return self._sampler

    def _build(self, episodes: list[int]) -> None:
        """New resident arrays, allocated once and filled in place: kept episodes are copied from the old
        arrays, new ones read from the store one at a time. Peak: old set + new set + one episode."""
        store = EpisodeStore.open(self.store_path)
        starts = self.ends - self.lengths
        old_arrays, old_resident = self._arrays, self._resident
        self._arrays, self._sampler = {}, None
        specs = store.key_specs()
        total = int(sum(self.lengths[e] for e in episodes))
        arrays: dict = {k: np.empty((total, *specs[k].shape), specs[k].dtype) for k in self.vector_keys}
        resident, cursor = {}, 0
        for episode in episodes:
            length = int(self.lengths[episode])
            for key in self.vector_keys:
                if episode in old_resident:
                    lo, hi = old_resident[episode]
                    arrays[key][cursor : cursor + length] = old_arrays[key][lo:hi]
                else:
                    arrays[key][cursor : cursor + length] = store.read(key, int(starts[episode]), int(self.ends[episode]))
            resident[episode] = (cursor, cursor + length)
            cursor += length
        del old_arrays
        global_steps = np.concatenate([np.arange(starts[e], self.ends[e]) for e in episodes])
        for key in self.image_keys:
            arrays[key] = RemappedFrames(store.frames(key), global_steps)
        local_ends = np.cumsum([self.lengths[e] for e in episodes])
        self._resident, self._arrays = resident, {k: arrays[k] for k in self.vector_keys}
        self._sampler = WindowSampler(arrays, local_ends, self.offsets)

    def resident_bytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    # ---- statistics over the whole store, in blocks --------------------------------------------------
    def blocks(self, keys: Sequence[str], block_steps: int) -> Iterator[dict[str, np.ndarray]]:
        store = EpisodeStore.open(self.store_path)
        for start in range(0, int(self.ends[-1]), block_steps):
            stop = min(start + block_steps, int(self.ends[-1]))
            yield {k: store.read(k, start, stop) for k in keys}

    def fit_normalizer(self, modes: Mapping[str, str]) -> Normalizer:
        """Normalizer statistics over every committed step, read in blocks of an eighth of the resident budget
        (fitting makes float64 temporaries of about 4x a block)."""
        return Normalizer.fit_blocks(self.blocks(list(modes), max(1, self.resident_budget // (8 * self.step_bytes))), modes)

    def __getstate__(self) -> dict:  # loader workers rebuild their own resident set
        return self.__dict__ | {"_round": None, "_sampler": None, "_resident": {}, "_arrays": {}}
