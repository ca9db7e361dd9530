"""Atomic file writes and strict (de)serialization of configs and training state.

Every file the project writes goes to a temporary sibling first and is renamed into place, so a crash
leaves either the old file or the new one, never a half-written file that looks valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or does not match what the code expects."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints and results are meant to be shared
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


DIGEST_KEY = "content_sha256"
"""safetensors metadata entry holding `tensor_digest` of the file's tensors; checked on every load."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order: catches flipped bits that
    safetensors itself (no checksum) would load as silently wrong weights."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialized tensors with their content digest in the metadata."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return save(cpu, metadata={**(metadata or {}), DIGEST_KEY: tensor_digest(cpu)})


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from e


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return read_safetensors(path)[0]


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata; a file that is truncated, corrupt or fails its content digest is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    expected = metadata.get(DIGEST_KEY)
    if expected is not None and tensor_digest(tensors) != expected:
        raise CheckpointError(f"{path}: tensor contents do not match the digest written with them (corrupted on disk?); the file cannot be trusted")
    return tensors, metadata


# ---- frozen dataclass configs <-> JSON, with no silent defaults -------------------------------------


def config_to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn a JSON value back into the dataclass field type (tuples, nested dataclasses), checking its type."""
    origin = typing.get_origin(hint)

    def wrong(expected: str) -> CheckpointError:
        return CheckpointError(f"{where}: expected {expected}, got {type(value).__name__} {value!r:.80}")

    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(hint):
                return None
            raise wrong(" or ".join(getattr(a, "__name__", str(a)) for a in args))
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except CheckpointError as e:
                errors.append(str(e))
        raise CheckpointError("; ".join(errors))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise wrong(f"one of {list(typing.get_args(hint))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong("a list")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong(f"a list of {len(args)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong("an object")
        _, vt = typing.get_args(hint)
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if hint is bool and not isinstance(value, bool):
        raise wrong("true or false")
    if hint is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise wrong("an integer")
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise wrong("a number")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise wrong("a string")
    if hint is Path:
        if not isinstance(value, str):
            raise wrong("a path string")
        return Path(value)
    return value


def config_from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from `data`, requiring exactly its fields: no defaults filled in silently."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    missing, extra = sorted(names - set(data)), sorted(set(data) - names)
    if missing or extra:
        raise CheckpointError(
            f"{where}: fields do not match {cls.__name__}: missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{name: _coerce(data[name], hints[name], f"{where}.{name}") for name in names})


# ---- optimizer state without pickle ----------------------------------------------------------------


def optimizer_state_to_safetensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and a JSON-able skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for pid, pstate in state_dict["state"].items():
        entry = {}
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                key = f"{pid}/{name}"
                tensors[key] = value
                entry[name] = {"tensor": key}
            else:
                entry[name] = value
        skeleton["state"][str(pid)] = entry
    return tensors, skeleton


def optimizer_state_from_safetensors(tensors: dict[str, torch.Tensor], skeleton: dict[str, Any]) -> dict[str, Any]:
    state = {}
    for pid, entry in skeleton["state"].items():
        state[int(pid)] = {
            name: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v for name, v in entry.items()
        }
    return {"state": state, "param_groups": skeleton["param_groups"]}
