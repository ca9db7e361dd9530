"""Importer throughput and memory: frames/s and peak RSS of data.import_lerobot and data.import_dp.

    python -m bench.import_throughput --out bench/results/import_throughput.json
    python -m bench.import_throughput --parts dp --dp-frames 20000

Protocol:
- lerobot: a LeRobot v3.0 dataset written by tests/lerobot_layout.py (LeRobot's layout and encoder settings:
  AV1 libsvtav1, yuv420p, g=2, crf 30; several episodes per parquet and mp4 file) with one 96x96 camera, a
  6-D state and a 2-D action. Its decoded frames total `ram_factor` x `ram_cap_mb` (default 4 x 512 MiB).
- dp: a diffusion_policy store (zarr format 2; 96x96 uint8 `img` with Blosc zstd one frame per chunk, Blosc lz4
  vectors) of `dp_frames` frames, imported with --map img:image_front.
- Each import runs in a fresh process (`python -m data.import_...`); frames/s = frames / its wall time; peak RSS =
  that process's ru_maxrss. The datasets are generated in another child process, so this one stays small (a
  child's ru_maxrss counts what it inherited at fork). Nothing else heavy may run meanwhile.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from bench.common import print_table, require_known, write_results

ROOT = Path(__file__).resolve().parents[1]
FRAME_BYTES = 96 * 96 * 3
PARTS = ("lerobot", "dp")


@dataclass(frozen=True)
class Args:
    parts: tuple[str, ...] = PARTS
    """Which importers to measure."""
    work: Path = Path("bench_runs/import")
    """Where the generated datasets and imported stores go (datasets are reused when present)."""
    ram_cap_mb: int = 512
    """The RAM bound claimed for the LeRobot import; the dataset's decoded frames are ram_factor times this."""
    ram_factor: float = 4.0
    episode_length: int = 300
    dp_frames: int = 20_000
    out: Path | None = None


# A child's ru_maxrss starts at its parent's RSS at fork (Linux keeps it across exec), and this process has torch
# loaded. So each import is started by a bare Python launcher, which reports its child's peak RSS.
LAUNCHER = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def timed_import(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one import in a fresh process."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, int(out.split()[-1]) / 1024


def generate(kind: str, src: Path, lengths: list[int]) -> None:
    """Write the dataset in a child process (see the module docstring), into a partial directory renamed at the end."""
    subprocess.run([sys.executable, "-m", "bench.import_throughput", "--generate", kind, str(src), json.dumps(lengths)], cwd=ROOT, check=True)


def write_dataset(kind: str, src: Path, lengths: list[int]) -> None:
    import numcodecs
    import zarr
    from zarr.storage import LocalStore

    sys.path.insert(0, str(ROOT / "tests"))
    from lerobot_layout import synthetic_episodes, write_v3

    partial = src.with_name(src.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if kind == "lerobot":
        write_v3(partial, synthetic_episodes(tuple(lengths), size=96, state_dim=6), episodes_per_file=50)
    else:
        n = sum(lengths)
        root = zarr.open_group(LocalStore(partial), mode="w-", zarr_format=2)
        data = root.create_group("data")
        img = data.create_array("img", shape=(n, 96, 96, 3), chunks=(1, 96, 96, 3), dtype="uint8", compressors=numcodecs.Blosc("zstd", 3))
        rng = np.random.default_rng(0)
        data.create_array("state", shape=(n, 6), chunks=(n, 6), dtype="float32", compressors=numcodecs.Blosc("lz4", 5))[:] = rng.normal(size=(n, 6))
        data.create_array("action", shape=(n, 2), chunks=(n, 2), dtype="float32", compressors=numcodecs.Blosc("lz4", 5))[:] = rng.normal(size=(n, 2))
        start = 0
        for i, length in enumerate(lengths):
            img[start : start + length] = synthetic_episodes((length,), size=96, seed=i)[0]["frames"]
            start += length
        root.create_group("meta").create_array("episode_ends", shape=(len(lengths),), chunks=(len(lengths),), dtype="int64", compressors=None)[:] = np.cumsum(lengths)
    shutil.rmtree(src, ignore_errors=True)
    partial.rename(src)


def lerobot_row(args: Args) -> dict:
    frames = int(args.ram_factor * args.ram_cap_mb * 2**20 / FRAME_BYTES)
    n_episodes = -(-frames // args.episode_length)
    src = args.work / f"lerobot_v3_{n_episodes}x{args.episode_length}_96px"
    if not (src / "meta" / "info.json").exists():
        generate("lerobot", src, [args.episode_length] * n_episodes)
    out = args.work / "lerobot.zarr"
    shutil.rmtree(out, ignore_errors=True)
    wall, peak = timed_import(["data.import_lerobot", str(src), str(out)])
    total = n_episodes * args.episode_length
    return {
        "part": "lerobot", "format": "LeRobot v3.0, AV1 96x96", "episodes": n_episodes, "frames": total, "decoded_gib": total * FRAME_BYTES / 2**30,
        "ram_cap_mib": args.ram_cap_mb, "wall_s": wall, "frames_per_s": total / wall, "peak_rss_mib": peak, "within_cap": peak <= args.ram_cap_mb,
    }


def dp_row(args: Args) -> dict:
    src = args.work / f"dp_{args.dp_frames}_96px.zarr"
    lengths = [args.episode_length] * (args.dp_frames // args.episode_length)
    if not (src / "meta").exists():
        generate("dp", src, lengths)
    out = args.work / "dp.zarr"
    shutil.rmtree(out, ignore_errors=True)
    wall, peak = timed_import(["data.import_dp", str(src), str(out), "--env", "pusht/PushT", "--fps", "10", "--map", "img:image_front"])
    return {"part": "dp", "format": "diffusion_policy zarr v2, Blosc, 96x96", "episodes": len(lengths), "frames": sum(lengths), "decoded_gib": sum(lengths) * FRAME_BYTES / 2**30,
            "wall_s": wall, "frames_per_s": sum(lengths) / wall, "peak_rss_mib": peak}


def main() -> None:
    if sys.argv[1:2] == ["--generate"]:  # child: python -m bench.import_throughput --generate <kind> <src> <lengths json>
        write_dataset(sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4]))
        return
    args = tyro.cli(Args)
    require_known(args.parts, PARTS, "parts")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [{"lerobot": lerobot_row, "dp": dp_row}[part](args) for part in args.parts]
    print_table(rows, ["part", "format", "episodes", "frames", "decoded_gib", "frames_per_s", "peak_rss_mib", "ram_cap_mib"])
    write_results(
        args.out, "import_throughput",
        "fresh process per import (python -m data.import_lerobot / data.import_dp); frames/s = frames / wall time of that process; "
        "peak RSS = its ru_maxrss; datasets generated by tests/lerobot_layout.py (LeRobot v3.0 layout, AV1 crf 30 g=2) and zarr v2 with Blosc",
        rows,
    )


if __name__ == "__main__":
    main()
