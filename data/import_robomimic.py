"""Import a robomimic hdf5 dataset into a zarr episode store, one demo at a time.

    python -m data.import_robomimic lift_ph_image.hdf5 demos/lift.zarr
    python -m data.import_robomimic can.hdf5 demos/can_abs.zarr --absolute-actions

robomimic layout (https://robomimic.github.io/docs/datasets/overview.html):
    data/                     attrs: env_args (JSON: env_name, env_kwargs incl. controller_configs), total
    data/demo_N/obs/<key>     (T, ...) low-dim vectors and (T, H, W, 3) uint8 images (<camera>_image)
    data/demo_N/actions       (T, A)
    data/demo_N/rewards, dones (T,)

Store keys written:
    action            float32 (T, A), robomimic's actions (or absolute ones, see below)
    proprio           robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos (when present)
    state             proprio then `object` (the layout of `envs.robosuite`, so robosuite/Lift evaluates it)
    image_<camera>    every <camera>_image obs key, uint8 (T, H, W, 3)
    obs_<key>         with --keep-raw-obs, every other obs key unchanged
The store's attrs keep env_args, the source file and each demo's name.

--absolute-actions turns delta OSC_POSE actions into absolute targets, the way the controller reads them:
goal position = eef position + delta * output scale, goal orientation = rotation(delta * scale) * eef
orientation, as an axis-angle. Only possible when env_args names an OSC_POSE controller with control_delta
and the demos record robot0_eef_pos and robot0_eef_quat; otherwise the import stops with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from data.store import EpisodeStore, write_store_atomically

PROPRIO_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
OUR_TASKS = {"Lift": "robosuite/Lift", "PickPlaceCan": "robosuite/PickPlaceCan"}


class RobomimicFormatError(ValueError):
    """A robomimic file that does not have the expected layout."""


@dataclass(frozen=True)
class ImportConfig:
    src: tyro.conf.Positional[Path]
    """robomimic hdf5 file."""
    out: tyro.conf.Positional[Path]
    """Zarr store to write (must not exist unless --overwrite)."""
    absolute_actions: bool = False
    """Convert delta OSC_POSE actions to absolute end-effector targets (needs the controller config in env_args)."""
    keep_raw_obs: bool = False
    """Also copy every other obs key unchanged, as data/obs_<key>."""
    overwrite: bool = False
    """Replace an existing store at `out`."""


def _demo_names(data) -> list[str]:
    names = [n for n in data.keys() if re.fullmatch(r"demo_\d+", n)]
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def read_env_args(data, src: Path) -> dict[str, Any]:
    raw = data.attrs.get("env_args")
    if raw is None:
        raise RobomimicFormatError(f"{src}: data/ has no env_args attribute; expected robomimic's JSON env metadata")
    try:
        return json.loads(raw if isinstance(raw, str) else raw.decode())
    except (ValueError, AttributeError) as e:
        raise RobomimicFormatError(f"{src}: data.attrs['env_args'] is not JSON: {e}") from e


def osc_scales(env_args: dict[str, Any], src: Path) -> tuple[np.ndarray, np.ndarray]:
    """(position scale (3,), rotation scale (3,)) of a delta OSC_POSE controller in env_args, or raise why not."""

    def find(node: Any) -> dict | None:
        if isinstance(node, dict):
            if node.get("type") == "OSC_POSE":
                return node
            for value in node.values():
                if (found := find(value)) is not None:
                    return found
        return None

    controller = find(env_args.get("env_kwargs", {}).get("controller_configs", {}))
    if controller is None:
        raise RobomimicFormatError(f"{src}: --absolute-actions needs an OSC_POSE controller in env_args.env_kwargs.controller_configs; found none")
    if not controller.get("control_delta", controller.get("input_type", "delta") == "delta"):
        raise RobomimicFormatError(f"{src}: the actions are already absolute (control_delta is false)")
    out_max = np.broadcast_to(np.asarray(controller.get("output_max", [0.05] * 3 + [0.5] * 3), dtype=np.float64), (6,))
    in_max = np.broadcast_to(np.asarray(controller.get("input_max", 1.0), dtype=np.float64), (6,))
    scale = out_max / in_max
    return scale[:3], scale[3:]


def delta_to_absolute(actions: np.ndarray, eef_pos: np.ndarray, eef_quat_xyzw: np.ndarray, pos_scale: np.ndarray, rot_scale: np.ndarray) -> np.ndarray:
    """(T, 7) delta [dpos, drot axis-angle, gripper] -> (T, 7) absolute [pos, axis-angle, gripper]."""
    from scipy.spatial.transform import Rotation

    goal_pos = eef_pos + actions[:, :3] * pos_scale
    goal_rot = Rotation.from_rotvec(actions[:, 3:6] * rot_scale) * Rotation.from_quat(eef_quat_xyzw)
    return np.concatenate([goal_pos, goal_rot.as_rotvec(), actions[:, 6:]], axis=1).astype(np.float32)


def read_demo(demo, name: str, src: Path, cfg: ImportConfig, scales: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    where = f"{src}:data/{name}"
    if "actions" not in demo or "obs" not in demo:
        raise RobomimicFormatError(f"{where}: expected 'actions' and an 'obs' group, found {sorted(demo.keys())}")
    actions = np.asarray(demo["actions"], dtype=np.float32)
    if actions.ndim != 2 or len(actions) == 0:
        raise RobomimicFormatError(f"{where}/actions has shape {actions.shape}; expected (T, action_dim) with T >= 1")
    obs_group = demo["obs"]
    obs = {}
    for key in obs_group.keys():
        value = np.asarray(obs_group[key])
        if len(value) != len(actions):
            raise RobomimicFormatError(f"{where}/obs/{key} has {len(value)} steps but actions has {len(actions)}")
        obs[key] = value
    episode: dict[str, np.ndarray] = {}
    if all(k in obs for k in PROPRIO_KEYS):
        episode["proprio"] = np.concatenate([obs[k].reshape(len(actions), -1) for k in PROPRIO_KEYS], axis=1).astype(np.float32)
        if "object" in obs:
            episode["state"] = np.concatenate([episode["proprio"], obs["object"].reshape(len(actions), -1)], axis=1).astype(np.float32)
    for key, value in obs.items():
        if key.endswith("_image"):
            if value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] != 3:
                raise RobomimicFormatError(f"{where}/obs/{key} is {value.dtype} {value.shape}; expected uint8 (T, H, W, 3)")
            episode[f"image_{key[: -len('_image')]}"] = value
        elif cfg.keep_raw_obs:
            episode[f"obs_{key}"] = value.reshape(len(actions), -1).astype(np.float32)
    if not episode:
        raise RobomimicFormatError(f"{where}/obs has keys {sorted(obs)}; found neither {PROPRIO_KEYS} nor any *_image key (use --keep-raw-obs)")
    if scales is not None:
        if "robot0_eef_pos" not in obs or "robot0_eef_quat" not in obs:
            raise RobomimicFormatError(f"{where}: --absolute-actions needs obs robot0_eef_pos and robot0_eef_quat")
        if actions.shape[1] != 7:
            raise RobomimicFormatError(f"{where}/actions has {actions.shape[1]} columns; --absolute-actions handles one arm (7)")
        actions = delta_to_absolute(actions, obs["robot0_eef_pos"].astype(np.float64), obs["robot0_eef_quat"].astype(np.float64), *scales)
    episode["action"] = actions
    return episode


def import_robomimic(cfg: ImportConfig) -> EpisodeStore:
    import h5py

    if not cfg.src.is_file():
        raise RobomimicFormatError(f"{cfg.src}: no such file")
    try:
        f = h5py.File(cfg.src, "r")
    except OSError as e:
        raise RobomimicFormatError(f"{cfg.src}: not a readable hdf5 file: {e}") from e
    with f:
        if "data" not in f:
            raise RobomimicFormatError(f"{cfg.src}: no 'data' group; expected robomimic's data/demo_N/{{obs, actions, rewards, dones}}")
        data = f["data"]
        names = _demo_names(data)
        if not names:
            raise RobomimicFormatError(f"{cfg.src}: data/ has no demo_N groups (found {sorted(data.keys())[:5]})")
        env_args = read_env_args(data, cfg.src)
        scales = osc_scales(env_args, cfg.src) if cfg.absolute_actions else None
        env_name = str(env_args.get("env_name", "unknown"))
        fps = float(env_args.get("env_kwargs", {}).get("control_freq", 20))

        def episodes() -> Iterator[dict[str, np.ndarray]]:
            for name in names:  # one demo in RAM at a time
                yield read_demo(data[name], name, cfg.src, cfg, scales)

        store = write_store_atomically(
            cfg.out,
            episodes(),
            env_id=OUR_TASKS.get(env_name, f"robomimic/{env_name}"),
            fps=fps,
            source=f"robomimic hdf5 {cfg.src.name} (data.import_robomimic)",
            extra_attrs={"env_args": env_args, "demo_names": names, "absolute_actions": cfg.absolute_actions},
            overwrite=cfg.overwrite,
        )
    store.check()
    return store


def main() -> None:
    cfg = tyro.cli(ImportConfig)
    try:
        store = import_robomimic(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {store.path}: {store.n_episodes} episodes, {store.n_steps} steps, keys {store.keys}")


if __name__ == "__main__":
    main()
