"""Deployment: a real websocket server on loopback, the openpi-client package, the executor and bundles."""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import threading
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from bench.deploy import hostile_client, malformed_messages
from deploy import wire
from deploy.client import PolicyClient, PolicyServerError
from deploy.executor import (
    ChunkExecutor,
    ExecutorConfig,
    SafetyLimits,
    run_realtime,
    run_simulated,
)
from deploy.server import (
    PolicyRunner,
    PolicyServer,
    ServerOptions,
    ServerThread,
    load_for_serving,
    request_limit_bytes,
)
from policies.base import Policy
from policies.diffusion.compile import compile_sampling


@pytest.fixture(scope="module")
def served(tiny_dp_checkpoint):
    policy, metadata = load_for_serving(tiny_dp_checkpoint)
    with ServerThread(PolicyServer(policy, metadata, ServerOptions(port=0))) as running:  # the derived frame limit
        yield running


def state_obs(seed: int, steps: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (39,) if steps is None else (steps, 39)
    return {"state": rng.normal(size=shape).astype(np.float32)}


def test_wire_is_openpi_msgpack_numpy_and_strict():
    from openpi_client import msgpack_numpy

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.uint8), "s": np.float64(2.5)}
    for decoded in (msgpack_numpy.unpackb(wire.pack(arrays)), wire.unpack(msgpack_numpy.packb(arrays))):
        assert decoded["a"].dtype == np.float32 and np.array_equal(decoded["a"], arrays["a"])
        assert np.array_equal(decoded["b"], arrays["b"]) and decoded["s"] == 2.5
    with pytest.raises(TypeError):
        wire.pack({"x": np.array([object()])})
    short = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}})
    with pytest.raises(wire.WireError, match="needs 8 bytes, got 7"):
        wire.unpack(short)
    objects = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}})
    with pytest.raises(wire.WireError, match="not allowed"):
        wire.unpack(objects)
    with pytest.raises(wire.WireError, match="exceeds the limit"):
        wire.unpack(b"\0" * 100, max_bytes=10)


def test_server_binds_localhost_by_default_and_reports_health(served):
    assert ServerOptions().host == "127.0.0.1"
    from deploy.serve import ServeConfig

    assert ServeConfig.__dataclass_fields__["host"].default == "127.0.0.1"
    assert served.server.options.host == "127.0.0.1" and served.uri.startswith("ws://127.0.0.1:")
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/healthz", timeout=10) as response:
        assert response.status == 200


def test_openpi_client_gets_metadata_and_server_normalized_actions(served, tiny_dp_checkpoint):
    """The unmodified PyPI openpi-client talks to our server; actions equal the policy's own in env units."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy("127.0.0.1", served.port)
    meta = client.get_server_metadata()
    policy = Policy.from_pretrained(tiny_dp_checkpoint)
    assert meta["inference"] == compile_sampling(policy)  # served through the same compiled graph eval.py uses
    assert meta["policy_type"] == "diffusion" and meta["checkpoint_sha256"] == policy.fingerprint()
    assert meta["obs_spec"] == {"state": {"shape": [39], "dtype": "float32"}}
    assert meta["action_spec"]["dim"] == 4 and meta["action_spec"]["low"] == [-1.0] * 4 and meta["fps"] == 80
    assert (meta["n_obs_steps"], meta["horizon"], meta["n_action_steps"]) == (policy.config.n_obs_steps, policy.config.horizon, policy.config.n_action_steps)

    window = state_obs(0, steps=policy.config.n_obs_steps)
    reply = client.infer({**window, "noise_seed": 7})
    noise = torch.randn((policy.config.horizon, 4), generator=torch.Generator().manual_seed(7))[None]
    expected = policy.predict_action_chunk({"state": torch.from_numpy(window["state"])[None]}, noise=noise)[0, policy.config.n_obs_steps - 1 :]
    np.testing.assert_allclose(reply["actions"], expected.numpy(), atol=1e-5)
    assert reply["actions"].shape == (meta["actions_per_reply"], 4)
    with pytest.raises(RuntimeError, match="missing_key"):  # openpi raises on our text error frames
        client.infer({"images": np.zeros(3, np.float32)})
    assert client.infer(window)["actions"].shape == (meta["actions_per_reply"], 4)  # the connection survived


def test_single_steps_build_the_same_window_as_sending_it(served):
    with PolicyClient(served.uri) as client:
        a, b = state_obs(1), state_obs(2)
        client.reset()
        client.infer(a)
        by_steps = client.infer({**b, "noise_seed": 3})["actions"]
        window = client.infer({"state": np.stack([a["state"], b["state"]]), "noise_seed": 3})["actions"]
        np.testing.assert_allclose(by_steps, window, atol=1e-6)
        first = client.infer({**a, "reset": True, "noise_seed": 3})["actions"]  # reset: padded with a itself
        padded = client.infer({"state": np.stack([a["state"], a["state"]]), "noise_seed": 3})["actions"]
        np.testing.assert_allclose(first, padded, atol=1e-6)


def test_wrong_token_is_refused(tiny_dp_checkpoint):
    policy, metadata = load_for_serving(tiny_dp_checkpoint)
    with ServerThread(PolicyServer(policy, metadata, ServerOptions(port=0, token="s3cret"))) as running:
        for headers in (None, {"Authorization": "Api-Key wrong"}):
            with pytest.raises(InvalidStatus) as refused:
                connect(running.uri, additional_headers=headers)
            assert refused.value.response.status_code == 401
        with PolicyClient(running.uri, token="s3cret") as client:
            assert client.infer(state_obs(0))["actions"].shape[1] == 4
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        assert WebsocketClientPolicy("127.0.0.1", running.port, api_key="s3cret").infer(state_obs(0))["actions"].shape[1] == 4


def test_server_survives_10k_malformed_messages_with_structured_errors(served):
    rng = random.Random(0)
    messages = list(malformed_messages(rng, 10_000))
    rss_mid = None
    with PolicyClient(served.uri) as client:
        for i, message in enumerate(messages):
            if i == 2_000:
                rss_mid = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            client._ws.send(message)
            frame = client._ws.recv(timeout=10)
            if isinstance(frame, bytes):  # only a decodable, valid request may succeed; none of these is one
                pytest.fail(f"message {i} was answered with data: {message[:60]!r}")
            error = json.loads(frame)["error"]
            assert error["code"] and error["message"] and "traceback" not in error
        rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert rss_end - rss_mid < 50_000, f"peak RSS grew by {(rss_end - rss_mid) / 1024:.0f} MB over 8k malformed messages"
        assert client.infer(state_obs(0))["actions"].shape[1] == 4  # still serving, same connection
    # an oversize frame: the websocket layer closes that connection (code 1009) before reading it; the server stays up
    with PolicyClient(served.uri) as client:
        client._ws.send(wire.pack({"state": np.zeros(1 << 19, np.float32)}))
        with pytest.raises(ConnectionClosed) as closed:
            client._ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1009
    with PolicyClient(served.uri) as client:
        assert client.infer(state_obs(0))["actions"].shape[1] == 4


def test_frame_limit_follows_the_policy_and_storms_of_large_frames_leave_the_server_answering(served):
    """The default limit is the largest valid request (every key as a full window) plus slack: a valid window
    with small extra fields is answered, 8 MB under an extra key and 20 MiB frames are refused before they are
    read. After storms of them the server answers exactly as before (RSS figures: bench.deploy --parts soak)."""
    limit = served.server.max_message_bytes
    assert limit == request_limit_bytes(served.server.runner.spec, 2) < 1 << 20
    window = {**state_obs(5, steps=2), "noise_seed": 11}
    with PolicyClient(served.uri) as client:
        assert client.metadata["max_message_bytes"] == limit
        before = client.infer(window)["actions"]
        assert client.infer({**window, "state": window["state"].astype(np.float64), "prompt": "pick", "timestamp": 1.0})["actions"].shape == before.shape
    for storm in range(2):
        counts = hostile_client(served.uri, 60, large_every=10, seed=storm)
        assert counts == {"error_reply": 48, "answered": 0, "closed": 12}, counts  # 6 frames of 20 MiB, 6 of 8 MB
    with PolicyClient(served.uri) as client:
        np.testing.assert_array_equal(client.infer(window)["actions"], before)  # same machine, same run: exact


def test_pin_mmap_threshold_on_glibc():
    """In a subprocess: pinning is process-wide, and the test process should keep glibc's default."""
    import platform

    code = "from deploy.server import pin_mmap_threshold; print(pin_mmap_threshold())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]
    assert out == str(platform.libc_ver()[0] == "glibc")


def test_clear_error_codes(served):
    with PolicyClient(served.uri) as client:
        for request, code in [
            ({"state": np.zeros(5, np.float32)}, "bad_shape"),
            ({}, "missing_key"),
            ({"state": np.zeros(39, np.complex64)}, "bad_array"),
            ({"state": np.zeros(39, bool)}, "bad_dtype"),
        ]:
            try:
                client.infer(request)
            except TypeError:  # our own packer refuses complex arrays before sending
                assert code == "bad_array"
                continue
            except PolicyServerError as e:
                assert e.code == code, str(e)
                continue
            pytest.fail(f"{request} was accepted")


def test_concurrent_clients_get_their_own_answers(served, tiny_dp_checkpoint):
    runner = PolicyRunner(Policy.from_pretrained(tiny_dp_checkpoint))
    n_clients, n_requests = 8, 4
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(c: int) -> None:
        try:
            with PolicyClient(served.uri) as client:
                for r in range(n_requests):
                    results[c, r] = client.infer({**state_obs(100 * c + r, steps=2), "noise_seed": 100 * c + r})["actions"]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for (c, r), actions in results.items():
        expected = runner.infer_batch([state_obs(100 * c + r, steps=2)], [100 * c + r])[0]
        np.testing.assert_allclose(actions, expected, atol=1e-4, err_msg=f"client {c} request {r}")
    assert len(results) == n_clients * n_requests


# ---- executor ------------------------------------------------------------------------------------
def ramp(n: int, dim: int = 2, offset: float = 0.0) -> np.ndarray:
    return np.stack([np.full(dim, offset + i) for i in range(n)]) / 100


def test_stale_actions_are_dropped_and_the_rest_is_time_aligned():
    ex = ChunkExecutor(ExecutorConfig(fps=10, n_obs_steps=1, n_action_steps=4, action_dim=2))
    assert ex.act(0)[1] == "hold"  # nothing yet: the watchdog holds
    ex.add_reply(ramp(10), obs_tick=0, arrival_tick=3)
    assert ex.counts["stale_dropped"] == 3
    for tick in (3, 4, 9):
        action, source = ex.act(tick)
        assert source == "chunk" and np.allclose(action, tick / 100)  # action i of the chunk belongs to tick obs + i
    assert ex.act(10)[1] == "hold"  # past the chunk's end


def test_sync_mode_holds_then_executes_from_the_first_action():
    ex = ChunkExecutor(ExecutorConfig(fps=10, n_obs_steps=1, n_action_steps=4, action_dim=2, mode="sync"))
    assert ex.wants_request(0)
    ex.request_sent(0)
    assert not ex.wants_request(1)
    ex.add_reply(ramp(10), obs_tick=0, arrival_tick=3)
    assert np.allclose(ex.act(3)[0], 0.0) and np.allclose(ex.act(6)[0], 0.03)
    assert not ex.wants_request(6) and ex.wants_request(7)


def test_prefetch_period_follows_measured_latency():
    ex = ChunkExecutor(ExecutorConfig(fps=10, n_obs_steps=1, n_action_steps=8, action_dim=2, prefetch_margin_ticks=1))
    assert ex.request_period == 8  # no latency known: replan like select_action
    ex.request_sent(0)
    ex.add_reply(ramp(15), obs_tick=0, arrival_tick=5)
    assert ex.latency_ticks == 5 and ex.request_period == 8  # min(n_action_steps, 15 - 5 - 1)
    ex.add_reply(ramp(15), obs_tick=0, arrival_tick=10)
    assert ex.latency_ticks == 10 and ex.request_period == 15 - 10 - 1  # the worst recent latency counts
    assert not ex.wants_request(3) and ex.wants_request(4)
    ex.add_reply(ramp(15), obs_tick=20, arrival_tick=40)  # all stale: executed from arrival, as sync would
    assert ex.counts["late_chunks"] == 1 and ex.act(40)[1] == "chunk"
    assert ex.acting_sync and not ex.wants_request(41)  # latency >= a whole reply: ask, hold, execute like sync


def test_blend_and_ensemble_stitching():
    base = {"fps": 10, "n_obs_steps": 1, "n_action_steps": 4, "action_dim": 1}
    blend = ChunkExecutor(ExecutorConfig(**base, stitch="blend", blend_steps=3))
    blend.add_reply(np.zeros((10, 1)), 0, 0)
    blend.add_reply(np.ones((10, 1)), 2, 4)
    assert [round(float(blend.act(t)[0][0]), 3) for t in (4, 5, 6, 7)] == [0.25, 0.5, 0.75, 1.0]
    ensemble = ChunkExecutor(ExecutorConfig(**base, stitch="ensemble", ensemble_decay=np.log(3)))
    ensemble.add_reply(np.zeros((10, 1)), 0, 0)
    ensemble.add_reply(np.ones((10, 1)), 2, 2)
    assert np.isclose(ensemble.act(3)[0][0], (0 * 1 + 1 / 3) / (1 + 1 / 3))  # older chunk weighted exp(0), newer exp(-m)


def test_safety_clips_caps_changes_and_holds():
    safety = SafetyLimits(low=(-1.0, -1.0), high=(1.0, 1.0), max_delta=0.1, hold="zero", hold_keep_dims=(1,))
    ex = ChunkExecutor(ExecutorConfig(fps=10, n_obs_steps=1, n_action_steps=4, action_dim=2, safety=safety))
    ex.add_reply(np.array([[0.0, 0.5], [5.0, 0.5], [5.0, -5.0]]), 0, 0)
    assert np.allclose(ex.act(0)[0], [0.0, 0.5])
    assert np.allclose(ex.act(1)[0], [0.1, 0.5])  # change capped at 0.1 per tick
    assert np.allclose(ex.act(2)[0], [0.2, 0.4])
    action, source = ex.act(3)  # no chunk covers tick 3: zero motion, gripper kept
    assert source == "hold" and np.allclose(action, [0.0, 0.4])
    ex.add_reply(np.array([[9.0, 9.0]] * 3), 4, 4)
    ex2 = ChunkExecutor(ExecutorConfig(fps=10, n_obs_steps=1, n_action_steps=4, action_dim=2, safety=SafetyLimits(low=(-1.0, -1.0), high=(1.0, 1.0))))
    ex2.add_reply(np.array([[9.0, -9.0]]), 0, 0)
    assert np.allclose(ex2.act(0)[0], [1.0, -1.0]) and ex2.counts["clipped"] == 1
    assert [e["source"] for e in ex.log] == ["chunk", "chunk", "chunk", "hold"]


class ScriptedRobot:
    """A Robot over a real Meta-World env (deploy.sim.SimRobot) that also records what it was sent."""

    def __init__(self, seed: int) -> None:
        from deploy.sim import SimRobot
        from envs.make import make_env

        self.sim = SimRobot(make_env("metaworld/push-v3"), seed)
        self.sent: list[np.ndarray] = []

    def get_observation(self) -> dict[str, np.ndarray]:
        return self.sim.get_observation()

    def send_action(self, action: np.ndarray) -> None:
        self.sent.append(action)
        self.sim.send_action(action)


def test_zero_latency_prefetch_reproduces_select_action(tiny_dp_checkpoint):
    policy = Policy.from_pretrained(tiny_dp_checkpoint)
    c = policy.config
    runner = PolicyRunner(policy)

    class Local:
        def infer(self, obs):
            return {"actions": runner.infer_batch([obs])[0]}

    robot = ScriptedRobot(seed=5)
    executor = ChunkExecutor(ExecutorConfig(fps=80, n_obs_steps=c.n_obs_steps, n_action_steps=c.n_action_steps, action_dim=4))
    torch.manual_seed(0)
    run_simulated(robot, Local(), executor, latency_ticks=0, max_ticks=20)
    from envs.make import make_env

    env = make_env("metaworld/push-v3")
    obs, _ = env.reset(seed=5)
    policy.reset()
    torch.manual_seed(0)
    for sent in robot.sent:
        action = policy.select_action({k: torch.from_numpy(v)[None] for k, v in obs.items()})[0].numpy()
        np.testing.assert_allclose(sent, action, atol=1e-6)
        obs, *_ = env.step(action)
    assert executor.counts["hold"] == 0 and executor.counts["requests"] == -(-20 // c.n_action_steps)


def test_realtime_loop_against_the_server(served):
    robot = ScriptedRobot(seed=0)
    with PolicyClient(served.uri) as a, PolicyClient(served.uri) as b:
        executor = ChunkExecutor(ExecutorConfig.from_metadata(a.metadata, fps=20.0))
        summary = run_realtime(robot, [a, b], executor, duration_s=1.5)
    assert not summary["errors"] and summary["requests"] >= 2
    assert summary["chunk"] >= 1 and len(robot.sent) == summary["chunk"] + summary["hold"] + summary["blend"] + summary["ensemble"]
    ticks = [e["tick"] for e in executor.log]
    assert ticks == sorted(ticks) and all(e["time"] is not None for e in executor.log)


def test_eval_with_latency_cli(tiny_dp_checkpoint, tmp_path):
    out = tmp_path / "lat.json"
    cmd = [sys.executable, "eval.py", str(tiny_dp_checkpoint), "--episodes", "2", "--n-envs", "2", "--max-episode-steps", "30", "--latency-ms", "100", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    record = json.loads(out.read_text())
    assert record["latency_ms"] == 100 and record["latency_ticks"] == 8 and record["mode"] == "prefetch"
    assert record["n_episodes"] == 2 and [e["seed"] for e in record["episodes"]] == [100000, 100001]
    assert 0 < record["hold_fraction"] < 1 and record["success_definition"]


# ---- bundles -------------------------------------------------------------------------------------
def test_bundle_loads_with_only_its_own_code(tiny_dp_checkpoint, tmp_path):
    from deploy.export import export_bundle, verify_bundle

    bundle = export_bundle(tiny_dp_checkpoint, tmp_path / "bundle")
    verify_bundle(bundle)
    policy = Policy.from_pretrained(tiny_dp_checkpoint)
    compile_sampling(policy)  # load() in the bundle samples through the compiled graph, as eval.py does
    script = (
        "import sys, json, torch; sys.path.insert(0, sys.argv[1]); from load_policy import load; p = load(); h = int(sys.argv[2]);"
        "assert all(not m.startswith(('envs', 'rl', 'deploy', 'train', 'data.store')) for m in sys.modules), sorted(sys.modules);"
        "g = torch.Generator().manual_seed(0); s = torch.randn(1, 2, 39, generator=g); n = torch.randn(1, h, 4, generator=g);"
        "print(json.dumps([p.fingerprint(), p.predict_action_chunk({'state': s}, noise=n).tolist()]))"
    )
    # -I: isolated mode, so neither the repository nor PYTHONPATH is importable; only the bundle's src/
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(bundle), str(policy.config.horizon)], capture_output=True, text=True, cwd=tmp_path, check=True)
    fingerprint, chunk = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fingerprint == policy.fingerprint()
    g = torch.Generator().manual_seed(0)
    s, n = torch.randn(1, 2, 39, generator=g), torch.randn(1, policy.config.horizon, 4, generator=g)
    np.testing.assert_allclose(np.array(chunk), policy.predict_action_chunk({"state": s}, noise=n).numpy(), atol=1e-6)
    (bundle / "checkpoint" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(Exception, match="does not match manifest"):
        verify_bundle(bundle)
    with pytest.raises(FileExistsError):
        export_bundle(tiny_dp_checkpoint, bundle)
    assert not list(tmp_path.glob(".bundle.*"))  # no temporary leftovers
