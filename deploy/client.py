"""Robot-side client for the policy server (numpy, msgpack and websockets only).

    client = PolicyClient("ws://robot-pc:8000", token=os.environ["POLICY_TOKEN"])
    client.metadata["action_spec"]            # bounds, dim; also fps and chunking
    reply = client.infer({"state": state})    # reply["actions"]: (n, action_dim) from the observation's step on

`openpi_client.WebsocketClientPolicy` speaks the same protocol; this one also turns error frames into
`PolicyServerError` with the server's code.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from websockets.sync.client import connect

from deploy import wire


class PolicyServerError(RuntimeError):
    """The server refused a request; `code` says why (missing_key, bad_shape, bad_dtype, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class PolicyClient:
    def __init__(self, uri: str, token: str | None = None, open_timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Api-Key {token}"} if token else None
        # entered as a context manager (websockets >= 17.1 deprecates using connect() bare); close() exits it
        self._ws = connect(uri, additional_headers=headers, compression=None, max_size=None, open_timeout=open_timeout).__enter__()
        self.metadata: dict[str, Any] = wire.unpack(self._ws.recv(), max_bytes=1 << 20)

    def infer(self, obs: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self._ws.send(wire.pack(obs))
        return self._reply(self._ws.recv(timeout=timeout))

    def reset(self) -> None:
        """Clear the server's observation history for this connection (call at episode start)."""
        self.infer({"reset": True})

    @staticmethod
    def _reply(frame: str | bytes) -> dict[str, Any]:
        if isinstance(frame, str):
            try:
                error = json.loads(frame)["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "unknown", frame[:200]
            raise PolicyServerError(code, message)
        reply = wire.unpack(frame)
        if "actions" in reply:
            reply["actions"] = np.asarray(reply["actions"])
        return reply

    def close(self) -> None:
        self._ws.__exit__(None, None, None)

    def __enter__(self) -> PolicyClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
