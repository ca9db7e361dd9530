"""Why a point-cloud policy fails: can its encoder see the object, and does the policy fit its own demos?

    python -m bench.pointcloud_probe --demos bench_runs/demos/basketball-v3-10demos-pc.zarr \\
        --checkpoint bench_runs/basketball-v3-pointcloud-10demos-4000steps-seed0-cf5860d468 --out bench/results/pointcloud_probe_basketball.json

Parts:
- localize: a fresh DP3 encoder (per width) plus a linear head, trained for `probe_steps` at batch 32 (AdamW 1e-3)
  to regress the object's position (state[4:7]) from the stored clouds; error on held-out EPISODES (the last
  `test_episodes`), so new object positions. Small error = the cloud carries the object and the encoder can read it.
- fit (with --checkpoint): the trained policy's chunk on its own training windows against the demo's actions
  (mean |a - a_demo| over the next 4 steps, every 5th step of every demo), and how much the chunk moves when the
  cloud is swapped for another demo's at the same step (does the policy use the cloud at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from bench.common import print_table, write_results


@dataclass(frozen=True)
class Args:
    demos: Path
    """A store with `point_cloud` and Meta-World's `state` (object at 4:7)."""
    checkpoint: Path | None = None
    """A trained point-cloud policy (run dir or checkpoint) for the fit part."""
    widths: tuple[str, ...] = ("32-64-128", "64-128-256")
    probe_steps: int = 1500
    test_episodes: int = 2
    out: Path | None = None


def localize(args: Args) -> list[dict]:
    from data.store import EpisodeStore
    from policies.pointcloud import DP3Encoder

    store = EpisodeStore.open(args.demos)
    data = store.load(["point_cloud", "state"])
    clouds, target = torch.from_numpy(data["point_cloud"]), torch.from_numpy(data["state"][:, 4:7]).float()
    split = int(store.episode_ends[-args.test_episodes - 1])
    train, test = np.arange(split), np.arange(split, len(clouds))
    mean, std = target[train].mean(0), target[train].std(0)
    rows = []
    for name in args.widths:
        torch.manual_seed(0)
        encoder, head = DP3Encoder(clouds.shape[-1], tuple(int(x) for x in name.split("-")), 64), torch.nn.Linear(64, 3)
        optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
        for step in range(args.probe_steps):
            batch = torch.from_numpy(np.random.default_rng(step).choice(train, 32))
            loss = ((head(encoder(clouds[batch])) - (target[batch] - mean) / std) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            error_cm = 100 * (head(encoder(clouds[test])) * std + mean - target[test]).norm(dim=1)
        rows.append({
            "part": "localize", "encoder": name, "probe_steps": args.probe_steps, "test_episodes": args.test_episodes,
            "object_std_cm": [round(float(x), 2) for x in 100 * target.std(0)],
            "error_cm_p50": round(float(error_cm.median()), 2), "error_cm_p90": round(float(error_cm.quantile(0.9)), 2),
        })
    return rows


@torch.no_grad()
def fit(args: Args) -> list[dict]:
    from core.checkpoint import resolve_checkpoint
    from data.store import EpisodeStore
    from policies import Policy

    torch.manual_seed(0)
    policy = Policy.from_pretrained(resolve_checkpoint(args.checkpoint))
    keys, steps = policy.config.obs_keys, policy.config.n_obs_steps
    store = EpisodeStore.open(args.demos)
    episodes = [store.get_episode(i) for i in range(store.n_episodes)]
    errors, moved, scale = [], [], []
    for i, episode in enumerate(episodes):
        other = episodes[(i + 1) % len(episodes)]
        for t in range(steps - 1, len(episode["action"]) - 4, 5):
            window = {k: torch.from_numpy(episode[k][t - steps + 1 : t + 1])[None] for k in keys}
            noise = torch.randn(policy.noise_shape(1))
            chunk = policy.predict_action_chunk(window, noise=noise)[0, steps - 1 : steps + 3].numpy()
            errors.append(float(np.abs(chunk - episode["action"][t : t + 4]).mean()))
            scale.append(float(np.abs(episode["action"][t : t + 4]).mean()))
            u = min(t, len(other["point_cloud"]) - 1)
            swapped = {**window, policy.config.point_cloud_key: torch.from_numpy(other["point_cloud"][u - steps + 1 : u + 1])[None]}
            moved.append(float(np.abs(policy.predict_action_chunk(swapped, noise=noise)[0, steps - 1 : steps + 3].numpy() - chunk).mean()))
    return [{
        "part": "fit", "checkpoint": str(args.checkpoint), "windows": len(errors), "action_error_mean": round(float(np.mean(errors)), 3),
        "action_magnitude_mean": round(float(np.mean(scale)), 3), "chunk_change_when_cloud_swapped": round(float(np.mean(moved)), 3),
    }]


def main() -> None:
    args = tyro.cli(Args)
    torch.set_num_threads(1)
    rows = localize(args) + (fit(args) if args.checkpoint else [])
    print_table([r for r in rows if r["part"] == "localize"], ["encoder", "probe_steps", "object_std_cm", "error_cm_p50", "error_cm_p90"])
    print_table([r for r in rows if r["part"] == "fit"], ["checkpoint", "windows", "action_error_mean", "action_magnitude_mean", "chunk_change_when_cloud_swapped"])
    write_results(args.out, "pointcloud_probe", f"demos {args.demos}; encoder probe on held-out episodes; policy fit on its own demos (fixed noise)", rows)


if __name__ == "__main__":
    main()
