"""CLI: serve a checkpoint to robots.

    python -m deploy.serve --checkpoint runs/push-v3-diffusion-seed0
    python -m deploy.serve --checkpoint <ckpt> --host 0.0.0.0 --port 8000 --token-env POLICY_TOKEN
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from core.io import CheckpointError
from deploy.server import PolicyServer, ServerOptions, load_for_serving, pin_mmap_threshold


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: Path
    """Checkpoint dir or run dir (its checkpoints/last): DP, VQ-BeT, DSRL-steered or residual."""
    host: str = "127.0.0.1"
    """Interface to bind; the default is reachable only from this machine."""
    port: int = 8000
    """TCP port."""
    token_env: str | None = None
    """Name of an environment variable holding the shared token (kept off the command line and out of `ps`)."""
    env: str | None = None
    """Env name for fps and action bounds in the metadata (default: the run's train_config.json)."""
    fps: float | None = None
    """Control rate to advertise (default: the env's)."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device for inference."""
    max_batch: int = 16
    """Most concurrent requests answered by one forward pass."""
    max_message_mb: float | None = None
    """Frames larger than this are refused before they are read (default: the largest valid request for this
    policy, every observation as a full window, plus 64 KiB)."""
    pin_malloc: bool = True
    """Pin glibc's mmap threshold at 128 KiB at start, so large hostile frames do not fragment the heap
    (docs/deploy.md, "Memory under hostile traffic"). A no-op where the C library is not glibc."""
    debug: bool = False
    """Include tracebacks in error replies."""
    compile: bool = True
    """Sample diffusion chunks through the compiled TorchScript graph, as eval.py does by default."""
    num_threads: int | None = 1
    """torch intra-op CPU threads (None: torch's default). 1 by default: inference runs on a worker thread, and on
    these CPUs OpenMP regions entered from a second thread ran the 2-thread UNet 4x slower than one thread did
    (docs/deploy.md, "Server speed"); batch-1 chunks of the default policy are fastest on one thread."""


def main() -> None:
    cfg = tyro.cli(ServeConfig)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one INFO line per refused or dropped connection: a storm's worth
    token = None
    if cfg.token_env is not None:
        token = os.environ.get(cfg.token_env)
        if not token:
            raise SystemExit(f"error: --token-env {cfg.token_env}: that environment variable is unset or empty")
    try:
        policy, metadata = load_for_serving(cfg.checkpoint, cfg.device, cfg.env, cfg.fps, cfg.compile)
    except (CheckpointError, RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    metadata["auth"] = token is not None
    if cfg.pin_malloc:
        pin_mmap_threshold()
    max_bytes = None if cfg.max_message_mb is None else int(cfg.max_message_mb * 2**20)
    options = ServerOptions(host=cfg.host, port=cfg.port, token=token, max_batch=cfg.max_batch, max_message_bytes=max_bytes, debug=cfg.debug)
    try:
        asyncio.run(PolicyServer(policy, metadata, options).serve_forever())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
