"""Write small LeRobot datasets in LeRobot's documented on-disk layouts (v3.0 and v2.1), with pyarrow and PyAV.

Independent of data.import_lerobot: it follows LeRobot's writer (src/lerobot/datasets/utils.py paths,
lerobot_dataset.py columns, video_utils.py encoding: libsvtav1, yuv420p, g=2) so the importer is tested against
the format, not against itself. Also used by bench/data_throughput.py to build large datasets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CAMERA = "observation.images.top"


def synthetic_episodes(lengths: tuple[int, ...], size: int = 64, state_dim: int = 3, action_dim: int = 2, seed: int = 0) -> list[dict]:
    """Episodes with smooth frames (a gradient and a moving square: what a video codec keeps well)."""
    rng = np.random.default_rng(seed)
    episodes = []
    ys, xs = np.mgrid[0:size, 0:size]
    for e, n in enumerate(lengths):
        frames = np.empty((n, size, size, 3), dtype=np.uint8)
        for t in range(n):
            frames[t, ..., 0] = (xs * 255 // size + 7 * t) % 256
            frames[t, ..., 1] = ys * 255 // size
            frames[t, ..., 2] = (40 * e) % 256
            c = (3 * t + 5 * e) % (size - 16)
            frames[t, c : c + 16, c : c + 16] = 255
        episodes.append({
            "state": rng.normal(size=(n, state_dim)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
            "frames": frames,
            "task": f"task {e % 2}",
        })
    return episodes


def encode_video(path: Path, frames: np.ndarray, fps: int, codec: str = "libsvtav1") -> None:
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "2", "crf": "30"} if codec == "libsvtav1" else {"g": "2"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def features(ep: dict, size: int, codec: str) -> dict:
    vector = lambda n, name: {"dtype": "float32", "shape": [n], "names": [f"{name}_{i}" for i in range(n)]}  # noqa: E731
    return {
        "observation.state": vector(ep["state"].shape[1], "s"),
        "action": vector(ep["action"].shape[1], "a"),
        CAMERA: {"dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channels"],
                 "info": {"video.height": size, "video.width": size, "video.codec": codec, "video.pix_fmt": "yuv420p", "video.fps": 10}},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def frame_table(ep: dict, episode_index: int, first_index: int, task_index: int, fps: int):
    import pyarrow as pa

    n = len(ep["action"])
    return pa.table({
        "observation.state": pa.array(list(ep["state"]), type=pa.list_(pa.float32(), ep["state"].shape[1])),
        "action": pa.array(list(ep["action"]), type=pa.list_(pa.float32())),
        "timestamp": pa.array(np.arange(n, dtype=np.float32) / np.float32(fps), type=pa.float32()),
        "frame_index": pa.array(np.arange(n), type=pa.int64()),
        "episode_index": pa.array(np.full(n, episode_index), type=pa.int64()),
        "index": pa.array(first_index + np.arange(n), type=pa.int64()),
        "task_index": pa.array(np.full(n, task_index), type=pa.int64()),
    })


def write_v3(root: Path, episodes: list[dict], fps: int = 10, episodes_per_file: int = 2, codec: str = "libsvtav1") -> Path:
    """v3.0: several episodes per data file and per video file, located through meta/episodes parquet rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = episodes[0]["frames"].shape[1]
    tasks = sorted({ep["task"] for ep in episodes})
    rows, first = [], 0
    for file_index, start in enumerate(range(0, len(episodes), episodes_per_file)):
        group = list(range(start, min(start + episodes_per_file, len(episodes))))
        tables, offset = [], 0.0
        for e in group:
            ep, n = episodes[e], len(episodes[e]["action"])
            tables.append(frame_table(ep, e, first, tasks.index(ep["task"]), fps))
            rows.append({
                "episode_index": e, "tasks": [ep["task"]], "length": n,
                "data/chunk_index": 0, "data/file_index": file_index, "dataset_from_index": first, "dataset_to_index": first + n,
                f"videos/{CAMERA}/chunk_index": 0, f"videos/{CAMERA}/file_index": file_index,
                f"videos/{CAMERA}/from_timestamp": offset, f"videos/{CAMERA}/to_timestamp": offset + n / fps,
                "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                "stats/action/mean": ep["action"].mean(axis=0).tolist(),
            })
            first += n
            offset += n / fps
        path = root / V3_DATA.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), path)
        encode_video(root / V3_VIDEO.format(video_key=CAMERA, chunk_index=0, file_index=file_index), np.concatenate([episodes[e]["frames"] for e in group]), fps, codec)
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": list(range(len(tasks))), "__index_level_0__": tasks}), root / "meta/tasks.parquet")
    info = {
        "codebase_version": "v3.0", "robot_type": "testbot", "total_episodes": len(episodes), "total_frames": first, "total_tasks": len(tasks),
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
        "data_path": V3_DATA, "video_path": V3_VIDEO, "features": features(episodes[0], size, codec),
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    (root / "meta/stats.json").write_text(json.dumps({"action": {"mean": np.concatenate([e["action"] for e in episodes]).mean(axis=0).tolist()}}))
    return root


def write_v21(root: Path, episodes: list[dict], fps: int = 10, codec: str = "libsvtav1") -> Path:
    """v2.1: one parquet and one mp4 per episode, episodes in meta/episodes.jsonl."""
    import pyarrow.parquet as pq

    size = episodes[0]["frames"].shape[1]
    tasks = sorted({ep["task"] for ep in episodes})
    lines, first = [], 0
    for e, ep in enumerate(episodes):
        n = len(ep["action"])
        path = root / V21_DATA.format(episode_chunk=0, episode_index=e)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame_table(ep, e, first, tasks.index(ep["task"]), fps), path)
        encode_video(root / V21_VIDEO.format(episode_chunk=0, video_key=CAMERA, episode_index=e), ep["frames"], fps, codec)
        lines.append({"episode_index": e, "tasks": [ep["task"]], "length": n})
        first += n
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    info = {
        "codebase_version": "v2.1", "robot_type": "testbot", "total_episodes": len(episodes), "total_frames": first, "total_tasks": len(tasks),
        "total_videos": len(episodes), "total_chunks": 1, "chunks_size": 1000, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
        "data_path": V21_DATA, "video_path": V21_VIDEO, "features": features(episodes[0], size, codec),
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    return root
