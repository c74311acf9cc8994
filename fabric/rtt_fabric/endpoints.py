"""Publisher and subscriber handles: a symbol's lanes, admission, backpressure and the epoch flip.

A handle holds its endpoint's whole lane set. The SDK's control thread installs each new set the
daemon pushes with `install`, under the handle's lock, so a send or a receive sees either the old
set or the new one, never a mix. Routes that stay keep their lane objects (and frame counters).

Admission, per route: a token bucket (`_ring.Gate`) of `throughput_qps` tokens a second, holding
one latency budget's worth (`throughput_qps * latency_budget_ms / 1000`, at least 1). A frame
that finds no token, or no room in the lane, gets the route's backpressure policy:

- taildrop: the frame is dropped and counted (`drops`); `send` reports it not admitted.
- mark: over the rate, the frame is still sent, with the MARK flag, and counted (`marked`);
  with no room in the lane it is dropped and counted.
- nack: the frame is refused and counted (`nacked`); `send` raises `Backpressure`.
- buffer: the frame waits in the publisher, in order, and is counted (`buffered`); buffered
  frames leave first, on later sends or `flush`. A full buffer blocks the sender, up to
  `block_s`, then raises `Backpressure`; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from rtt_fabric import _ring, flight, lanes
from rtt_fabric.ring import WaitPolicy

_DROPS, _MARKED, _NACKED, _BUFFERED, _OVERSIZE = (
    flight.COUNTERS[k] for k in ("drops", "marked", "nacked", "buffered", "oversize"))
TAKE = 64  # frames pulled per lane per pass
DEFAULT_WAIT = WaitPolicy()


class Backpressure(Exception):
    """A route refused a frame (nack), or a sender's buffer stayed full (buffer). `admitted`
    counts the admissions the call made all the same."""

    admitted = 0


class BreakerOpen(Backpressure):
    """A route's breaker is open: the daemon cut it after too many errors."""


class Frame(NamedTuple):
    sender: str  # the saddr the frame came from
    frame_id: int
    payload: bytes
    marked: bool


def _route(entry: dict[str, Any]) -> lanes.Route:
    return lanes.Route(key=(entry["from"], entry["to"], entry["class"]),
                       route_id=entry["route_id"], lane=entry["lane"],
                       generation=entry["generation"], max_payload=entry["max_payload"],
                       qos=entry["qos"])


class _Full(Exception):
    """A buffer-mode backlog is at its limit: the sender must wait (outside the lock)."""


class _Out:
    """One route as its publisher sees it: the lane plus admission state."""

    def __init__(self, lane: lanes.OutLane, next_id: int, *, buffer_limit: int) -> None:
        qos = lane.route.qos
        self.lane, self.next_id = lane, next_id
        self.route_id, self.max_payload = lane.route.route_id, lane.route.max_payload
        self.mode: str = qos["backpressure"]
        burst = max(1.0, qos["throughput_qps"] * qos["latency_budget_ms"] / 1000)
        self.gate = _ring.Gate(float(qos["throughput_qps"]), burst)
        self.backlog: collections.deque[bytes] = collections.deque()
        self.buffer_limit = buffer_limit

    @property
    def key(self) -> tuple[str, str, str]:
        return self.lane.route.key

    def batch(self, payloads: Sequence[bytes]) -> int:
        """The fast path for a run of frames: as many as there are tokens and room for, in one
        write (one release store on a ring). Returns how many went; the caller offers the rest
        one by one, so the route's policy decides their fate."""
        if self.backlog:
            return 0
        tokens = self.gate.take_n(len(payloads))
        sent = self.lane.write_many(self.lane.route.route_id, self.next_id & 0xFFFFFFFF,
                                    payloads[:tokens], 0) if tokens else 0
        if tokens > sent:
            self.gate.refund(tokens - sent)
        self.next_id += sent
        return sent

    def offer(self, payload: bytes) -> bool:
        """Admit one frame under the route's policy; True if it was sent or buffered. Raises
        Backpressure (nack) or _Full (buffer mode, backlog at its limit)."""
        if self.backlog:
            self.flush()
            if self.backlog:
                return self._buffer(payload)
        flags = 0
        if not self.gate.take():
            if self.mode != "mark":
                return self._refuse(payload, "over rate")
            flags = _ring.FLAG_MARK
        if self.lane.write(self.lane.route.route_id, self.next_id & 0xFFFFFFFF, payload, flags):
            self.next_id += 1
            if flags:
                self.lane.flight.add(_MARKED, 1)
            return True
        if flags == 0:
            self.gate.refund()
        return self._refuse(payload, "lane full")

    def _refuse(self, payload: bytes, why: str) -> bool:
        if self.mode == "buffer":
            return self._buffer(payload)
        if self.mode == "nack":
            self.lane.flight.add(_NACKED, 1)
            raise Backpressure(f"{self.key}: {why}")
        self.lane.flight.add(_DROPS, 1)
        return False

    def _buffer(self, payload: bytes) -> bool:
        if len(self.backlog) >= self.buffer_limit:
            raise _Full
        self.backlog.append(payload)
        self.lane.flight.add(_BUFFERED, 1)
        return True

    def flush(self) -> None:
        """Send buffered frames while tokens and room last."""
        route_id, write = self.lane.route.route_id, self.lane.write
        while self.backlog and self.gate.take():
            if not write(route_id, self.next_id & 0xFFFFFFFF, self.backlog[0], 0):
                self.gate.refund()
                return
            self.backlog.popleft()
            self.next_id += 1

    def close(self) -> None:
        if self.backlog:  # nothing is lost silently: frames that never left are counted
            self.lane.flight.add(_DROPS, len(self.backlog))
            self.backlog.clear()
        self.lane.close()


class Publisher:
    """Sends one symbol's frames on every route it has (one for p2p, each for a bus)."""

    def __init__(self, saddr: str, *, buffer_limit: int = 4096, block_s: float = 5.0) -> None:
        self.saddr = saddr
        self.lock = threading.Lock()
        self._routes: dict[tuple[str, str, str], _Out] = {}
        self._single: _Out | None = None  # the one route, when there is one: send's fast path
        self._buffer_limit, self._block_s = buffer_limit, block_s
        self.generations = 0  # lane sets installed so far
        self._closed = False

    def install(self, entries: Sequence[dict[str, Any]], fds: list[int]) -> bool:
        """Swap in the daemon's new lane set (control thread, under the lock). False, having
        taken no descriptor, once the handle is closed."""
        with self.lock:
            if self._closed:
                return False
            old, new = self._routes, {}
            for entry in entries:
                key = (entry["from"], entry["to"], entry["class"])
                held = old.get(key)
                if held is not None and held.lane.route.generation == entry["generation"]:
                    new[key] = old.pop(key)
                elif entry["fds"]:
                    lane = lanes.open_out(_route(entry), fds, entry["fds"])
                    new[key] = _Out(lane, held.next_id if held else 0,
                                    buffer_limit=self._buffer_limit)
                    if held is not None:  # the route changed lane: its backlog moves over
                        new[key].backlog, held.backlog = held.backlog, collections.deque()
            for gone in old.values():
                gone.close()
            self._routes = new
            self._single = next(iter(new.values())) if len(new) == 1 else None
            self.generations += 1
        return True

    @property
    def routes(self) -> list[tuple[str, str, str]]:
        return sorted(self._routes)

    def send(self, payload: bytes) -> int:
        """Offer one frame to every route; returns how many admitted it (sent or buffered)."""
        with self.lock:
            out = self._single
            if (out is not None and not out.backlog and len(payload) <= out.max_payload
                    and not out.lane.flight.breaker and out.gate.take()):
                if out.lane.write(out.route_id, out.next_id & 0xFFFFFFFF, payload, 0):
                    out.next_id += 1
                    return 1
                out.gate.refund()  # no room: the policy decides, on the general path
        return self.send_many((payload,))

    def send_many(self, payloads: Iterable[bytes]) -> int:
        """Offer each frame to every route, in order; returns the admissions (frames x routes).

        Nothing is sent when a payload is larger than some route carries (ValueError). A route
        whose breaker is open is skipped (BreakerOpen, raised after the others had theirs). A
        nacked frame does not stop the rest (Backpressure, raised at the end, with `admitted`).
        In buffer mode a full backlog makes the call wait, for up to `block_s`, then raise."""
        items = list(payloads)
        admitted, done = 0, dict[tuple[str, str, str], int]()
        problems: list[Backpressure] = []
        deadline = time.monotonic() + self._block_s
        while True:
            with self.lock:
                if not done:
                    self._check_sizes(items)
                waiting = False
                for key, out in self._routes.items():
                    if done.get(key, 0) == len(items):
                        continue
                    if out.lane.flight.breaker == flight.BreakerState.OPEN:
                        problems.append(BreakerOpen(f"{key}: breaker open"))
                        done[key] = len(items)
                        continue
                    sent, offered, refused = self._feed(out, items, done.get(key, 0))
                    admitted += sent
                    problems += refused
                    done[key] = offered
                    waiting |= offered < len(items)
            if not waiting:
                break
            if time.monotonic() > deadline:
                problems.append(Backpressure(f"{self.saddr}: buffer full for {self._block_s} s"))
                break
            time.sleep(0.0002)  # the receiver drains; the control thread flushes meanwhile
        return _settle(admitted, problems)

    def _check_sizes(self, items: list[bytes]) -> None:
        largest = max(map(len, items), default=0)
        over = [o for o in self._routes.values() if largest > o.lane.route.max_payload]
        for out in over:
            out.lane.flight.add(_OVERSIZE, sum(len(p) > out.lane.route.max_payload
                                               for p in items))
        if over:
            raise ValueError(f"payload of {largest} bytes exceeds max_payload "
                             f"{over[0].lane.route.max_payload} on {over[0].lane.route.lane}")

    @staticmethod
    def _feed(out: _Out, items: list[bytes], start: int) -> tuple[int, int, list[Backpressure]]:
        """Offer items[start:] to one route: (admitted, offered so far, refusals)."""
        sent = out.batch(items) if start == 0 and len(items) > 1 else 0
        index, refused = start + sent, list[Backpressure]()
        while index < len(items):
            try:
                sent += out.offer(items[index])
            except Backpressure as exc:
                refused.append(exc)
            except _Full:
                break
            index += 1
        return sent, index, refused

    async def send_async(self, payload: bytes) -> int:
        """`send` that waits in the event loop, not in the thread, while a buffer is full."""
        deadline = time.monotonic() + self._block_s
        while self._full() and time.monotonic() < deadline:
            self.flush()
            await asyncio.sleep(0.0005)
        return self.send(payload)

    def _full(self) -> bool:
        with self.lock:
            return any(len(o.backlog) >= o.buffer_limit for o in self._routes.values())

    def flush(self) -> int:
        """Push buffered frames out; returns how many are still waiting."""
        with self.lock:
            for out in self._routes.values():
                if out.backlog:
                    out.flush()
            return self.backlog()

    def backlog(self) -> int:
        return sum(len(out.backlog) for out in self._routes.values())

    def close(self) -> None:
        with self.lock:
            self._closed = True
            for out in self._routes.values():
                out.close()
            self._routes, self._single = {}, None


def _settle(admitted: int, problems: list[Backpressure]) -> int:
    if not problems:
        return admitted
    kind = BreakerOpen if all(isinstance(p, BreakerOpen) for p in problems) else Backpressure
    error = kind("; ".join(str(p) for p in problems[:8])
                 + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""))
    error.admitted = admitted
    raise error


class Subscriber:
    """Receives one symbol's frames from every route into it (striped: one lane per sender)."""

    def __init__(self, saddr: str, *, wait: WaitPolicy = DEFAULT_WAIT) -> None:
        self.saddr, self.wait = saddr, wait
        self.lock = threading.Lock()
        self.bell = -1
        self._lanes: list[lanes.InLane] = []  # older generations of a route come first
        self._ready: collections.deque[Frame] = collections.deque()
        self.generations = 0
        self._closed = False

    def install(self, entries: Sequence[dict[str, Any]], fds: list[int], bell: int) -> bool:
        """Take in the daemon's new lane set: new lanes open, dropped ones retire (read to
        their end, then freed). False, having taken no descriptor, once closed."""
        with self.lock:
            if self._closed:
                return False
            if self.bell < 0:
                self.bell = bell
            else:
                os.close(bell)
            live = {((e["from"], e["to"], e["class"]), e["generation"]) for e in entries}
            have = {(lane.route.key, lane.route.generation) for lane in self._lanes}
            for entry in entries:
                route = _route(entry)
                if (route.key, route.generation) not in have and entry["fds"]:
                    self._lanes.append(lanes.open_in(route, fds, entry["fds"]))
            for lane in self._lanes:
                lane.retiring = (lane.route.key, lane.route.generation) not in live
            self.generations += 1
            os.eventfd_write(self.bell, 1)  # a receiver asleep on the old set looks anew
        return True

    @property
    def lanes(self) -> int:
        """Lanes held, counting retired ones not yet drained."""
        return len(self._lanes)

    def _pull(self, limit: int) -> None:
        """Move frames from the lanes into the ready queue; free drained, retired lanes."""
        seen: set[tuple[str, str, str]] = set()
        keep = []
        for lane in self._lanes:
            key = lane.route.key
            if key in seen:  # an older generation of this route is not drained yet
                keep.append(lane)
                continue
            sender = key[0]
            self._ready.extend(Frame(sender, frame_id, payload, bool(flags))
                               for _, frame_id, payload, flags in lane.take(limit))
            if lane.retiring and lane.finished():
                lane.close()
                continue
            seen.add(key)
            keep.append(lane)
        self._lanes = keep

    def _wait_args(self) -> tuple[list[_ring.Ring], list[int]]:
        rings = [lane.end.ring for lane in self._lanes if isinstance(lane, lanes.ShmIn)]
        fds = [lane.fd for lane in self._lanes if isinstance(lane, lanes.StreamIn)
               and not lane.eof]
        return rings, fds

    def recv(self, timeout_s: float | None = None) -> Frame | None:
        """The next frame, waiting up to `timeout_s` (None: forever); None on timeout."""
        out = self.drain(1, timeout_s=timeout_s)
        return out[0] if out else None

    def drain(self, limit: int = 1024, *, timeout_s: float | None = 0) -> list[Frame]:
        """Up to `limit` frames; waits up to `timeout_s` for the first (0: don't wait)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self.lock:
                if len(self._ready) < limit:
                    self._pull(max(TAKE, limit - len(self._ready)))
                if self._ready:
                    return [self._ready.popleft() for _ in range(min(limit, len(self._ready)))]
                rings, fds = self._wait_args()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            ms = self.wait.backstop_ms if left is None else min(self.wait.backstop_ms,
                                                                 math.ceil(left * 1000))
            _ring.wait_any(rings, -1 if self.wait.busy_poll else self.bell, fds,
                           self.wait.spin_ns, 0 if self.wait.busy_poll else ms)

    async def recv_async(self) -> Frame:
        """The next frame, sleeping in the event loop (a reader on the doorbell and sockets)."""
        loop = asyncio.get_running_loop()
        while True:
            with self.lock:
                if not self._ready:
                    self._pull(TAKE)
                if self._ready:
                    return self._ready.popleft()
                rings, fds = self._wait_args()
                if _ring.arm(rings):
                    _ring.disarm(rings)
                    continue
            await self._sleep(loop, rings, [self.bell, *fds])

    async def _sleep(self, loop: asyncio.AbstractEventLoop, rings: list[_ring.Ring],
                     watched: list[int]) -> None:
        woke: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not woke.done():
                woke.set_result(None)

        for fd in watched:
            loop.add_reader(fd, wake)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woke, self.wait.backstop_ms / 1000)
        finally:
            for fd in watched:
                loop.remove_reader(fd)
            _ring.disarm(rings)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.bell)

    def close(self) -> None:
        with self.lock:
            self._closed = True
            for lane in self._lanes:
                lane.close()
            self._lanes = []
            if self.bell >= 0:
                os.close(self.bell)
                self.bell = -1
