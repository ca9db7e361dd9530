"""Robot-side chunk execution: time-stamped actions, latency-aware prefetching, stitching and safety.

Needs only numpy and core/window.py. Time is counted in control ticks (1 / fps): an observation taken at tick k yields a
chunk whose action i is meant for tick k + i. When the chunk arrives at tick k + L (L = latency), its
first L actions are stale and dropped: the arm has moved on and must not replay the past.

    executor = ChunkExecutor(ExecutorConfig.from_metadata(client.metadata))
    run_realtime(robot, client, executor, duration_s=30)       # a real arm (any `Robot`)
    run_simulated(env, endpoint, executor, latency_ticks=8)     # the same logic against a sim clock

Modes:
- prefetch (default): keeps one request in flight so the next chunk lands when the current one has
  executed `n_action_steps`: it asks `measured latency + margin` ticks before that point.
- sync: what most stacks do. Ask when the chunk is used up, hold while waiting, then execute the new
  chunk from its first action (no time alignment): the arm stalls for the whole latency every chunk.
Stitching where chunks overlap: `latest` (newest chunk wins), `blend` (linear crossfade over the first
`blend_steps` ticks of the new chunk), `ensemble` (ACT's temporal ensembling: exponentially weighted mean
over every chunk covering the tick, older chunks weighted more).
Safety (on by default): clip to the action bounds, cap the per-step change of policy actions, and a
watchdog that sends the hold action whenever no fresh action covers the current tick.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from core.window import ObsWindow


class Robot(Protocol):
    """What the executor needs from hardware (or a simulator)."""

    def get_observation(self) -> dict[str, np.ndarray]: ...

    def send_action(self, action: np.ndarray) -> None: ...


class InferenceClient(Protocol):
    """`deploy.client.PolicyClient`, `openpi_client.WebsocketClientPolicy`, or an in-process endpoint."""

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SafetyLimits:
    low: tuple[float, ...] | None = None
    """Per-dimension lower bound; actions are clipped to it."""
    high: tuple[float, ...] | None = None
    """Per-dimension upper bound."""
    max_delta: float | tuple[float, ...] | None = None
    """Largest change of a policy action from the previous command, per dimension and tick (None: no cap)."""
    hold: Literal["last", "zero"] = "last"
    """Watchdog action: `last` repeats the last command (position control holds still), `zero` sends zeros
    (delta/velocity control holds still)."""
    hold_keep_dims: tuple[int, ...] = ()
    """With hold=zero, dimensions kept from the last command (e.g. the gripper)."""


@dataclass(frozen=True)
class ExecutorConfig:
    fps: float
    """Control rate of the robot loop."""
    n_obs_steps: int = 2
    """Observation window the policy reads (the executor sends the last n_obs_steps ticks)."""
    n_action_steps: int = 8
    """Actions of each chunk executed before the next chunk should take over."""
    action_dim: int | None = None
    mode: Literal["prefetch", "sync"] = "prefetch"
    stitch: Literal["latest", "blend", "ensemble"] = "latest"
    blend_steps: int = 4
    """Crossfade length of `blend`, in ticks."""
    ensemble_decay: float = 0.01
    """`ensemble` weight exp(-decay * i), i = 0 for the oldest chunk covering the tick (ACT's m)."""
    prefetch_margin_ticks: int = 1
    """Ask this many ticks earlier than the measured latency alone suggests."""
    initial_latency_s: float = 0.0
    """Latency assumed before the first reply has been measured."""
    max_in_flight: int = 2
    """Most unanswered requests in prefetch mode (sync mode: 1)."""
    safety: SafetyLimits = field(default_factory=SafetyLimits)
    log_path: Path | None = None
    """JSONL file that receives every command (tick, time, action, source, chunk)."""

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], **overrides: Any) -> ExecutorConfig:
        """Executor settings from the server's metadata: fps, chunking and action bounds."""
        spec = metadata["action_spec"]
        safety = overrides.pop("safety", None) or SafetyLimits(
            low=tuple(spec["low"]) if spec.get("low") else None, high=tuple(spec["high"]) if spec.get("high") else None
        )
        fields = {
            "fps": float(metadata["fps"]), "n_obs_steps": int(metadata["n_obs_steps"]), "n_action_steps": int(metadata["n_action_steps"]),
            "action_dim": int(spec["dim"]), "safety": safety,
        }
        return cls(**(fields | overrides))


@dataclass
class _Chunk:
    chunk_id: int
    start_tick: int  # tick of actions[0]
    arrival_tick: int
    actions: np.ndarray

    def covers(self, tick: int) -> bool:
        return self.start_tick <= tick < self.start_tick + len(self.actions)


class ChunkExecutor:
    """Clock-agnostic core: feed it observations, replies and ticks; it says when to ask and what to send."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        s = config.safety
        self._low = None if s.low is None else np.asarray(s.low, dtype=np.float64)
        self._high = None if s.high is None else np.asarray(s.high, dtype=np.float64)
        self._log_file = None if config.log_path is None else open(config.log_path, "a")  # noqa: SIM115
        self.log: deque[dict[str, Any]] = deque(maxlen=100_000)
        self.reset()

    def reset(self) -> None:
        """Start of an episode: forget observations, chunks, the last command and pending requests."""
        self._obs: ObsWindow[np.ndarray] = ObsWindow(self.config.n_obs_steps)
        self._chunks: deque[_Chunk] = deque(maxlen=16)
        self._next_id = 0
        self._in_flight: list[int] = []  # obs ticks of requests not answered yet
        self._last_request_tick: int | None = None
        self._reply_len: int | None = None
        self._latency_ticks: deque[int] = deque(maxlen=8)
        self.last_action: np.ndarray | None = None
        self.counts = {"chunk": 0, "blend": 0, "ensemble": 0, "hold": 0, "stale_dropped": 0, "requests": 0, "clipped": 0, "rate_limited": 0, "late_chunks": 0}

    # ---- observations and requests ---------------------------------------------------------------
    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Record this tick's observation (every tick, so the window is consecutive like in training)."""
        self._obs.push(obs)

    def window(self) -> dict[str, np.ndarray]:
        """The request body: each key stacked over the last n_obs_steps ticks."""
        return self._obs.stacked(np.stack)

    @property
    def latency_ticks(self) -> int:
        """Worst of the last 8 measured round trips (ticks), or the configured guess before any."""
        if self._latency_ticks:
            return max(self._latency_ticks)
        return math.ceil(self.config.initial_latency_s * self.config.fps)

    def wants_request(self, tick: int) -> bool:
        """Whether to send `window()` now.

        sync: when the current chunk's n_action_steps are used up and nothing is in flight.
        prefetch: every `period` ticks, so that a chunk arrives before the previous one runs out:
        period = min(n_action_steps, actions per reply - measured latency - margin), at least 1. With no
        latency this is exactly `select_action`'s replanning; with latency, up to `max_in_flight` requests
        overlap (simulated clocks and `run_realtime` with one client per slot).
        """
        c = self.config
        sync = self.acting_sync
        if len(self._in_flight) >= (1 if sync else c.max_in_flight):
            return False
        if self._last_request_tick is None:
            return True
        if sync:
            newest = self._chunks[-1] if self._chunks else None
            return newest is not None and tick >= newest.start_tick + len(newest.actions)
        return tick >= self._last_request_tick + self.request_period

    @property
    def acting_sync(self) -> bool:
        """Sync mode, or prefetch once the measured latency is as long as a whole reply: then every action
        would arrive stale, and acting on old plans while the arm keeps moving is worse than holding for a
        fresh one (measured: bench/deploy.py, 200 ms)."""
        return self.config.mode == "sync" or (self._reply_len is not None and self.latency_ticks >= self._reply_len)

    @property
    def request_period(self) -> int:
        c = self.config
        per_reply = self._reply_len or c.n_action_steps
        margin = c.prefetch_margin_ticks if self.latency_ticks > 0 else 0
        return max(1, min(c.n_action_steps, per_reply - self.latency_ticks - margin))

    def request_sent(self, tick: int) -> None:
        self._in_flight.append(tick)
        self._last_request_tick = tick
        self.counts["requests"] += 1

    def request_failed(self, obs_tick: int) -> None:
        self._in_flight.remove(obs_tick)

    def add_reply(self, actions: np.ndarray, obs_tick: int, arrival_tick: int) -> None:
        """A chunk computed from the observation window ending at `obs_tick` arrived at `arrival_tick`."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or (self.config.action_dim is not None and actions.shape[1] != self.config.action_dim):
            raise ValueError(f"reply actions have shape {actions.shape}, expected (n, {self.config.action_dim})")
        if not np.isfinite(actions).all():
            raise ValueError("reply actions contain NaN or inf")
        if obs_tick in self._in_flight:
            self._in_flight.remove(obs_tick)
        self._reply_len = len(actions)
        self._latency_ticks.append(arrival_tick - obs_tick)
        late = arrival_tick - obs_tick >= len(actions)  # every action is already in the past
        if self.config.mode == "sync" or late:  # no time alignment: the chunk starts when it arrives
            start = arrival_tick
            actions = actions[: self.config.n_action_steps]
            self.counts["late_chunks"] += int(late and self.config.mode != "sync")
            if late:  # from now on ask, hold and execute (acting_sync) until latency drops
                self._chunks.clear()
        else:
            start = obs_tick
            self.counts["stale_dropped"] += max(0, min(arrival_tick - obs_tick, len(actions)))
        self._chunks.append(_Chunk(self._next_id, start, arrival_tick, actions))
        self._next_id += 1

    # ---- acting ----------------------------------------------------------------------------------
    def act(self, tick: int, now: float | None = None) -> tuple[np.ndarray, str]:
        """The safe command for `tick` and where it came from (chunk, blend, ensemble or hold)."""
        covering = [c for c in self._chunks if c.covers(tick) and c.arrival_tick <= tick]
        if not covering:
            action, source, chunk_id = self._hold_action(), "hold", None
        else:
            newest = covering[-1]
            action, source, chunk_id = newest.actions[tick - newest.start_tick], "chunk", newest.chunk_id
            if self.config.stitch == "ensemble" and len(covering) > 1:
                weights = np.exp(-self.config.ensemble_decay * np.arange(len(covering)))
                stacked = np.stack([c.actions[tick - c.start_tick] for c in covering])
                action, source = (weights[:, None] * stacked).sum(0) / weights.sum(), "ensemble"
            elif self.config.stitch == "blend" and len(covering) > 1:
                into = tick - max(newest.start_tick, newest.arrival_tick)
                if into < self.config.blend_steps:
                    alpha = (into + 1) / (self.config.blend_steps + 1)
                    previous = covering[-2]
                    action = (1 - alpha) * previous.actions[tick - previous.start_tick] + alpha * action
                    source = "blend"
            action = self._rate_limit(action)
        action = self._clip(action)
        self.counts[source] += 1
        self.last_action = action
        self._record(tick, now, action, source, chunk_id)
        return action.astype(np.float32), source

    def _hold_action(self) -> np.ndarray:
        s = self.config.safety
        dim = self.config.action_dim or (len(self.last_action) if self.last_action is not None else None)
        if dim is None:
            raise RuntimeError("no action yet and action_dim unknown: set ExecutorConfig.action_dim")
        if self.last_action is None:
            return np.zeros(dim) if s.hold == "zero" or self._low is None else np.clip(np.zeros(dim), self._low, self._high)
        if s.hold == "last":
            return self.last_action.copy()
        held = np.zeros(dim)
        keep = list(s.hold_keep_dims)
        held[keep] = self.last_action[keep]
        return held

    def _rate_limit(self, action: np.ndarray) -> np.ndarray:
        cap = self.config.safety.max_delta
        if cap is None or self.last_action is None:
            return action
        limited = self.last_action + np.clip(action - self.last_action, -np.asarray(cap), np.asarray(cap))
        if not np.array_equal(limited, action):
            self.counts["rate_limited"] += 1
        return limited

    def _clip(self, action: np.ndarray) -> np.ndarray:
        if self._low is None and self._high is None:
            return action
        clipped = np.clip(action, self._low, self._high)
        if not np.array_equal(clipped, action):
            self.counts["clipped"] += 1
        return clipped

    def _record(self, tick: int, now: float | None, action: np.ndarray, source: str, chunk_id: int | None) -> None:
        entry = {"tick": tick, "time": now, "action": [float(a) for a in action], "source": source, "chunk": chunk_id}
        self.log.append(entry)
        if self._log_file is not None:
            self._log_file.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()


def simulated_tick(
    executors: list[ChunkExecutor | None], observations: list[dict[str, np.ndarray] | None], infer_windows: Any,
    latency_ticks: int, tick: int, pending: list[deque],
) -> list[np.ndarray | None]:
    """One tick of several robots on a simulated clock; `None` marks a finished robot.

    Requests made at this tick are answered at once by `infer_windows(windows, robot indices) -> (B, n, dim)`
    (one batched forward pass; the indices say whose episode each window continues) but delivered
    `latency_ticks` later; meanwhile the robots keep stepping on what
    they have (older actions, or the hold action). Deterministic, and independent of how fast inference is.
    """
    def deliver(i: int) -> None:
        while pending[i] and pending[i][0][0] <= tick:
            arrival, obs_tick, actions = pending[i].popleft()
            executors[i].add_reply(actions, obs_tick, arrival)

    asking = []
    for i, (executor, obs) in enumerate(zip(executors, observations)):
        if executor is not None:
            deliver(i)
            executor.observe(obs)
            if executor.wants_request(tick):
                asking.append(i)
    if asking:
        replies = infer_windows([executors[i].window() for i in asking], asking)
        for i, actions in zip(asking, replies):
            executors[i].request_sent(tick)
            pending[i].append((tick + latency_ticks, tick, actions))
    commands: list[np.ndarray | None] = []
    for i, executor in enumerate(executors):
        if executor is None:
            commands.append(None)
            continue
        deliver(i)  # zero latency: this tick's own reply
        commands.append(executor.act(tick)[0])
    return commands


def run_simulated(robot: Robot, client: InferenceClient, executor: ChunkExecutor, latency_ticks: int, max_ticks: int,
                  done: Any = None) -> int:
    """Drive one `robot` on a simulated clock (see `simulated_tick`); returns the ticks run.

    `done()`: checked after every tick; True ends the run early (e.g. the episode terminated).
    """
    pending: list[deque] = [deque()]
    infer = lambda windows, robots: [np.asarray(client.infer(w)["actions"]) for w in windows]  # noqa: E731
    for tick in range(max_ticks):
        (action,) = simulated_tick([executor], [robot.get_observation()], infer, latency_ticks, tick, pending)
        robot.send_action(action)
        if done is not None and done():
            return tick + 1
    return max_ticks


def run_realtime(robot: Robot, clients: list[InferenceClient], executor: ChunkExecutor, duration_s: float,
                 clock: Any = time.monotonic, sleep: Any = time.sleep) -> dict[str, Any]:
    """Drive a real robot at `executor.config.fps` for `duration_s`.

    Requests run on background threads, one per client (a connection answers one request at a time, so give
    `max_in_flight` clients to let requests overlap). The control loop never waits for the network: it
    sends the executor's command every tick, the watchdog's hold when nothing fresh covers the tick. A failed
    request is recorded and retried on a later tick.
    """
    fps = executor.config.fps
    replies: deque[tuple[int, np.ndarray | None, str | None, InferenceClient]] = deque()
    idle = list(clients)
    lock = threading.Lock()
    workers: list[threading.Thread] = []

    def request(client: InferenceClient, window: dict[str, np.ndarray], obs_tick: int) -> None:
        try:
            actions, error = np.asarray(client.infer(window)["actions"]), None
        except Exception as e:  # noqa: BLE001  (the loop must keep holding the arm whatever the network does)
            actions, error = None, f"{type(e).__name__}: {e}"
        with lock:
            replies.append((obs_tick, actions, error, client))

    start = clock()
    errors: list[str] = []
    tick = late_ticks = 0
    while (now := clock()) - start < duration_s:
        tick = int((now - start) * fps)
        with lock:
            arrived = list(replies)
            replies.clear()
        for obs_tick, actions, error, client in arrived:
            idle.append(client)
            if actions is None:
                errors.append(error or "unknown")
                executor.request_failed(obs_tick)
            else:
                executor.add_reply(actions, obs_tick, tick)
        executor.observe(robot.get_observation())
        if idle and executor.wants_request(tick):
            executor.request_sent(tick)
            worker = threading.Thread(target=request, args=(idle.pop(), executor.window(), tick), daemon=True)
            worker.start()
            workers.append(worker)
        action, _ = executor.act(tick, now)
        robot.send_action(action)
        remaining = start + (tick + 1) / fps - clock()
        if remaining > 0:
            sleep(remaining)
        else:
            late_ticks += 1
    for worker in workers:
        worker.join(timeout=5)
    return {"ticks": tick + 1, "late_ticks": late_ticks, "errors": errors, **executor.counts}
