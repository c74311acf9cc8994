"""Two-process harness shared by the lane benchmarks (bench.lanes, bench.recorder, bench.sdk).

A producer and a consumer are forked, pinned to different cores when there are two or more, and
released together by a barrier. The producer reports the CLOCK_MONOTONIC time of its first send,
the consumer the time of its last receive and, when timed, one-way latencies in ns. Both
processes read the same clock, so a latency is `receive time - stamp written by the sender`.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from rtt_fabric import ring

STAMP = struct.Struct("<Q")  # a sender's time.monotonic_ns() in the first 8 payload bytes
FORK = multiprocessing.get_context("fork")

# producer(end, count, payload, pace_ns) -> first-send ns;
# consumer(end, count, timed) -> (last-receive ns, one-way latencies in ns when timed).
Producer = Callable[[Any, int, bytes, int], int]
Consumer = Callable[[Any, int, bool], tuple[int, list[int]]]


def paced(pace_ns: int, previous: int) -> int:
    """Spin until `pace_ns` after `previous`; returns the new send time."""
    now = time.monotonic_ns()
    while now < previous + pace_ns:
        now = time.monotonic_ns()
    return now


def stamped(payload: bytes) -> bytes:
    """`payload` with the current monotonic time in its first 8 bytes."""
    return STAMP.pack(time.monotonic_ns()) + payload[STAMP.size:]


def pin(cpu: int) -> None:
    """Pin the calling thread (and threads it starts later) to one core, if there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})


def _child(fn: Callable[..., Any], cpu: int, go: Any, out: Any, *args: Any) -> None:
    pin(cpu)
    for arg in args:
        if isinstance(arg, ring.RingMap):
            arg.prefault()  # a forked child has no page table entries for the parent's mapping
    go.wait()
    out.send(fn(*args))


def run_pair(producer: Producer, consumer: Consumer, end: Any, *, count: int, size: int,
             pace_ns: int = 0) -> tuple[float, list[int]]:
    """One producer and one consumer process; returns (msgs/s, latencies)."""
    go = FORK.Barrier(2)
    prx, ptx = FORK.Pipe(duplex=False)
    crx, ctx = FORK.Pipe(duplex=False)
    payload = bytes(size)
    cons = FORK.Process(target=_child, args=(consumer, 1, go, ctx, end, count, pace_ns > 0))
    prod = FORK.Process(target=_child, args=(producer, 0, go, ptx, end, count, payload, pace_ns))
    cons.start()
    prod.start()
    start = prx.recv()
    last, lat = crx.recv()
    prod.join()
    cons.join()
    return count / ((last - start) / 1e9), lat


def pct(values: list[int], q: float) -> float:
    """The q-quantile of ns values, in µs (nan when empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000 if ordered else float("nan")


def fmt_rate(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def shm_send(end: Any, count: int, payload: bytes, pace_ns: int, *, route: int = 1) -> int:
    """The shm producer both lane benchmarks use: one push per message, spinning while the ring
    is full, paced when asked; returns the first send's CLOCK_MONOTONIC ns."""
    push, sent = end.ring.push, 0
    start = time.monotonic_ns()
    for frame in range(count):
        if pace_ns:
            sent = paced(pace_ns, sent)
        while not push(route, frame, payload):
            pass
    return start

