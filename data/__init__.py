"""Data layer: zarr episode store, windowed sampler, per-key normaliser, importers and exporters.

Names resolve lazily, so the command-line tools (data.import_lerobot, data.inspect, ...) do not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "SCHEMA_VERSION": "data.store",
    "EpisodeStore": "data.store",
    "KeySpec": "data.store",
    "StoreError": "data.store",
    "write_store_atomically": "data.store",
    "Normalizer": "data.normalize",
    "WindowSampler": "data.sampler",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
