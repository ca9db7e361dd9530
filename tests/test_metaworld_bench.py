"""The Meta-World table-of-record bench: DP3's 50 tasks and splits, task-by-task resume keyed by spec, the rows'
observability fields, split means over the same tasks on both sides, and a task without demos counting as 0%."""

from __future__ import annotations

import json

import pytest

from bench import metaworld_success as ms


def test_the_table_is_dp3s_fifty_tasks_in_its_splits():
    assert len(ms.expand_tasks(("all",))) == 50
    assert {s: len(t) for s, t in ms.SPLITS.items()} == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert ms.expand_tasks(("split:very_hard", "shelf-place-v3")) == ms.SPLITS["very_hard"]  # no duplicates
    with pytest.raises(ValueError, match="not in DP3's Meta-World table"):
        ms.expand_tasks(("push-v2",))


def test_a_finished_task_is_reused_only_for_its_own_spec(tmp_path):
    args = ms.Args(recipes=("pointcloud",), results_dir=tmp_path, runs=tmp_path / "runs")
    path = tmp_path / "pointcloud" / "basketball-v3.json"
    path.parent.mkdir(parents=True)
    done = {"task": "basketball-v3", "success_rate": 0.5, "spec": ms.spec(args, "pointcloud", "basketball-v3")}
    path.write_text(json.dumps(done))
    assert ms.run_task(args, "pointcloud", "basketball-v3") == done  # nothing trained: the file answers
    other = ms.spec(ms.Args(steps=123), "pointcloud", "basketball-v3")
    assert other != done["spec"] and other["train_config_hash"] != done["spec"]["train_config_hash"]
    assert ms.spec(args, "privileged", "basketball-v3")["train_config_hash"] != done["spec"]["train_config_hash"]


def test_a_task_without_demos_counts_as_zero_with_its_keys_and_observability(tmp_path, monkeypatch):
    from envs import metaworld

    monkeypatch.setitem(metaworld.BROKEN_EXPERTS, "hand-insert-v3", "pretend broken")
    args = ms.Args(results_dir=tmp_path, runs=tmp_path / "runs")
    row = ms.run_task(args, "pointcloud", "hand-insert-v3")
    assert row["success_rate"] == 0.0 and "pretend broken" in row["no_demos"]
    assert row["obs_keys"] == ["proprio", "point_cloud"] and row["observability"] == "sensor_only"
    assert json.loads((tmp_path / "pointcloud" / "hand-insert-v3.json").read_text()) == row
    privileged = ms.run_task(args, "privileged", "hand-insert-v3")
    assert privileged["observability"] == "privileged" and privileged["obs_keys"] == ["state", "relative"]


def test_split_means_take_both_sides_over_the_same_tasks():
    rows = [
        {"recipe": "pointcloud", "task": t, "split": ms.split_of(t), "success_rate": s, **ms.anchors(t), "ci95": [0, 1], "obs_keys": ["proprio", "point_cloud"],
         "observability": "sensor_only"}
        for t, s in (("basketball-v3", 0.5), ("bin-picking-v3", 1.0), ("shelf-place-v3", 0.2))
    ]
    means = ms.split_means(rows)
    assert means["medium"]["ours"] == 75.0 and means["medium"]["n_tasks"] == 2 and not means["medium"]["complete"]
    assert means["medium"]["dp3_same_tasks"] == pytest.approx((ms.anchors("basketball-v3")["dp3"] + ms.anchors("bin-picking-v3")["dp3"]) / 2, abs=0.05)
    table = ms.markdown(rows, {"pointcloud": means})
    assert "sensor_only (proprio + point_cloud)" in table and "| pointcloud | medium | 2 of 11 | 75.0 |" in table
