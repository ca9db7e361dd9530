"""Import a LeRobot dataset (codebase v3.0, v2.1 or v2.0, on disk) into an episode store, one episode at a time.

    python -m data.import_lerobot ~/.cache/huggingface/lerobot/lerobot/pusht demos/pusht.zarr
    python -m data.import_lerobot my_dataset demos/mine.zarr --env metaworld/drawer-open-v3 --episodes 0 1 2

Layouts read (https://github.com/huggingface/lerobot, src/lerobot/datasets/utils.py):
    v3.0  meta/info.json, meta/episodes/chunk-XXX/file-XXX.parquet (one row per episode: length, tasks,
          data/chunk_index, data/file_index, videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}),
          data/chunk-XXX/file-XXX.parquet (many episodes per file), videos/<key>/chunk-XXX/file-XXX.mp4
    v2.x  meta/info.json, meta/episodes.jsonl, data/chunk-XXX/episode_XXXXXX.parquet,
          videos/chunk-XXX/<key>/episode_XXXXXX.mp4 (one file per episode)
File names come from info.json's data_path and video_path templates.

Keys written:
    observation.state          -> state
    action                     -> action
    observation.images.<cam>   -> image_<cam>  uint8 (T, H, W, 3), decoded with PyAV (video) or from PNG bytes (image)
    observation.<x>, other     -> <x> with dots as underscores (e.g. next.reward -> next_reward)
Bookkeeping columns (timestamp, frame_index, episode_index, index, task_index) are checked and dropped.
The store's attrs keep fps (from info.json), each episode's LeRobot index and task strings, and info.json.

Checks (each error names the file and episode): a missing info.json, an unknown codebase_version, frame
indices or timestamps that do not advance by 1/fps, a video with fewer frames than the parquet has rows, and
features whose shapes differ from info.json. Memory: one episode decoded at a time; the output is written to
a temporary sibling and renamed when complete, so an interrupted import leaves no store at `out`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from data.store import EpisodeStore, StoreError, write_store_atomically

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
TIMESTAMP_TOLERANCE_S = 1e-4
"""How far a parquet timestamp may sit from frame_index / fps (LeRobot's own tolerance_s)."""


class LeRobotFormatError(StoreError):
    """A LeRobot dataset that does not have the expected layout or contents."""


@dataclass(frozen=True)
class ImportLeRobotConfig:
    src: tyro.conf.Positional[Path]
    """LeRobot dataset root (the directory holding meta/info.json)."""
    out: tyro.conf.Positional[Path]
    """Episode store to write (must not exist unless --overwrite)."""
    env: str | None = None
    """Env id for the store (<suite>/<task>); default lerobot/<robot_type or directory name>."""
    episodes: tuple[int, ...] = ()
    """LeRobot episode indices to import (default: all)."""
    overwrite: bool = False
    """Replace an existing store at `out`."""


def store_key(feature: str) -> str:
    """LeRobot feature name -> store key."""
    if feature == "observation.state":
        return "state"
    if feature.startswith("observation.images."):
        return "image_" + feature[len("observation.images.") :].replace(".", "_")
    if feature.startswith("observation."):
        feature = feature[len("observation.") :]
    return feature.replace(".", "_").replace("/", "_")


@dataclass(frozen=True)
class Dataset:
    """What info.json and the episode table say about a LeRobot dataset."""

    root: Path
    info: dict[str, Any]
    version: str
    fps: float
    features: dict[str, dict[str, Any]]
    episodes: list[dict[str, Any]]
    """One dict per episode, ascending episode_index: v3's episodes-parquet row or v2's episodes.jsonl line."""

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "image"]

    @property
    def vector_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") not in ("video", "image", "string") and k not in BOOKKEEPING]

    def data_path(self, ep: dict[str, Any]) -> Path:
        template = self.info.get("data_path")
        if self.version == "v3.0":
            rel = (template or "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet").format(chunk_index=int(ep["data/chunk_index"]), file_index=int(ep["data/file_index"]))
        else:
            chunk = int(ep["episode_index"]) // int(self.info.get("chunks_size", 1000))
            rel = (template or "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet").format(episode_chunk=chunk, episode_index=int(ep["episode_index"]))
        return self.root / rel

    def video(self, ep: dict[str, Any], key: str) -> tuple[Path, float]:
        """(mp4 path, time in that file where the episode's first frame sits)."""
        template = self.info.get("video_path")
        if self.version == "v3.0":
            rel = (template or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4").format(
                video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]), file_index=int(ep[f"videos/{key}/file_index"])
            )
            return self.root / rel, float(ep[f"videos/{key}/from_timestamp"])
        chunk = int(ep["episode_index"]) // int(self.info.get("chunks_size", 1000))
        rel = (template or "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4").format(
            episode_chunk=chunk, video_key=key, episode_index=int(ep["episode_index"])
        )
        return self.root / rel, 0.0


def open_dataset(root: Path) -> Dataset:
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise LeRobotFormatError(f"{root}: missing meta/info.json; expected a LeRobot dataset root (meta/, data/, videos/)")
    try:
        info = json.loads(info_path.read_text())
    except ValueError as exc:
        raise LeRobotFormatError(f"{info_path}: not JSON: {exc}") from exc
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise LeRobotFormatError(
            f"{info_path}: codebase_version {version!r}; this importer reads {list(SUPPORTED_VERSIONS)} "
            "(convert older datasets with LeRobot's own converter first)"
        )
    for field in ("fps", "features"):
        if field not in info:
            raise LeRobotFormatError(f"{info_path}: missing field {field!r}")
    features = info["features"]
    if "action" not in features:
        raise LeRobotFormatError(f"{info_path}: features {sorted(features)} have no 'action'")
    episodes = read_episode_table(root, version)
    return Dataset(root, info, version, float(info["fps"]), features, episodes)


def read_episode_table(root: Path, version: str) -> list[dict[str, Any]]:
    if version == "v3.0":
        import pyarrow.parquet as pq

        files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise LeRobotFormatError(f"{root}: no meta/episodes/chunk-*/file-*.parquet; expected v3.0 episode metadata")
        rows: list[dict[str, Any]] = []
        for path in files:
            table = pq.read_table(path)
            keep = [c for c in table.column_names if not c.startswith("stats/")]  # per-episode stats are not needed
            rows += table.select(keep).to_pylist()
    else:
        path = root / "meta" / "episodes.jsonl"
        if not path.is_file():
            raise LeRobotFormatError(f"{root}: missing meta/episodes.jsonl; expected {version} episode metadata")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if "episode_index" not in row or "length" not in row:
            raise LeRobotFormatError(f"{root}: episode metadata row {row} lacks episode_index or length")
    return sorted(rows, key=lambda r: int(r["episode_index"]))


class ParquetCache:
    """The last data file read, so consecutive v3 episodes sharing a file read it once (bounded by file size)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.table: Any = None

    def episode_rows(self, path: Path, episode_index: int, columns: list[str]) -> Any:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if path != self.path:
            if not path.is_file():
                raise LeRobotFormatError(f"{path}: missing data file for episode {episode_index}")
            self.table = pq.read_table(path)
            self.path = path
            missing = [c for c in columns if c not in self.table.column_names]
            if missing:
                raise LeRobotFormatError(f"{path}: columns {missing} from info.json features are missing; the file has {self.table.column_names}")
        rows = self.table.filter(pc.equal(self.table["episode_index"], episode_index))
        return rows.sort_by("frame_index")


def vector_column(rows: Any, key: str, shape: list[int], where: str) -> np.ndarray:
    """A parquet column of per-frame lists or scalars -> (T, *shape) array, checked against info.json."""
    column = rows[key].combine_chunks()
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype == object:  # list<float> per row
        lengths = {len(v) for v in values}
        if len(lengths) > 1:
            raise LeRobotFormatError(f"{where}: feature {key!r} has rows of lengths {sorted(lengths)}; expected shape {shape} in every row")
        values = np.stack(values) if len(values) else np.zeros((0, *shape))
    x = values.reshape(len(values), -1) if values.ndim == 1 else values
    if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise LeRobotFormatError(f"{where}: feature {key!r} has per-frame shape {x.shape[1:]}; info.json says {shape}")
    x = x.reshape(len(x), *shape)
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    return x


def frame_shape(feature: dict[str, Any]) -> tuple[int, int, int]:
    """(H, W, C) of a video/image feature; LeRobot writes (height, width, channels), older sets (channels, height, width)."""
    shape = [int(s) for s in feature["shape"]]
    names = feature.get("names") or []
    if len(shape) == 3 and names and names[0] in ("channels", "channel", "c"):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def decode_video(path: Path, start_s: float, timestamps: np.ndarray, fps: float, expected: tuple[int, int, int], where: str) -> np.ndarray:
    """Frames of one episode: for each parquet timestamp t, the video frame at start_s + t (to within a quarter frame)."""
    import av

    if not path.is_file():
        raise LeRobotFormatError(f"{where}: missing video {path}")
    n = len(timestamps)
    frames = np.zeros((n, *expected), dtype=np.uint8)
    filled = np.zeros(n, dtype=bool)
    tolerance = 0.25 / fps
    last = start_s + float(timestamps[-1]) if n else start_s
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start_s > 0:
            container.seek(int(max(start_s - 1.0 / fps, 0.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time)
            if t > last + tolerance:
                break
            j = int(np.rint((t - start_s) * fps))
            if j < 0 or j >= n or abs(t - start_s - float(timestamps[j])) > tolerance:
                continue
            image = frame.to_ndarray(format="rgb24")
            if image.shape != expected:
                raise LeRobotFormatError(f"{where}: {path} frames are {image.shape}; info.json says {expected} (H, W, C)")
            frames[j] = image
            filled[j] = True
    if not filled.all():
        first = int(np.argmin(filled))
        raise LeRobotFormatError(
            f"{where}: video {path} has {int(filled.sum())} of the episode's {n} frames (none at parquet frame {first}, "
            f"t={start_s + float(timestamps[first]):.4f} s); the video is shorter than its parquet frames or out of sync"
        )
    return frames


def decode_images(rows: Any, key: str, expected: tuple[int, int, int], where: str) -> np.ndarray:
    """An `image` feature (parquet struct of PNG/JPEG bytes per frame) -> (T, H, W, 3) uint8."""
    import imageio.v3 as iio

    out = np.zeros((rows.num_rows, *expected), dtype=np.uint8)
    for i, cell in enumerate(rows[key].to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise LeRobotFormatError(f"{where}: feature {key!r} frame {i} has no embedded image bytes")
        image = iio.imread(data)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.shape != expected:
            raise LeRobotFormatError(f"{where}: feature {key!r} frame {i} is {image.shape}; info.json says {expected}")
        out[i] = image[..., :3]
    return out


def read_episode(ds: Dataset, ep: dict[str, Any], cache: ParquetCache) -> dict[str, np.ndarray]:
    index, length = int(ep["episode_index"]), int(ep["length"])
    path = ds.data_path(ep)
    where = f"{path} episode {index}"
    vector_keys, image_keys = ds.vector_keys, ds.image_keys
    rows = cache.episode_rows(path, index, ["episode_index", "frame_index", "timestamp", *vector_keys, *image_keys])
    if rows.num_rows != length:
        raise LeRobotFormatError(f"{where}: {rows.num_rows} rows in the data file; the episode metadata says length {length}")
    frame_index = rows["frame_index"].to_numpy()
    if not np.array_equal(frame_index, np.arange(length)):
        bad = int(np.argmax(frame_index != np.arange(length)))
        raise LeRobotFormatError(f"{where}: frame_index {int(frame_index[bad])} at row {bad}; expected 0..{length - 1} without gaps")
    timestamps = rows["timestamp"].to_numpy().astype(np.float64)
    off = np.abs(timestamps - np.arange(length) / ds.fps)
    if off.max(initial=0) > TIMESTAMP_TOLERANCE_S:
        bad = int(np.argmax(off > TIMESTAMP_TOLERANCE_S))
        raise LeRobotFormatError(
            f"{where}: timestamp gap at frame {bad}: {timestamps[bad]:.6f} s, expected {bad / ds.fps:.6f} s (frame_index / fps={ds.fps:g}, "
            f"tolerance {TIMESTAMP_TOLERANCE_S} s)"
        )
    episode: dict[str, np.ndarray] = {}
    for key in vector_keys:
        episode[store_key(key)] = vector_column(rows, key, [int(s) for s in ds.features[key]["shape"]], where)
    for key in image_keys:
        episode[store_key(key)] = decode_images(rows, key, frame_shape(ds.features[key]), where)
    for key in ds.video_keys:
        video, start = ds.video(ep, key)
        episode[store_key(key)] = decode_video(video, start, timestamps, ds.fps, frame_shape(ds.features[key]), f"{where} ({key})")
    return episode


def import_lerobot(cfg: ImportLeRobotConfig) -> EpisodeStore:
    ds = open_dataset(cfg.src)
    episodes = ds.episodes
    if cfg.episodes:
        by_index = {int(e["episode_index"]): e for e in episodes}
        unknown = [i for i in cfg.episodes if i not in by_index]
        if unknown:
            raise LeRobotFormatError(f"{cfg.src}: --episodes {unknown} not in the dataset (it has {len(by_index)} episodes, indices {min(by_index)}..{max(by_index)})")
        episodes = [by_index[i] for i in cfg.episodes]
    keys = [store_key(k) for k in (*ds.vector_keys, *ds.image_keys, *ds.video_keys)]
    if len(set(keys)) != len(keys):
        raise LeRobotFormatError(f"{cfg.src}: features {sorted(ds.features)} map to clashing store keys {keys}")
    env_id = cfg.env or f"lerobot/{ds.info.get('robot_type') or cfg.src.name}"
    cache = ParquetCache()

    def generate() -> Iterator[dict[str, np.ndarray]]:
        for ep in episodes:  # one episode decoded at a time
            yield read_episode(ds, ep, cache)

    info = {k: v for k, v in ds.info.items() if k != "features"} | {"features": {k: {f: v for f, v in spec.items() if f != "info"} for k, spec in ds.features.items()}}
    store = write_store_atomically(
        cfg.out, generate(), env_id=env_id, fps=ds.fps, source=f"LeRobot {ds.version} dataset {cfg.src.name} (data.import_lerobot)",
        extra_attrs={
            "lerobot_episode_index": [int(e["episode_index"]) for e in episodes],
            "episode_tasks": [list(e.get("tasks") or []) for e in episodes],
            "lerobot_keys": {k: store_key(k) for k in (*ds.vector_keys, *ds.image_keys, *ds.video_keys)},
            "lerobot_info": json.loads(json.dumps(info, default=str)),
        },
        overwrite=cfg.overwrite,
    )
    store.check()
    return store


def main() -> None:
    cfg = tyro.cli(ImportLeRobotConfig)
    try:
        store = import_lerobot(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {store.path}: {store.n_episodes} episodes, {store.n_steps} steps, keys {store.keys}")


if __name__ == "__main__":
    main()
