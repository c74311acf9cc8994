"""The tcp lane's connections between nodes: a data listener, and the connector that dials it.

The sending node's daemon dials the receiving node's data listener (its own, for a tcp route
within one node), proves itself with a hello, and hands the connected socket to the publisher;
the receiving daemon hands the accepted socket to the subscriber. After the hello the daemons
step aside: frames go service to service.

Hello: a 4-byte big-endian length, then JSON `{"route": [from, to, class], "generation": n,
"ts": unix seconds, "mac": hex}`. `mac` is HMAC-SHA256 under the cluster key of the canonical
JSON of the other fields. The receiver refuses a bad mac or a `ts` more than `MAX_SKEW_S` away,
so a local process that can reach the port cannot splice itself into a route. A receiver that
has the route committed answers one byte, `ACK`, and only then does the sender hand the socket
to its publisher; otherwise it closes, and the sender retries (the receiving node may commit the
route a moment later than the sending one). Nodes share the key file given by `--cluster-key`;
without one a daemon makes a random key, which serves tcp routes within that node only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson

from rtt_fabric import canonical

HELLO = struct.Struct(">I")
ACK = b"\x01"
MAX_HELLO = 4096
MAX_SKEW_S = 60.0
Address = tuple[str, int]


def load_key(path: Path | None) -> bytes:
    if path is None:
        return os.urandom(32)
    key = path.read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"{path}: a cluster key needs at least 16 bytes")
    return key


def _mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, canonical.dumps(body), hashlib.sha256).hexdigest()


def hello(key: bytes, route: tuple[str, str, str], generation: int) -> bytes:
    body: dict[str, Any] = {"route": list(route), "generation": generation, "ts": int(time.time())}
    data = orjson.dumps({**body, "mac": _mac(key, body)})
    return HELLO.pack(len(data)) + data


def check_hello(key: bytes, data: bytes) -> tuple[str, str, str]:
    """The route a hello names; ValueError if it is malformed, forged or stale."""
    message = orjson.loads(data)
    if not isinstance(message, dict) or set(message) != {"route", "generation", "ts", "mac"}:
        raise ValueError("malformed hello")
    body = {k: message[k] for k in ("route", "generation", "ts")}
    if not hmac.compare_digest(str(message["mac"]), _mac(key, body)):
        raise ValueError("hello not signed with this cluster's key")
    if abs(time.time() - float(message["ts"])) > MAX_SKEW_S:
        raise ValueError("stale hello")
    route = message["route"]
    if not (isinstance(route, list) and len(route) == 3 and all(isinstance(x, str) for x in route)):
        raise ValueError("malformed route in hello")
    return (route[0], route[1], route[2])


async def dial(address: Address, greeting: bytes, *, timeout_s: float = 5.0) -> int:
    """Connect, send the hello, wait for the receiver's ACK, and return the socket's fd (the
    caller owns it). Raises ConnectionError when the receiver refuses."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, address), timeout_s)
        await asyncio.wait_for(loop.sock_sendall(sock, greeting), timeout_s)
        if await asyncio.wait_for(loop.sock_recv(sock, 1), timeout_s) != ACK:
            raise ConnectionError("the receiving node refused the route")
        return sock.detach()
    finally:
        sock.close()


class Receiver(Protocol):
    def accepts(self, route: tuple[str, str, str]) -> bool: ...
    def take(self, route: tuple[str, str, str], fd: int) -> None: ...


async def serve(listener: socket.socket, key: bytes, receiver: Receiver,
                say: Callable[[str], None]) -> None:
    """Accept connections for ever; each hello that checks out, for a route the receiver
    accepts, is acknowledged and its socket handed to `receiver.take`."""
    loop = asyncio.get_running_loop()
    greeting: set[asyncio.Task[None]] = set()  # strong references while each hello is read
    while True:
        conn, peer = await loop.sock_accept(listener)
        task = asyncio.create_task(_greet(conn, peer, key, receiver, say))
        greeting.add(task)
        task.add_done_callback(greeting.discard)


async def _greet(conn: socket.socket, peer: Any, key: bytes, receiver: Receiver,
                 say: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    try:
        header = await asyncio.wait_for(_exactly(loop, conn, HELLO.size), 5)
        (length,) = HELLO.unpack(header)
        if length > MAX_HELLO:
            raise ValueError("oversized hello")
        route = check_hello(key, await asyncio.wait_for(_exactly(loop, conn, length), 5))
    except (TimeoutError, ValueError, OSError, orjson.JSONDecodeError) as exc:
        say(f"data listener: refused {peer}: {exc}")
        conn.close()
        return
    # No await from here on: the route cannot change between the check and the hand-over.
    if not receiver.accepts(route):
        say(f"data listener: no tcp route {route} ends here yet; the sender will retry")
        conn.close()
        return
    conn.send(ACK)  # one byte into an empty socket: it cannot block
    receiver.take(route, conn.detach())


async def _exactly(loop: asyncio.AbstractEventLoop, conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = await loop.sock_recv(conn, left)
        if not chunk:
            raise ConnectionError("closed during hello")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def listen(address: Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    sock.setblocking(False)
    return sock
