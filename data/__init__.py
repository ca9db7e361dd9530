"""Data layer: zarr episode store, windowed sampler, per-key normaliser."""

from data.normalize import Normalizer
from data.sampler import WindowSampler
from data.store import SCHEMA_VERSION, EpisodeStore, KeySpec, StoreError, write_store_atomically

__all__ = [
    "SCHEMA_VERSION",
    "EpisodeStore",
    "KeySpec",
    "Normalizer",
    "StoreError",
    "WindowSampler",
    "write_store_atomically",
]
