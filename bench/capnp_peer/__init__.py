"""Cap'n Proto RPC peer for bench/fabric.py: a `status()` call over a Unix socket.

pycapnp is a benchmark peer only, not a project dependency: install it by hand
(`.venv/bin/pip install pycapnp`). `python -m bench.capnp_peer SOCKET` serves the interface in
status.capnp; `round_trips` is the client side, run by bench/fabric.py in its own process.
pycapnp 2.x has only an asyncio API, so both sides run asyncio with the KJ loop inside it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import capnp  # type: ignore[import-untyped]  # pycapnp ships no type information

SCHEMA: Any = capnp.load(str(Path(__file__).with_name("status.capnp")))
GRAPH_HASH = "sha256-" + "ab" * 32  # the same shape as the daemon's reply


class _Status(SCHEMA.Status.Server):  # type: ignore[misc]  # generated at run time
    async def status(self, _context: Any, **_: Any) -> None:
        _context.results.epoch = 42
        _context.results.graphHash = GRAPH_HASH


async def _serve_forever(path: Path) -> None:
    async def connected(stream: Any) -> None:
        await capnp.TwoPartyServer(stream, bootstrap=_Status()).on_disconnect()

    server = await capnp.AsyncIoStream.create_unix_server(connected, str(path))
    async with server:
        await server.serve_forever()


def serve(path: Path) -> None:
    """Serve until killed (SIGTERM ends the process)."""
    asyncio.run(capnp.run(_serve_forever(path)))


async def _calls(path: Path, warmup: int, calls: int) -> list[float]:
    stream = await capnp.AsyncIoStream.create_unix_connection(str(path))
    status = capnp.TwoPartyClient(stream).bootstrap().cast_as(SCHEMA.Status)
    seconds = []
    for i in range(warmup + calls):
        start = time.perf_counter()
        reply = await status.status()
        elapsed = time.perf_counter() - start
        if reply.graphHash != GRAPH_HASH:
            raise RuntimeError("the capnp peer answered something else")
        if i >= warmup:
            seconds.append(elapsed)
    return seconds


def round_trips(path: Path, *, warmup: int, calls: int) -> list[float]:
    """Seconds per `status()` RPC, one call in flight at a time, on one connection."""
    result: list[float] = asyncio.run(capnp.run(_calls(path, warmup, calls)))
    return result
