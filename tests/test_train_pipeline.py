"""End to end on CPU: collect (fixture) -> train 2 steps -> save -> resume to 4 -> evaluate in real Meta-World."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

import train
from policies import training
from data.store import EpisodeStore, write_store_atomically
from policies.base import Policy

ROOT = Path(__file__).resolve().parents[1]


def run_train(run_dir: Path, dataset: Path, *extra: str) -> dict:
    return train.main(["tiny", "--env", "metaworld/push-v3", "--run-dir", str(run_dir), "--dataset", str(dataset), *extra])


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())]


def test_train_save_resume_matches_uninterrupted_run_and_evaluates(tmp_path, push_demos):
    straight = tmp_path / "straight"
    run_train(straight, push_demos, "--steps", "4", "--eval-episodes", "0")

    resumed = tmp_path / "resumed"
    first = run_train(resumed, push_demos, "--steps", "4", "--stop-at", "2")
    assert Path(first["checkpoint"]).name == "step_0000002" and "eval" not in first
    summary = run_train(resumed, push_demos, "--steps", "4", "--resume")

    assert [s for s, _ in losses(resumed)] == [1, 2, 3, 4]
    assert losses(resumed) == losses(straight)  # bit-identical loss curve across the interruption
    last = resumed / "checkpoints" / "last"
    assert last.resolve().name == "step_0000004"
    a = Policy.from_pretrained(last).state_dict()
    b = Policy.from_pretrained(straight / "checkpoints" / "last").state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)

    ev = summary["eval"]  # one short episode in real Meta-World physics
    assert ev["n_episodes"] == 1 and ev["episodes"][0]["seed"] == 100_000
    assert ev["episodes"][0]["length"] == 16 and len(ev["episodes"][0]["init_state"]) > 0
    assert "success" in ev["success_definition"]
    assert json.loads((resumed / "eval.json").read_text())["step"] == 4


def test_run_dir_is_never_overwritten_and_resume_checks_config(tmp_path, push_demos):
    run_dir = tmp_path / "run"
    run_train(run_dir, push_demos, "--steps", "2", "--eval-episodes", "0")
    with pytest.raises(SystemExit, match="already exists"):
        run_train(run_dir, push_demos, "--steps", "2", "--eval-episodes", "0")
    with pytest.raises(SystemExit, match="lr: run has 0.0003"):
        run_train(run_dir, push_demos, "--steps", "2", "--lr", "1e-3", "--resume")


def test_eval_cli_writes_seeded_json_and_video(tmp_path, push_demos):
    run_dir = tmp_path / "run"
    run_train(run_dir, push_demos, "--steps", "2", "--eval-episodes", "0")
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "eval.py", str(run_dir), "--episodes", "2", "--n-envs", "2", "--max-episode-steps", "8", "--video", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "egl"})
    assert proc.returncode == 0, proc.stderr
    assert "95% CI" in proc.stdout
    result = json.loads(out.read_text())
    assert [e["seed"] for e in result["episodes"]] == [100_000, 100_001]
    assert result["episodes"][0]["init_state"] != result["episodes"][1]["init_state"]  # own seed, own initial state
    assert {"success_rate", "ci95", "n_episodes", "success_definition"} <= set(result)
    assert len(result["videos"]) == 1 and Path(result["videos"][0]).stat().st_size > 1000
    assert result["stages"] == ["near_object", "grasp_success"]
    assert all(set(e["stages_reached"]) <= set(result["stages"]) and e["min_obj_to_target"] > 0 for e in result["episodes"])


def test_kill_during_checkpoint_save_keeps_last_complete(tmp_path, push_demos):
    """SIGKILL the trainer halfway through writing a checkpoint; the previous one must stay loadable."""
    run_dir = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import train, core.io
        real = core.io.atomic_write_bytes
        def dying_write(path, payload):
            if "step_0000004" in str(path) and str(path).endswith("raw_model.safetensors"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(str(path) + ".partial", "wb") as f:  # half of the file is on disk when the kill lands
                    f.write(payload[: len(payload) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, payload)
        core.io.atomic_write_bytes = dying_write
        train.main(["tiny", "--env", "metaworld/push-v3", "--run-dir", {str(run_dir)!r}, "--dataset", {str(push_demos)!r}, "--steps", "4", "--eval-episodes", "0"])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "last").resolve().name == "step_0000002"
    assert not (ckpts / "step_0000004").exists()
    Policy.from_pretrained(ckpts / "last")  # complete and loadable
    summary = run_train(run_dir, push_demos, "--steps", "4", "--eval-episodes", "0", "--resume")
    assert Path(summary["checkpoint"]).name == "step_0000004"
    assert not list(ckpts.glob(".tmp-*"))  # the half-written attempt was cleaned up


def test_truncated_checkpoint_file_fails_resume_loudly(tmp_path, push_demos):
    run_dir = tmp_path / "run"
    run_train(run_dir, push_demos, "--steps", "4", "--stop-at", "2", "--eval-episodes", "0")
    opt = run_dir / "checkpoints" / "last" / "train_state" / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.raises(SystemExit, match="optimizer.safetensors is not a readable safetensors file"):
        run_train(run_dir, push_demos, "--steps", "4", "--eval-episodes", "0", "--resume")


def test_bad_datasets_fail_with_clear_errors(tmp_path, push_demos):
    with pytest.raises(SystemExit, match="no episode store at"):
        run_train(tmp_path / "r1", tmp_path / "missing.zarr")
    corrupt = tmp_path / "corrupt.zarr"
    corrupt.mkdir()
    (corrupt / "zarr.json").write_text("{not json")
    with pytest.raises(SystemExit, match="corrupt.zarr"):
        run_train(tmp_path / "r2", corrupt)
    with pytest.raises(SystemExit, match=r"policy needs keys \['obs'\]"):
        run_train(tmp_path / "r3", push_demos, "--policy.state-keys", "obs")
    with pytest.raises(SystemExit, match=r"policy.action_dim=7 but the store has 4"):
        run_train(tmp_path / "r4", push_demos, "--policy.action-dim", "7")

    # NaN actions written by some other tool: training refuses the store and names key and episode
    nan_store = tmp_path / "nan.zarr"
    src = EpisodeStore.open(push_demos)
    write_store_atomically(nan_store, [src.get_episode(i) for i in range(src.n_episodes)], env_id="metaworld/push-v3", fps=80, source="test")
    actions = zarr.open_array(str(nan_store / "data" / "action"), mode="r+")
    actions[5, 1] = np.nan
    with pytest.raises(SystemExit, match="action.*NaN|NaN.*action"):
        run_train(tmp_path / "r5", nan_store)


def test_unknown_env_lists_close_matches():
    with pytest.raises(ValueError, match="Did you mean: push-v3"):
        training.TrainConfig(env="metaworld/psh-v3")
    with pytest.raises(ValueError, match="<suite>/<task>"):
        training.TrainConfig(env="push-v3")


def test_metaworld_reports_its_stages_and_eval_counts_where_failures_stop():
    """The expert's basketball episode reaches every stage the env declares; failure_stages names the first one missed."""
    from envs.make import env_properties, make_env
    from envs.metaworld import scripted_expert
    from envs.rollout import EpisodeRecord, EvalResult

    stages = env_properties("metaworld/basketball-v3")["stages"]
    assert stages == ("near_object", "grasp_success")
    env = make_env("metaworld/basketball-v3")
    env.reset(seed=0)
    expert = scripted_expert("basketball-v3")
    reached = dict.fromkeys(stages, False)
    for _ in range(200):
        _, _, terminated, _, info = env.step(expert.get_action(env.unwrapped.raw_obs))
        reached = {s: reached[s] or info[f"stage/{s}"] > 0.5 for s in stages}
        if terminated or info["success"]:
            break
    env.close()
    assert info["success"] and all(reached.values()) and info["obj_to_target"] < 0.1

    def record(success: bool, *reached: str) -> EpisodeRecord:
        return EpisodeRecord(0, success, 10, [], stages_reached=list(reached))

    episodes = [
        record(False),
        record(False, "near_object"),
        record(False, "near_object"),
        record(False, "near_object", "grasp_success"),
        record(True, "near_object", "grasp_success"),
    ]
    result = EvalResult("metaworld/basketball-v3", 5, 0.2, (0.0, 1.0), 10.0, "", 500, episodes, stages=list(stages))
    assert result.failure_stages() == {"never near_object": 1, "never grasp_success": 2, "all stages reached": 1}
    assert "failures: 1 never near_object, 2 never grasp_success, 1 all stages reached" in result.summary()


def test_relative_vectors_train_and_old_stores_derive_them(tmp_path, push_demos):
    """The Meta-World 'relative' key is the hand/object/goal differences of the state; the default preset trains on
    it, and stores recorded before it existed train on it too, derived from their 'state'."""
    from envs.make import make_env
    from envs.metaworld import relative_vectors

    env = make_env("metaworld/push-v3")
    obs, _ = env.reset(seed=3)
    env.close()
    s = obs["state"]
    np.testing.assert_array_equal(obs["relative"], np.concatenate([s[4:7] - s[0:3], s[11:14] - s[0:3], s[36:39] - s[0:3], s[36:39] - s[4:7]]))
    np.testing.assert_array_equal(relative_vectors(s[None]), obs["relative"][None])
    # the state presets read the env's recommended keys: resolved per env before any data is read
    for preset in ("default", "vqbet"):
        cfg = training.PRESETS[preset][1]
        assert cfg.policy.state_keys == ("env",)
        assert training.with_env_state_keys(replace(cfg, env="metaworld/push-v3")).policy.state_keys == ("state", "relative")
        assert training.with_env_state_keys(replace(cfg, env="robosuite/Lift")).policy.state_keys == ("state",)
    assert training.with_env_state_keys(replace(cfg, policy=replace(cfg.policy, state_keys=("env", "proprio")))).policy.state_keys == ("state", "relative", "proprio")

    summary = run_train(tmp_path / "rel", push_demos, "--policy.state-keys", "env", "--steps", "2")
    policy = Policy.from_pretrained(tmp_path / "rel" / "checkpoints" / "last")
    assert policy.config.state_keys == ("state", "relative") and policy.config.state_dims == (39, 12)
    assert json.loads((tmp_path / "rel" / "train_config.json").read_text())["policy"]["state_keys"] == ["state", "relative"]
    assert summary["eval"]["n_episodes"] == 1  # evaluated in the real env, which supplies both keys

    old = tmp_path / "state_only.zarr"  # a store recorded before the key existed
    src = EpisodeStore.open(push_demos)
    episodes = [{k: v for k, v in src.get_episode(i).items() if k != "relative"} for i in range(src.n_episodes)]
    write_store_atomically(old, episodes, env_id="metaworld/push-v3", fps=80, source="test")
    run_train(tmp_path / "old", old, "--policy.state-keys", "state", "relative", "--steps", "2", "--eval-episodes", "0")
    assert losses(tmp_path / "old") == losses(tmp_path / "rel")  # derived from 'state' = what the env recorded
    with pytest.raises(SystemExit, match=r"keys \['relative'\] are not stored; training derives them from \['state'\] in RAM, but streaming"):
        run_train(tmp_path / "stream", old, "--policy.state-keys", "state", "relative", "--data-ram-gb", "1")
    with pytest.raises(SystemExit, match=r"policy needs keys \['bogus'\], store has \['action', 'proprio', 'state', 'state_goal_hidden'\]"):
        run_train(tmp_path / "bogus", old, "--policy.state-keys", "state", "bogus")
