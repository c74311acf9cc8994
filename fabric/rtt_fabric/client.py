"""A small blocking client for the node daemon's control socket.

Used by `rtt fabric status`, by the coordinator, and by tests and benchmarks. One request at a
time per connection; replies are matched by `id`.
"""

from __future__ import annotations

import itertools
import socket
from pathlib import Path
from typing import Any

import orjson

from rtt_fabric import protocol


class ClientError(Exception):
    """The daemon answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Client:
    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._ids = itertools.count(1)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the reply's fields; raise ClientError on an error reply."""
        request_id = next(self._ids)
        self._sock.sendall(protocol.frame({"op": op, "id": request_id, **fields}))
        reply = self.receive()
        if reply.get("id") not in (request_id, None):
            raise ClientError("protocol", f"reply for request {reply.get('id')}, not {request_id}")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise ClientError(str(err.get("code", "error")), str(err.get("message", "")))
        return reply

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are: for tests that speak the protocol badly on purpose."""
        self._sock.sendall(data)

    def receive(self) -> dict[str, Any]:
        length = protocol.frame_length(self._exactly(protocol.HEADER.size))
        reply = orjson.loads(self._exactly(length))
        if not isinstance(reply, dict):
            raise ClientError("protocol", "a reply must be a JSON object")
        return reply

    def _exactly(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
