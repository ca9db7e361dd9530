"""Bookkeeping of the bench scripts (bench/common.py): CPU-minutes over interrupted attempts, the eval cache's
key, and run dirs named by the hash of their training config. Real tiny trainings and evaluations throughout."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import policies.training
from bench.common import config_hash, cpu_attempt, cpu_seconds, evaluate_checkpoint, read_cpu_record, train_cpu_record, train_measured, with_run_dir
from policies.training import PRESETS

ENV = "metaworld/push-v3"


class Interrupted(Exception):
    """Stands in for the job being stopped after a checkpoint (time limit, Ctrl-C)."""


def tiny_config(run_dir: Path, demos: Path, steps: int = 4):
    return dataclasses.replace(PRESETS["tiny"][1], env=ENV, dataset=(demos,), steps=steps, eval_episodes=0, run_dir=run_dir)


def test_train_cpu_minutes_add_up_every_attempt(tmp_path, push_demos, monkeypatch) -> None:
    """A run interrupted after its step-2 checkpoint and resumed reports the CPU of both attempts, not only the last."""
    real_train = policies.training.train

    def train_then_interrupt(cfg):
        real_train(dataclasses.replace(cfg, stop_at=2))
        raise Interrupted

    cfg = tiny_config(tmp_path / "run", push_demos)
    monkeypatch.setattr(policies.training, "train", train_then_interrupt)
    with pytest.raises(Interrupted):
        train_measured(cfg)
    monkeypatch.setattr(policies.training, "train", real_train)

    before = cpu_seconds()
    total_s = 60 * train_measured(cfg)
    resumed_attempt_s = cpu_seconds() - before
    assert (cfg.run_dir / "checkpoints" / "last").resolve().name == "step_0000004"  # it resumed and finished
    assert total_s > resumed_attempt_s, f"train CPU {total_s:.3f} s counts only the resumed attempt ({resumed_attempt_s:.3f} s)"
    record = read_cpu_record(train_cpu_record(cfg.run_dir))
    assert (record["cpu_s"], record["attempts"], record["finished"]) == (total_s, 2, True)
    assert 60 * train_measured(cfg) == total_s  # a finished run is not trained or counted again


def test_cpu_record_is_on_disk_while_the_attempt_runs(tmp_path) -> None:
    """The record is rewritten during the attempt, so a kill -9 (no `finally`) still leaves its CPU on record."""
    path = tmp_path / "work.cpu.json"
    path.write_text(json.dumps({"cpu_s": 5.0, "attempts": 1, "finished": False}))  # an earlier, killed attempt
    with cpu_attempt(path, flush_every_s=0.001) as record:
        assert read_cpu_record(path)["attempts"] == 2  # on record from its start
        first = read_cpu_record(path)["cpu_s"]
        for _ in range(100_000):  # burn CPU until the flusher has written again
            if read_cpu_record(path)["cpu_s"] > first:
                break
            sum(range(1000))
        assert read_cpu_record(path)["cpu_s"] > first >= 5.0, "the record was not rewritten during the attempt"
        record["finished"] = True
    assert read_cpu_record(path)["finished"]


def test_config_hash_follows_what_the_run_computes(tmp_path, push_demos) -> None:
    """Every field that changes the run changes the hash; device, threads and eval/log cadence (RESUMABLE_CHANGES) do not."""
    cfg = tiny_config(tmp_path / "unused", push_demos)
    assert config_hash(cfg) == config_hash(dataclasses.replace(cfg, device="cuda", num_threads=1, log_every=7, run_dir=tmp_path / "elsewhere"))
    changed = [dataclasses.replace(cfg, lr=1e-4), dataclasses.replace(cfg, steps=5), dataclasses.replace(cfg, seed=1),
               dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, mlp_hidden_dim=64))]
    assert len({config_hash(c) for c in [cfg, *changed]}) == 5
    run = with_run_dir(cfg, tmp_path / "runs", "push")
    assert run.run_dir == tmp_path / "runs" / f"push-{config_hash(cfg)}" and len(config_hash(cfg)) == 10


def test_train_measured_refuses_a_run_dir_of_another_config(tmp_path, push_demos) -> None:
    """A finished run dir is never reused for another config, even one named without `with_run_dir`."""
    cfg = tiny_config(tmp_path / "run", push_demos, steps=2)
    train_measured(cfg)
    with pytest.raises(SystemExit, match="another training config"):
        train_measured(dataclasses.replace(cfg, lr=1e-4))


@pytest.fixture
def tiny_run(tmp_path, tiny_dp_checkpoint) -> Path:
    """A private copy of the shared tiny run (evaluate_checkpoint writes its cache into the run dir)."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_dp_checkpoint.parent.parent, run_dir, symlinks=True)
    return run_dir


def test_eval_cache_is_keyed_by_the_episode_count(tiny_run, monkeypatch) -> None:
    """A cached 1-episode result is never handed out as a 2-episode one (nor one of another episode limit, first
    seed or sampler); an identical request reuses the cache."""
    import envs.rollout

    real_evaluate, calls = envs.rollout.evaluate, []
    monkeypatch.setattr(envs.rollout, "evaluate", lambda *a, **kw: calls.append(kw) or real_evaluate(*a, **kw))

    def ev(episodes: int, **kw) -> dict:
        return evaluate_checkpoint(tiny_run, ENV, episodes, n_envs=1, **{"max_episode_steps": 16, **kw})  # short episodes: fast

    one, two = ev(1), ev(2)
    assert one["n_episodes"] == 1
    assert two["n_episodes"] == 2, f"asked for 2 episodes, got the cached {two['n_episodes']}-episode result"
    assert ev(2) == two and len(calls) == 2  # the same request is served from the cache
    assert two["eval_cpu_s"] > 0 and two["key"]["episodes"] == 2

    assert ev(2, max_episode_steps=20)["max_episode_steps"] == 20 and len(calls) == 3
    assert [e["seed"] for e in ev(2, seed_start=7)["episodes"]] == [7, 8] and len(calls) == 4
    assert ev(2, sampler=("euler", 1))["key"]["sampler"] == ["euler", 1] and len(calls) == 5
    assert ev(1) == one and len(calls) == 5  # each result keeps its own cache entry


TINY_RECIPE_POLICY = {
    "backbone": "mlp", "objective": "flow", "inference_scheduler": "euler", "num_inference_steps": 3,
    "mlp_hidden_dim": 32, "mlp_blocks": 2, "diffusion_step_embed_dim": 16, "horizon": 8, "n_action_steps": 4,
}


def test_recipe_sweep_starts_a_fresh_run_when_the_recipe_changes(tmp_path, push_demos, monkeypatch) -> None:
    """Same recipe: the finished run is reused. Changed recipe (more steps): a new run dir, trained with the new config."""
    from bench import recipe_sweep

    args = recipe_sweep.Args(recipes=("tiny",), tasks=("push-v3",), runs=tmp_path / "sweep")
    monkeypatch.setitem(recipe_sweep.RECIPES, "tiny", (TINY_RECIPE_POLICY, {"steps": 2, "batch_size": 8}, (("euler", 3),)))
    old_dir, _ = recipe_sweep.train_recipe(args, "tiny", "push-v3", push_demos)
    assert recipe_sweep.train_recipe(args, "tiny", "push-v3", push_demos)[0] == old_dir
    assert read_cpu_record(train_cpu_record(old_dir))["attempts"] == 1  # reused, not trained again

    monkeypatch.setitem(recipe_sweep.RECIPES, "tiny", (TINY_RECIPE_POLICY, {"steps": 3, "batch_size": 8}, (("euler", 3),)))
    new_dir, _ = recipe_sweep.train_recipe(args, "tiny", "push-v3", push_demos)
    assert new_dir != old_dir, f"the changed recipe reused the old run {old_dir}"
    assert (new_dir / "checkpoints" / "last").resolve().name == "step_0000003"
    assert (old_dir / "checkpoints" / "last").resolve().name == "step_0000002"  # the old run is left as it was
