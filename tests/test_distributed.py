"""Data-parallel training with torchrun over gloo on 2 CPU processes (real process groups, real demos)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ddp_reference import global_batch, tiny_policy

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)


def test_two_ranks_give_the_gradients_of_one_rank_with_the_doubled_batch(tmp_path, push_demos):
    per_rank = 6
    out = tmp_path / "ddp_grads.safetensors"
    proc = torchrun("tests/ddp_grad_worker.py", str(push_demos), str(out), str(per_rank))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_grads = load_file(str(out))

    policy = tiny_policy(push_demos)  # one process, the whole global batch
    loss, _ = policy(global_batch(push_demos, policy, 2 * per_rank))
    loss.backward()
    single = {name: p.grad for name, p in policy.named_parameters() if p.grad is not None}
    assert set(single) == set(ddp_grads) and len(single) > 10
    for name, grad in single.items():
        torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert max(g.abs().max().item() for g in single.values()) > 0  # the comparison is not between zeros


def test_torchrun_train_saves_on_rank0_resumes_and_evaluates(tmp_path, push_demos):
    run_dir = tmp_path / "ddp"
    common = ["train.py", "tiny", "--env", "metaworld/push-v3", "--dataset", str(push_demos), "--run-dir", str(run_dir), "--steps", "4"]
    first = torchrun(*common, "--stop-at", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "effective batch 16 (2 process(es) x 8)" in first.stdout
    ckpt = run_dir / "checkpoints" / "step_0000002"
    assert json.loads((ckpt / "train_state" / "state.json").read_text())["world_size"] == 2
    with safe_open(str(ckpt / "train_state" / "rng.safetensors"), "pt") as f:
        assert set(f.keys()) == {"torch", "torch_rank1"}
        assert not torch.equal(f.get_tensor("torch"), f.get_tensor("torch_rank1"))  # each rank has its own noise stream

    # resuming with a different number of processes would change the batches: refused, naming both counts
    single = subprocess.run([sys.executable, *common, "--resume"], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert single.returncode != 0 and "saved by 2 process(es), resumed with 1" in single.stderr

    second = torchrun(*common, "--resume", "--eval-episodes", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "success" in second.stdout
    steps = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # rank 0 alone logs; no duplicate lines
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last", "step_0000002", "step_0000004"]
    assert json.loads((run_dir / "eval.json").read_text())["n_episodes"] == 1
    weights = load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))
    assert all(np.isfinite(w.numpy()).all() for w in weights.values())


def test_torchrun_vqbet_crosses_its_phase_boundary(tmp_path, push_demos):
    """VQ-BeT freezes its tokenizer after phase 1: DDP must cope with parameters that stop receiving gradients."""
    run_dir = tmp_path / "vq"
    proc = torchrun("train.py", "vqbet-tiny", "--env", "metaworld/push-v3", "--dataset", str(push_demos), "--run-dir", str(run_dir), "--steps", "4", "--eval-episodes", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    phases = [json.loads(line)["phase"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert phases == [1.0, 1.0, 2.0, 2.0]
    assert all(np.isfinite(w.numpy()).all() for w in load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors")).values())
