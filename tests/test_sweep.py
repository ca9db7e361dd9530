"""Evaluation sweeps: parallel eval.py workers, pooled CIs, resume without redoing jobs, kill -9 survival."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}


def sweep_cmd(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "eval.py", "sweep", "--checkpoints", str(ckpt), "--tasks", "metaworld/push-v3", "metaworld/reach-v3",
        "--seeds", "0", "1", "--episodes", "2", "--max-episode-steps", "8", "--out", str(out), *extra,
    ]


def job_files(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "jobs").glob("*.json")}


def test_sweep_pools_seed_blocks_and_resumes_without_rerunning(tmp_path, tiny_dp_checkpoint):
    out = tmp_path / "sweep"
    proc = subprocess.run(sweep_cmd(tiny_dp_checkpoint, out, "--workers", "2"), cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "sweep.json").read_text())
    assert [j["status"] for j in result["jobs"]] == ["done"] * 4
    assert {(s["task"], s["n"]) for s in result["summary"]} == {("metaworld/push-v3", 4), ("metaworld/reach-v3", 4)}
    for s in result["summary"]:
        assert s["seed_blocks"] == [0, 1] and 0 <= s["ci95"][0] <= s["success_rate"] <= s["ci95"][1] <= 1
        assert "success" in s["success_definition"]
    seeds = sorted(seed for p in (out / "jobs").glob("*push-v3*.json") for seed in (e["seed"] for e in json.loads(p.read_text())["episodes"]))
    assert seeds == [100_000, 100_001, 100_002, 100_003]  # blocks are disjoint and contiguous
    md = (out / "sweep.md").read_text()
    assert "| metaworld/reach-v3 |" in md and "Success:" in md

    before = job_files(out)
    again = subprocess.run(sweep_cmd(tiny_dp_checkpoint, out, "--workers", "2"), cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert again.returncode == 0 and "4 jobs (4 already done)" in again.stdout
    assert job_files(out) == before  # nothing was redone
    assert json.loads((out / "sweep.json").read_text())["summary"] == result["summary"]


def test_sweep_killed_mid_run_resumes_to_the_same_result(tmp_path, tiny_dp_checkpoint):
    clean = tmp_path / "clean"
    subprocess.run(sweep_cmd(tiny_dp_checkpoint, clean, "--workers", "1"), cwd=ROOT, check=True, capture_output=True, env=ENV)

    out = tmp_path / "killed"
    proc = subprocess.Popen(sweep_cmd(tiny_dp_checkpoint, out, "--workers", "1"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while not ((out / "jobs").exists() and job_files(out)):
        assert time.time() < deadline and proc.poll() is None, "the sweep finished no job"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-sweep: one job done, the next one's eval.py running
    proc.wait()
    time.sleep(1)
    orphans = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not orphans, "job processes outlived the killed sweep"
    assert not (out / "sweep.json").exists()
    done_before = job_files(out)
    assert 1 <= len(done_before) < 4
    for path in (out / "jobs").glob("*.json"):  # every job file on disk is complete
        assert json.loads(path.read_text())["n_episodes"] == 2

    resumed = subprocess.run(sweep_cmd(tiny_dp_checkpoint, out, "--workers", "1"), cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"({len(done_before)} already done)" in resumed.stdout
    assert {k: v for k, v in job_files(out).items() if k in done_before} == done_before
    assert json.loads((out / "sweep.json").read_text())["summary"] == json.loads((clean / "sweep.json").read_text())["summary"]


def test_sweep_bad_input_fails_before_any_job(tmp_path, tiny_dp_checkpoint):
    proc = subprocess.run(
        [sys.executable, "eval.py", "sweep", "--checkpoints", str(tmp_path / "nope"), "--out", str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True, env=ENV
    )
    assert proc.returncode != 0 and "nope" in proc.stderr and "not a checkpoint dir" in proc.stderr
    proc = subprocess.run(sweep_cmd(tiny_dp_checkpoint, tmp_path / "s2", "--workers", "0"), cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode != 0 and "workers" in proc.stderr
