"""One control connection as the daemon sees it: an ordered outbox that can carry descriptors.

Replies and pushed lane sets share the connection, so every write goes through one queue and
one pump task, in order. A message with descriptors is sent with `sendmsg(SCM_RIGHTS)` on a
duplicate of the connection's socket, once asyncio's own write buffer is empty, so the bytes and
their descriptors keep their place in the stream. Used by the node daemon.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import os
import socket

_ids = itertools.count(1)


class Session:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.id = next(_ids)
        self.services: set[str] = set()  # registered on this connection: its ends to attach
        self._writer = writer
        self._queue: asyncio.Queue[tuple[bytes, tuple[int, ...]] | None] = asyncio.Queue()
        self._pump = asyncio.create_task(self._run())

    def __hash__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and other.id == self.id

    def __lt__(self, other: Session) -> bool:
        return self.id < other.id

    def put(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        """Queue one framed message with descriptors it owns: they are closed once it is sent,
        or once the connection is gone."""
        self._queue.put_nowait((data, fds))

    async def close(self) -> None:
        """Send what is queued, then stop."""
        self._queue.put_nowait(None)
        with contextlib.suppress(ConnectionError, OSError):
            await self._pump

    async def _run(self) -> None:
        broken = False
        while (item := await self._queue.get()) is not None:
            data, fds = item
            try:
                if not broken:
                    await (self._send_fds(data, fds) if fds else self._send(data))
            except (ConnectionError, OSError):
                broken = True  # keep draining the queue so every descriptor is closed
            finally:
                for fd in fds:
                    os.close(fd)

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def _send_fds(self, data: bytes, fds: tuple[int, ...]) -> None:
        transport = self._writer.transport
        await self._writer.drain()
        while transport.get_write_buffer_size():
            await asyncio.sleep(0.0005)
        if transport.is_closing():
            raise ConnectionError("connection closed")
        raw = transport.get_extra_info("socket")
        dup = socket.socket(fileno=os.dup(raw.fileno()))  # shares O_NONBLOCK with the original
        try:
            while True:
                try:
                    sent = dup.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 array.array("i", fds))])
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.0005)
        finally:
            dup.close()
        if sent < len(data):
            await self._send(data[sent:])
