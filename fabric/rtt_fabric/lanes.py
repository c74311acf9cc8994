"""A service's ends of its lanes: what a publisher writes into and what a subscriber reads.

One class per (lane, direction): `ShmOut`/`ShmIn` over a ring, `StreamOut`/`StreamIn` over a
uds or tcp socket (frames back to back on the stream, the same 32-byte header as a ring slot:
fabric/FRAME.md). Each takes ownership of the descriptors the daemon passed and records into the
route's flight page. Used by `rtt_fabric.endpoints`; admission and backpressure live there.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import mmap
import os
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

from rtt_fabric import _ring, flight, ring

READ_CHUNK = 256 * 1024
STALL_S = 5.0  # a receiver that takes no byte of a half-sent frame for this long is gone
Raw = tuple[int, int, bytes, int]  # route_id, frame_id, payload, flags


@dataclasses.dataclass
class Route:
    """What both ends know of a route from the daemon's lane set."""

    key: tuple[str, str, str]
    route_id: int
    lane: str
    generation: int
    max_payload: int
    qos: dict[str, Any]


def _page(fds: list[int], index: int) -> tuple[int, mmap.mmap, _ring.Flight]:
    fd = fds[index]
    page = flight.attach(fd)
    return fd, page, _ring.Flight(page)


class _Lane:
    def __init__(self, route: Route, fds: list[int], spec: dict[str, int]) -> None:
        self.route = route
        self.retiring = False  # dropped from the lane set: read to its end, then free
        self.flight_fd, self.page, self.flight = _page(fds, spec["flight"])

    def _close_page(self) -> None:
        self.flight.close()
        self.page.close()
        os.close(self.flight_fd)


class ShmOut(_Lane):
    def __init__(self, route: Route, fds: list[int], spec: dict[str, int]) -> None:
        super().__init__(route, fds, spec)
        self.end = ring.attach(fds[spec["ring"]], doorbell=fds[spec["bell"]], flight=self.page)
        self.write = self.end.ring.push  # (route_id, frame_id, payload, flags) -> bool
        self.write_many = self.end.ring.send_many  # (route_id, first_id, payloads, flags) -> int

    def close(self) -> None:
        self.end.ring.seal()  # the subscriber drains up to here, then frees the ring
        self.end.close()
        self._close_page()


class StreamOut(_Lane):
    def __init__(self, route: Route, fds: list[int], spec: dict[str, int]) -> None:
        super().__init__(route, fds, spec)
        self.sock = socket.socket(fileno=fds[spec["sock"]])
        self.sock.setblocking(False)
        if self.sock.family != socket.AF_UNIX:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.broken = False

    def write(self, route_id: int, frame_id: int, payload: bytes, flags: int = 0) -> bool:
        return self.write_many(route_id, frame_id, [payload], flags) == 1

    def write_many(self, route_id: int, first: int, payloads: Sequence[bytes],
                   flags: int = 0) -> int:
        """All of `payloads` in one write, or none when the socket has no room. A frame once
        started is finished (waiting for room), so the stream never holds half a frame."""
        if self.broken:
            return 0
        data = _ring.encode(route_id, first, payloads, flags, self.route.max_payload)
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.broken = True  # the receiver is gone; the daemon sends a new lane set
            return 0
        calls, view = 1, memoryview(data)[sent:]
        stalled = time.monotonic() + STALL_S
        while view and not self.broken:
            select.select([], [self.sock], [], 0.1)
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                self.broken = time.monotonic() > stalled
                continue
            except OSError:
                self.broken = True
                break
            view, calls, stalled = view[n:], calls + 2, time.monotonic() + STALL_S
        if self.broken:  # the stream is cut mid-frame; the daemon sends a new lane set
            self.flight.add(flight.COUNTERS["drops"], len(payloads))
            return len(payloads)
        self.flight.sent(len(payloads), len(data) - 32 * len(payloads), calls)
        return len(payloads)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)  # EOF after the last frame: the seal of a stream
        self.sock.close()
        self._close_page()


class ShmIn(_Lane):
    def __init__(self, route: Route, fds: list[int], spec: dict[str, int]) -> None:
        super().__init__(route, fds, spec)
        os.close(fds[spec["bell"]])  # the subscriber sleeps on its own copy (wait_any)
        self.end = ring.attach(fds[spec["ring"]], flight=self.page)
        self.fd = -1

    def take(self, limit: int) -> list[Raw]:
        return self.end.ring.drain_flagged(limit)

    def finished(self) -> bool:
        return self.end.ring.finished()

    def close(self) -> None:
        self.end.close()
        self._close_page()


class StreamIn(_Lane):
    def __init__(self, route: Route, fds: list[int], spec: dict[str, int]) -> None:
        super().__init__(route, fds, spec)
        self.sock = socket.socket(fileno=fds[spec["sock"]])
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.buf = bytearray(READ_CHUNK)
        self.start = self.end = 0
        self.eof = False
        self.ready: collections.deque[Raw] = collections.deque()

    def take(self, limit: int) -> list[Raw]:
        if not self.ready and not self.eof:
            self._fill()
        out: list[Raw] = []
        while self.ready and len(out) < limit:
            out.append(self.ready.popleft())
        return out

    def _fill(self) -> None:
        if self.start == self.end:
            self.start = self.end = 0
        elif len(self.buf) - self.end < READ_CHUNK // 4:
            self.buf[:self.end - self.start] = self.buf[self.start:self.end]
            self.end -= self.start
            self.start = 0
        if len(self.buf) - self.end < self.route.max_payload + 32:
            self.buf.extend(bytes(self.route.max_payload + 32))
        try:
            n = self.sock.recv_into(memoryview(self.buf)[self.end:])
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise
            n = 0
        self.flight.add(flight.COUNTERS["rx_syscalls"], 1)
        if n == 0:
            self.eof = True
            return
        self.end += n
        try:
            frames, used, _bad = _ring.decode(memoryview(self.buf)[self.start:self.end],
                                              self.route.max_payload, self.flight)
        except _ring.CorruptFrame:
            self.eof = True  # unframed from here on: drop the rest (counted as a crc error)
            self.start = self.end
            return
        self.start += used
        self.ready.extend(frames)

    def finished(self) -> bool:
        return self.eof and not self.ready

    def close(self) -> None:
        self.sock.close()
        self._close_page()


OutLane = ShmOut | StreamOut
InLane = ShmIn | StreamIn


def open_out(route: Route, fds: list[int], spec: dict[str, int]) -> OutLane:
    return ShmOut(route, fds, spec) if route.lane == "shm" else StreamOut(route, fds, spec)


def open_in(route: Route, fds: list[int], spec: dict[str, int]) -> InLane:
    return ShmIn(route, fds, spec) if route.lane == "shm" else StreamIn(route, fds, spec)
