"""Policy server: any checkpoint that follows the policy contract, over websocket + msgpack.

    python -m deploy.serve --checkpoint runs/push-v3-diffusion-seed0            # binds 127.0.0.1:8000
    python -m deploy.serve --checkpoint <ckpt> --host 0.0.0.0 --token "$TOKEN"   # reachable from the robot

Protocol (openpi-compatible, see docs/deploy.md):
- On connect the server sends one binary frame: metadata (policy type, checkpoint sha256, obs spec, action
  spec with bounds, fps, chunking). `openpi_client.WebsocketClientPolicy` reads it as its server metadata.
- Each request is a binary frame: a map of observation arrays in env units, either one step `(*shape)` (the
  server keeps this connection's last `n_obs_steps` observations, padding at the start like training) or a
  full window `(n_obs_steps, *shape)`. Optional fields: `reset` (true: clear the history first),
  `noise_seed` (int: reproducible diffusion noise), `timestamp` (echoed back). Other keys are ignored.
- The reply is a binary frame {"actions": (horizon - n_obs_steps + 1, action_dim) float32 in env units,
  the first aligned with the observation's step; "n_action_steps"; "timestamp"; "server_timing"}.
  Per-step policies (metadata "acts_per_step": the residual) reply with one action for the observation's
  step, computed by `select_action` with this connection's episode state, exactly as eval.py runs them;
  metadata then says n_action_steps = actions_per_reply = 1, and `reset` starts a new episode.
- Errors are text frames {"error": {"code", "message"}} (plus "traceback" with --debug). The connection
  stays open: one bad request never costs the robot its session or the server its life.
- Auth: when a token is set, the upgrade request needs `Authorization: Api-Key <token>` (what openpi_client
  sends for `api_key=`). `GET /healthz` answers 200 without auth.

Inference runs on one worker thread, never on the event loop. Requests that arrive while it is busy are
batched into the next forward pass, so concurrent clients share the model instead of queueing one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from core.window import ObsWindow
from deploy import wire
from policies.base import Policy

log = logging.getLogger("deploy.server")
PROTOCOL_VERSION = 1
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's initial mmap threshold, pinned (docs/deploy.md, "Memory under hostile traffic")."""
REQUEST_SLACK_BYTES = 64 * 1024
"""What a valid request may carry beyond its observation arrays: msgpack framing, reset, noise_seed, timestamp."""


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Keep large buffers out of the heap: glibc's `mallopt(M_MMAP_THRESHOLD, threshold)`; False where not glibc.

    glibc raises its mmap threshold each time a large mmapped buffer is freed (up to 32 MB), so after the first
    big message later big ones come from the heap and fragment it: the server grew by 100+ MB over a few
    storms of malformed traffic. A fixed threshold turns the dynamic adjustment off and returns every large
    buffer to the OS when it is freed.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl, macOS: no mallopt
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold)))


def request_limit_bytes(spec: dict[str, dict[str, Any]], n_obs_steps: int) -> int:
    """The largest frame a valid request can be: every observation sent as a full window, plus slack."""
    itemsize = {"float32": 16, "uint8": 1}  # float observations may arrive in any float dtype the wire allows
    window = sum(n_obs_steps * int(np.prod(s["shape"])) * itemsize[s["dtype"]] for s in spec.values())
    return window + REQUEST_SLACK_BYTES


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    """Interface to bind. The default is reachable only from this machine; pass 0.0.0.0 deliberately."""
    port: int = 8000
    """TCP port (0: pick a free one)."""
    token: str | None = None
    """Shared secret; clients must send `Authorization: Api-Key <token>`. None: no auth."""
    max_batch: int = 16
    """Most requests run in one forward pass."""
    max_message_bytes: int | None = None
    """Larger frames are refused by the websocket layer before they are read into memory (the connection closes
    with code 1009). None: the largest valid request for this policy (`request_limit_bytes`)."""
    debug: bool = False
    """Send tracebacks to clients (never in production)."""


@dataclass
class _Pending:
    window: dict[str, np.ndarray]
    noise_seed: int | None
    session: Any
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


def obs_spec(policy: Policy) -> dict[str, dict[str, Any]]:
    c = policy.config
    spec = {key: {"shape": [int(dim)], "dtype": "float32"} for key, dim in zip(c.state_keys, c.state_dims)}
    spec |= {key: {"shape": [int(n) for n in c.image_shape], "dtype": "uint8"} for key in c.image_keys}
    if c.point_cloud_key:
        spec[c.point_cloud_key] = {"shape": [int(n) for n in c.point_cloud_shape], "dtype": "float32"}
    return spec


def served_chunking(policy: Policy) -> tuple[int, int]:
    """(actions a robot executes from one reply before the next takes over, actions per reply): the policy's
    n_action_steps and horizon - n_obs_steps + 1 for chunked policies, (1, 1) for per-step ones."""
    if policy.acts_per_step:
        return 1, 1
    c = policy.config
    return c.n_action_steps, c.horizon - c.n_obs_steps + 1


class PolicyRunner:
    """The torch side of serving: validates requests into observation windows and runs batched inference.

    Shared by the websocket server and in-process users (the latency simulation in `deploy.sim`).

    Chunked policies answer each request with a chunk from the request's window, batched across requests.
    Per-step policies (`policy.acts_per_step`: the residual) answer with one action, computed as eval.py
    computes it: `select_action` on the newest observation, with the episode state (base chunk queue,
    observation windows) of the requesting session (one per connection or simulated robot).
    """

    def __init__(self, policy: Policy) -> None:
        policy.check_ready()
        self.policy = policy.eval()
        self.config = policy.config
        self.spec = obs_spec(policy)
        self.takes_noise = policy.noise_shape(1) is not None
        self.device = next(policy.parameters()).device
        self._sessions: dict[Any, Policy] = {}

    @property
    def n_action_steps(self) -> int:
        return served_chunking(self.policy)[0]

    def reset_session(self, key: Any) -> None:
        """A new episode for `key`: a per-step policy's chunk queue and windows restart."""
        if key in self._sessions:
            self._sessions[key].reset()

    def end_session(self, key: Any) -> None:
        self._sessions.pop(key, None)

    def end_all_sessions(self) -> None:
        self._sessions.clear()

    def window(self, request: Any, history: ObsWindow[np.ndarray]) -> dict[str, np.ndarray]:
        """A decoded request -> the observation window (n_obs_steps, *shape) per key; bad input raises WireError.

        One-step observations go through `history` (this connection's last n_obs_steps, padded at the start by
        repeating the first, like the training sampler); full windows are used as they are.
        """
        if not isinstance(request, dict):
            raise wire.WireError("bad_request", f"a request must be a map of observation arrays, got {type(request).__name__}")
        if request.get("reset") is True:
            history.clear()
        steps = self.config.n_obs_steps
        step_obs, windows = {}, {}
        for key, spec in self.spec.items():
            if key not in request:
                raise wire.WireError("missing_key", f"observation {key!r} is missing; this policy needs {sorted(self.spec)}")
            value = request[key]
            if not isinstance(value, np.ndarray):
                raise wire.WireError("bad_type", f"observation {key!r} must be a numpy array, got {type(value).__name__}")
            shape = tuple(spec["shape"])
            if spec["dtype"] == "uint8":
                if value.dtype != np.uint8:
                    raise wire.WireError("bad_dtype", f"observation {key!r} must be uint8 (an HxWxC image), got {value.dtype}")
            elif value.dtype.kind not in "iuf":
                raise wire.WireError("bad_dtype", f"observation {key!r} must be numeric, got {value.dtype}")
            elif not np.isfinite(value).all():
                raise wire.WireError("bad_value", f"observation {key!r} contains NaN or inf")
            if value.shape == shape:
                step_obs[key] = value
            elif value.shape == (steps, *shape):
                windows[key] = value
            else:
                raise wire.WireError("bad_shape", f"observation {key!r} has shape {list(value.shape)}, expected {list(shape)} (one step) or {[steps, *shape]} (a window)")
        if step_obs and windows:
            raise wire.WireError("bad_shape", f"send every observation as one step or every one as a window; got steps {sorted(step_obs)} and windows {sorted(windows)}")
        as_model = lambda k, v: v.astype(np.float32) if self.spec[k]["dtype"] == "float32" else v.copy()
        if windows:
            return {k: as_model(k, v) for k, v in windows.items()}
        step_obs = {k: as_model(k, v) for k, v in step_obs.items()}
        history.push(step_obs)
        return history.stacked(np.stack, self.spec)

    def noise_seed(self, request: dict) -> int | None:
        seed = request.get("noise_seed")
        if seed is None:
            return None
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise wire.WireError("bad_request", f"noise_seed must be a non-negative int, got {seed!r}")
        if not self.takes_noise:
            raise wire.WireError("bad_request", f"noise_seed is not supported by a {self.policy.policy_type} policy")
        return seed

    @torch.no_grad()
    def infer_batch(self, windows: list[dict[str, np.ndarray]], seeds: list[int | None] | None = None, sessions: list[Any] | None = None) -> np.ndarray:
        """Windows in env units -> (B, actions_per_reply, action_dim) float32 actions from the current step on.

        `sessions` (per-step policies only, one key per window): whose episode state each request continues."""
        seeds = seeds or [None] * len(windows)
        if self.policy.acts_per_step:
            if sessions is None or len(sessions) != len(windows):
                raise ValueError("a per-step policy needs one session key per request")
            return np.stack([self._step(window, seed, key) for window, seed, key in zip(windows, seeds, sessions)])
        obs = {k: torch.from_numpy(np.stack([w[k] for w in windows])).to(self.device) for k in self.spec}
        noise = None
        if any(seed is not None for seed in seeds):
            shape = self.policy.noise_shape(1)[1:]
            noise = torch.stack([
                torch.randn(shape, generator=torch.Generator().manual_seed(seed)) if seed is not None else torch.randn(shape) for seed in seeds
            ]).to(self.device)
        chunk = self.policy.predict_action_chunk(obs, noise=noise)
        return chunk[:, self.config.n_obs_steps - 1 :].float().cpu().numpy()

    def _step(self, window: dict[str, np.ndarray], seed: int | None, key: Any) -> np.ndarray:
        """One per-step action (1, action_dim) for session `key` from the newest observation of `window`."""
        if key not in self._sessions:
            self._sessions[key] = self.policy.fork()
        obs = {k: torch.from_numpy(window[k][-1:]).to(self.device) for k in self.spec}
        if seed is None:
            action = self._sessions[key].select_action(obs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                action = self._sessions[key].select_action(obs)
        return action.float().cpu().numpy()


class PolicyServer:
    """Serves one loaded policy. Use `serve_forever()`, `start()` inside an event loop, or `ServerThread`."""

    def __init__(self, policy: Policy, metadata: dict[str, Any], options: ServerOptions = ServerOptions()) -> None:
        self.runner = PolicyRunner(policy)
        self.options = options
        self.max_message_bytes = options.max_message_bytes or request_limit_bytes(self.runner.spec, self.runner.config.n_obs_steps)
        self.metadata = {**metadata, "max_message_bytes": self.max_message_bytes}
        self._metadata_frame = wire.pack(self.metadata)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._queue: asyncio.Queue[_Pending] | None = None
        self.stats = {"requests": 0, "errors": 0, "batches": 0, "connections": 0}

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.options.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # the client went away
            if not batch:
                continue
            started = time.perf_counter()
            try:
                actions = await loop.run_in_executor(self._executor, self.runner.infer_batch, [p.window for p in batch], [p.noise_seed for p in batch], [p.session for p in batch])
            except Exception as e:  # noqa: BLE001  (a failing forward pass must not take the server down)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            infer_ms = 1000 * (time.perf_counter() - started)
            self.stats["batches"] += 1
            for i, p in enumerate(batch):
                if not p.future.done():
                    p.future.set_result((actions[i], infer_ms, 1000 * (started - p.queued_at), len(batch)))

    # ---- connections ------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if self.options.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.options.token}".encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def _error(self, ws: ServerConnection, code: str, message: str, exc: BaseException | None = None) -> None:
        self.stats["errors"] += 1
        tb = "".join(traceback.format_exception(exc)) if (exc is not None and self.options.debug) else None
        await ws.send(wire.error_frame(code, message, tb))

    async def _handle(self, ws: ServerConnection) -> None:
        assert self._queue is not None
        self.stats["connections"] += 1
        spec, history = self.runner.spec, ObsWindow(self.runner.config.n_obs_steps)
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                received = time.perf_counter()
                self.stats["requests"] += 1
                try:
                    request = wire.unpack(message, self.max_message_bytes)
                    if isinstance(request, dict) and request.get("reset") is True:
                        self.runner.reset_session(ws)
                        if not any(k in request for k in spec):
                            history.clear()
                            await ws.send(wire.pack({"reset": True}))
                            continue
                    window = self.runner.window(request, history)
                    seed = self.runner.noise_seed(request)
                except wire.WireError as e:
                    await self._error(ws, e.code, str(e), e)
                    continue
                future = asyncio.get_running_loop().create_future()
                await self._queue.put(_Pending(window, seed, ws, future))
                try:
                    actions, infer_ms, queue_ms, batch_size = await future
                except Exception as e:
                    log.exception("inference failed")
                    await self._error(ws, "inference_failed", f"inference failed: {type(e).__name__}", e)
                    continue
                reply = {
                    "actions": actions, "n_action_steps": self.runner.n_action_steps, "timestamp": request.get("timestamp"),
                    "server_timing": {"infer_ms": infer_ms, "queue_ms": queue_ms, "total_ms": 1000 * (time.perf_counter() - received), "batch_size": batch_size},
                }
                await ws.send(wire.pack(reply))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.runner.end_session(ws)

    async def start(self) -> websockets.asyncio.server.Server:
        """Start serving on the running loop; returns the websockets server (its sockets tell the bound port)."""
        self._queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop())
        return await serve(
            self._handle, self.options.host, self.options.port, process_request=self._process_request,
            max_size=self.max_message_bytes, compression=None, ping_interval=20, ping_timeout=60,
        )

    async def stop_batcher(self) -> None:
        self._batcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._batcher

    def close(self) -> None:
        """Stop the inference thread (after the websocket server and the batcher have stopped)."""
        self._executor.shutdown(wait=True)

    async def serve_forever(self) -> None:
        server = await self.start()
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("serving %s on ws://%s:%d (auth %s)", self.metadata["policy_type"], host, port, "on" if self.options.token else "off")
            print(f"serving {self.metadata['policy_type']} policy on ws://{host}:{port}  (GET /healthz; auth {'on' if self.options.token else 'off'})", flush=True)
        await server.serve_forever()


def load_for_serving(checkpoint: Path, device: str = "cpu", env: str | None = None, fps: float | None = None, compile: bool = True) -> tuple[Policy, dict[str, Any]]:
    """Load a checkpoint (or run dir) and build the metadata sent on connect.

    `compile`: sample through the same TorchScript graph as `eval.py` (its default), so what is served is what was evaluated."""
    from core.checkpoint import env_of_checkpoint, resolve_checkpoint
    from envs.make import env_properties
    from policies.diffusion.compile import compile_sampling

    ckpt = resolve_checkpoint(Path(checkpoint))
    policy = Policy.from_pretrained(ckpt, map_location=device)
    policy.check_ready()
    inference = compile_sampling(policy) if compile else "eager (--no-compile)"
    env = env or env_of_checkpoint(ckpt)
    props = env_properties(env) if env else {}
    c = policy.config
    low, high = policy.action_bounds() or (props.get("action_low"), props.get("action_high"))
    metadata = {
        "server": "chunkbot", "protocol_version": PROTOCOL_VERSION, "policy_type": policy.policy_type,
        "checkpoint": str(ckpt), "checkpoint_sha256": policy.fingerprint(), "env": env,
        "obs_spec": obs_spec(policy),
        "action_spec": {"key": c.action_key, "dim": int(c.action_dim), "low": low, "high": high},
        "fps": fps if fps is not None else props.get("fps"),
        "n_obs_steps": c.n_obs_steps, "horizon": c.horizon, "n_action_steps": served_chunking(policy)[0],
        "actions_per_reply": served_chunking(policy)[1], "acts_per_step": policy.acts_per_step, "inference": inference,
    }
    return policy, metadata


class ServerThread:
    """Run a PolicyServer on its own event loop in a background thread (tests, benches, sim robots).

        with ServerThread(PolicyServer(policy, metadata, ServerOptions(port=0))) as running:
            client = PolicyClient(running.uri)
    """

    def __init__(self, server: PolicyServer) -> None:
        import threading

        self.server = server
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-server", daemon=True)
        self.port: int | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._ws_server = await self.server.start()
            self.port = self._ws_server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._ws_server.wait_closed()
            await self.server.stop_batcher()

        self._loop.run_until_complete(main())
        self._loop.close()

    @property
    def uri(self) -> str:
        return f"ws://{self.server.options.host}:{self.port}"

    def __enter__(self) -> ServerThread:  # noqa: PYI034
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("policy server did not start within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._ws_server.close)
        self._thread.join(timeout=10)
        self.server.close()
