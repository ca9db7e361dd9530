"""Scripted Meta-World experts that replace Meta-World's own: they succeed in the real env, and data.collect uses them."""

import numpy as np

from data.collect import CollectConfig, collect
from envs.metaworld import BROKEN_EXPERTS, HandInsertExpert, MetaWorldEnv, scripted_expert


def test_hand_insert_expert_succeeds_on_seeds_0_to_9():
    assert "hand-insert-v3" not in BROKEN_EXPERTS
    expert = scripted_expert("hand-insert-v3")
    assert isinstance(expert, HandInsertExpert)
    env = MetaWorldEnv("hand-insert-v3", max_episode_steps=200, terminate_on_success=True)
    succeeded = []
    try:
        for seed in range(10):  # one expert for every episode: it keeps no state between them
            env.reset(seed=seed)
            success = False
            while not success:
                action = expert.get_action(env.raw_obs)
                assert action.shape == (4,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
                _, _, _, truncated, info = env.step(action)
                success = info["success"]
                if truncated:
                    break
            succeeded.append(success)
    finally:
        env.close()
    assert sum(succeeded) >= 9, f"successes by seed 0..9: {succeeded}"


def test_collect_hand_insert_demos(tmp_path):
    store, report = collect(CollectConfig(env="metaworld/hand-insert-v3", episodes=2, out=tmp_path / "h.zarr"), progress=False)
    assert store.n_episodes == 2 and len(report.kept_seeds) == 2
