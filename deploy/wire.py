"""The deploy wire format: msgpack with numpy arrays as typed binary. No pickle anywhere.

Byte-compatible with `openpi_client.msgpack_numpy` (PyPI `openpi-client`): an array travels as the map
{b"__ndarray__": True, b"data": raw bytes, b"dtype": "<f4", b"shape": [..]}, a numpy scalar as
{b"__npgeneric__": True, b"data": value, b"dtype": "<f4"}. Unlike a plain msgpack-numpy decoder, `unpack`
here is strict: it accepts only numeric and bool dtypes, checks that the byte count matches the shape,
and bounds the total size, so a hostile or broken peer gets a `WireError` instead of garbage.

Errors travel as text frames holding JSON {"error": {"code": ..., "message": ...}}: openpi's client raises
on any text frame, and ours parses it into a `PolicyServerError`.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np

ALLOWED_DTYPE_KINDS = "biuf"  # bool, signed, unsigned, float: nothing that can hold objects
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class WireError(ValueError):
    """A message that does not decode into the expected structure; `code` is sent back to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_DTYPE_KINDS:
            raise TypeError(f"cannot send an array of dtype {obj.dtype}; allowed kinds: bool, int, uint, float")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in ALLOWED_DTYPE_KINDS:
            raise TypeError(f"cannot send a scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """dicts, lists, str, bytes, numbers, None, numpy arrays and scalars -> msgpack bytes."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _dtype(value: Any) -> np.dtype:
    if not isinstance(value, str):
        raise WireError("bad_array", f"array dtype must be a string like '<f4', got {type(value).__name__}")
    try:
        dtype = np.dtype(value)
    except TypeError as e:
        raise WireError("bad_array", f"unknown array dtype {value!r}") from e
    if dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.itemsize > 16:
        raise WireError("bad_array", f"array dtype {value!r} is not allowed; send bool, int, uint or float")
    return dtype


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        data, shape = obj.get(b"data"), obj.get(b"shape")
        dtype = _dtype(obj.get(b"dtype"))
        if not isinstance(data, bytes):
            raise WireError("bad_array", "array data must be binary")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape) or len(shape) > 8:
            raise WireError("bad_array", f"array shape must be a list of at most 8 non-negative ints, got {shape!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if expected != len(data):
            raise WireError("bad_array", f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        value = obj.get(b"data")
        if not isinstance(value, (bool, int, float)):
            raise WireError("bad_array", "numpy scalar data must be a number")
        return dtype.type(value)
    return obj


def unpack(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """msgpack bytes -> Python objects with numpy arrays; any malformed input raises WireError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("bad_frame", "expected a binary msgpack frame")
    if len(data) > max_bytes:
        raise WireError("too_large", f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data, object_hook=_decode, strict_map_key=False, raw=False,
            max_str_len=max_bytes, max_bin_len=max_bytes, max_array_len=1 << 20, max_map_len=1 << 16,
        )
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001  (msgpack raises several types (ExtraData, FormatError, ValueError, ...) on broken input)
        raise WireError("bad_msgpack", f"not a valid msgpack message: {type(e).__name__}") from None


def error_frame(code: str, message: str, traceback: str | None = None) -> str:
    """A structured error as a text frame (openpi clients raise on text frames; ours parse them)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if traceback is not None:
        body["traceback"] = traceback
    return json.dumps({"error": body})
