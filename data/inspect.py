"""Look at a store before training: a summary on stdout, trajectory plots and image contact sheets as PNG.

    python -m data.inspect demos/button.zarr
    python -m data.inspect demos/lift_image.zarr --episodes 0 5 9 --out-dir /tmp/lift_look

Prints env id, fps, source, episodes and their length distribution, then one row per key: dtype, per-step
shape, min / max / mean / std and NaN / inf counts (vectors over every step; images over up to
`--image-sample` frames spread over the store). Writes into --out-dir:
    trajectories.png       every vector key (state, action, ...) of a few episodes, one line per dimension
    frames_<key>.png       for each image key, a contact sheet: one row per episode, frames evenly spaced in time
    points_<key>.png       for each point-cloud key ((N, 3) or (N, 6) float32), 3-D scatters: one row per episode,
                           its first, middle and last step (coloured by RGB when the cloud has it, else by height)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from data.store import EpisodeStore

BLOCK_STEPS = 100_000


@dataclass(frozen=True)
class InspectConfig:
    store: tyro.conf.Positional[Path]
    """Episode store to look at."""
    out_dir: Path | None = None
    """Where the PNGs go (default: inspect/<store name>)."""
    episodes: tuple[int, ...] = ()
    """Episodes to plot (default: the first, middle and last)."""
    frames_per_episode: int = 8
    """Columns of the image contact sheets."""
    image_sample: int = 256
    """Frames read per image key for its statistics."""


def key_stats(store: EpisodeStore, key: str, image_sample: int) -> dict:
    """min / max / mean / std and NaN / inf counts of one key (vectors: all steps, read in blocks; images: a sample)."""
    spec = store.key_specs()[key]
    image = len(spec.shape) >= 2
    if image:
        idx = np.unique(np.linspace(0, store.n_steps - 1, min(image_sample, store.n_steps)).astype(int))
        frames = store.frames(key)
        blocks = [np.asarray(frames[idx]).astype(np.float64)]
    else:
        blocks = (store.read(key, s, min(s + BLOCK_STEPS, store.n_steps)).astype(np.float64) for s in range(0, store.n_steps, BLOCK_STEPS))
    n = nan = inf = 0
    total = total_sq = 0.0
    lo, hi = np.inf, -np.inf
    for x in blocks:
        nan += int(np.isnan(x).sum())
        inf += int(np.isinf(x).sum())
        finite = x[np.isfinite(x)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            total += float(finite.sum())
            total_sq += float((finite**2).sum())
            n += finite.size
    mean = total / n if n else float("nan")
    std = float(np.sqrt(max(total_sq / n - mean**2, 0.0))) if n else float("nan")
    return {"key": key, "dtype": spec.dtype, "shape": spec.shape, "min": lo, "max": hi, "mean": mean, "std": std, "nan": nan, "inf": inf,
            "over": f"{len(idx)} frames" if image else "all steps"}


def summary(store: EpisodeStore, image_sample: int = 256) -> tuple[str, list[dict]]:
    attrs = store.attrs
    lengths = np.diff(np.concatenate([[0], store.episode_ends]))
    lines = [
        f"store    {store.path}",
        f"env_id   {attrs.get('env_id')}    fps {attrs.get('fps')}    schema {attrs.get('schema_version')}",
        f"source   {attrs.get('source')}",
        f"episodes {store.n_episodes}    steps {store.n_steps}",
    ]
    if len(lengths):
        q = np.percentile(lengths, [0, 25, 50, 75, 100])
        lines.append(f"length   min {q[0]:.0f}  p25 {q[1]:.0f}  median {q[2]:.0f}  p75 {q[3]:.0f}  max {q[4]:.0f}  mean {lengths.mean():.1f}")
    stats = [key_stats(store, key, image_sample) for key in store.keys] if store.n_steps else []
    header = f"{'key':<22}{'dtype':<9}{'shape':<16}{'min':>11}{'max':>11}{'mean':>11}{'std':>11}{'NaN':>7}{'inf':>7}  over"
    lines += ["", header]
    for s in stats:
        lines.append(
            f"{s['key']:<22}{s['dtype']:<9}{str(s['shape']):<16}{s['min']:>11.4g}{s['max']:>11.4g}{s['mean']:>11.4g}{s['std']:>11.4g}{s['nan']:>7}{s['inf']:>7}  {s['over']}"
        )
    bad = [s["key"] for s in stats if s["nan"] or s["inf"]]
    if bad:
        lines.append(f"WARNING: non-finite values in {bad}")
    return "\n".join(lines), stats


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def plot_trajectories(store: EpisodeStore, episodes: list[int], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = store.key_specs()
    keys = [k for k, s in specs.items() if len(s.shape) <= 1]
    if not keys:
        return None
    fig, axes = plt.subplots(len(keys), len(episodes), figsize=(4 * len(episodes), 2.2 * len(keys)), squeeze=False, sharex="col")
    fps = float(store.attrs.get("fps") or 1.0)
    for col, e in enumerate(episodes):
        episode = store.get_episode(e)
        for row, key in enumerate(keys):
            ax = axes[row][col]
            x = episode[key].reshape(len(episode[key]), -1).astype(np.float64)
            t = np.arange(len(x)) / fps
            for d in range(x.shape[1]):
                ax.plot(t, x[:, d], lw=0.9, label=f"{d}" if x.shape[1] <= 10 else None)
            if row == 0:
                ax.set_title(f"episode {e} ({len(x)} steps)")
            if col == 0:
                ax.set_ylabel(key)
            if row == len(keys) - 1:
                ax.set_xlabel("time (s)")
            if col == len(episodes) - 1 and x.shape[1] <= 10:
                ax.legend(fontsize=6, loc="upper right", title="dim", title_fontsize=6)
    fig.suptitle(f"{store.path.name}: {store.attrs.get('env_id')}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def is_point_cloud(spec) -> bool:
    return len(spec.shape) == 2 and spec.shape[-1] in (3, 6) and spec.dtype == "float32"


def point_cloud_lines(store: EpisodeStore, key: str, sample: int) -> list[str]:
    """Per-axis ranges of a point-cloud key over `sample` frames spread over the store."""
    idx = np.unique(np.linspace(0, store.n_steps - 1, min(sample, store.n_steps)).astype(int))
    points = np.asarray(store.frames(key)[idx]).reshape(-1, store.key_specs()[key].shape[-1])
    axes = "  ".join(f"{name} [{points[:, i].min():.3f}, {points[:, i].max():.3f}]" for i, name in enumerate("xyz"))
    return [f"{key}: {store.key_specs()[key].shape[0]} points per step, {axes} (m, over {len(idx)} frames)"]


def plot_point_clouds(store: EpisodeStore, key: str, episodes: list[int], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = store.frames(key)
    ends = store.episode_ends
    fig = plt.figure(figsize=(12, 3.6 * len(episodes)))
    for row, e in enumerate(episodes):
        start, end = (int(ends[e - 1]) if e > 0 else 0), int(ends[e]) - 1
        for col, t in enumerate((start, (start + end) // 2, end)):
            cloud = np.asarray(frames[t])
            ax = fig.add_subplot(len(episodes), 3, 3 * row + col + 1, projection="3d")
            colour = np.clip(cloud[:, 3:6], 0, 1) if cloud.shape[1] == 6 else cloud[:, 2]
            ax.scatter(cloud[:, 0], cloud[:, 1], cloud[:, 2], c=colour, s=2, cmap=None if cloud.shape[1] == 6 else "viridis")
            ax.set_title(f"episode {e}, step {t - start}", fontsize=9)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
            ax.set_zlabel("z")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def contact_sheet(store: EpisodeStore, key: str, episodes: list[int], per_episode: int, path: Path) -> Path:
    import imageio.v3 as iio

    frames = store.frames(key)
    ends = store.episode_ends
    rows = []
    for e in episodes:
        start = int(ends[e - 1]) if e > 0 else 0
        idx = np.linspace(start, int(ends[e]) - 1, per_episode).astype(int)
        rows.append(np.concatenate(list(np.asarray(frames[idx])), axis=1))  # (H, per_episode * W, 3)
    sheet = np.concatenate(rows, axis=0)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    iio.imwrite(tmp, sheet)
    os.replace(tmp, path)
    return path


def inspect_store(cfg: InspectConfig) -> tuple[str, list[Path]]:
    store = EpisodeStore.open(cfg.store)
    text, _ = summary(store, cfg.image_sample)
    for key, spec in store.key_specs().items():
        if is_point_cloud(spec) and store.n_steps:
            text += "\n" + "\n".join(point_cloud_lines(store, key, cfg.image_sample))
    if store.n_episodes == 0:
        return text + "\n(no episodes: nothing to plot)", []
    n = store.n_episodes
    episodes = list(cfg.episodes) or sorted({0, n // 2, n - 1})
    bad = [e for e in episodes if not 0 <= e < n]
    if bad:
        raise IndexError(f"{cfg.store}: --episodes {bad} out of range; the store has {n} episodes (0..{n - 1})")
    out_dir = cfg.out_dir or Path("inspect") / cfg.store.name.removesuffix(".zarr")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if (p := plot_trajectories(store, episodes, out_dir / "trajectories.png")) is not None:
        written.append(p)
    for key, spec in store.key_specs().items():
        if len(spec.shape) == 3 and spec.shape[-1] in (1, 3) and spec.dtype == "uint8":
            written.append(contact_sheet(store, key, episodes, cfg.frames_per_episode, out_dir / f"frames_{key}.png"))
        elif is_point_cloud(spec):
            written.append(plot_point_clouds(store, key, episodes, out_dir / f"points_{key}.png"))
    return text, written


def main() -> None:
    cfg = tyro.cli(InspectConfig)
    try:
        text, written = inspect_store(cfg)
    except (ValueError, IndexError) as e:
        raise SystemExit(f"error: {e}") from None
    print(text)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
