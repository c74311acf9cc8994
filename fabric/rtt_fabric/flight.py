"""The flight recorder: one shared-memory page per route with its counters and latency histogram.

The daemon creates the page (a memfd) with the route's lane and passes it to both ends. The
sender's hot path bumps the producer counters, the receiver's hot path records each frame's
enqueue-to-dequeue latency into log-linear buckets, and nothing on either path allocates (the C
core in `_ring` does the writes). The daemon reads pages while the ends run: `rtt tap --flight`
and the breaker work from the difference of two reads, so a window's percentiles come from the
window's merged buckets, never from an average of percentiles. Layout: fabric/FRAME.md.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import mmap
from collections.abc import Iterable, Mapping
from typing import Any

from rtt_fabric import _ring, ring

SIZE = _ring.FLIGHT_SIZE
BUCKETS = _ring.FLIGHT_BUCKETS
SUB = 1 << _ring.FLIGHT_SUB_BITS
_HIST_WORD = _ring.FLIGHT_HIST // 8

# u64 word index of each counter (fabric/FRAME.md, "Flight page").
COUNTERS: Mapping[str, int] = {
    "tx_frames": 8, "tx_bytes": 9, "drops": 10, "marked": 11, "nacked": 12, "buffered": 13,
    "tx_syscalls": 14, "oversize": 15,
    "rx_frames": 16, "rx_bytes": 17, "crc_errors": 18, "rx_syscalls": 19, "rx_marked": 20,
}
BREAKER_BYTE = 192


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


def create(route_id: int, *, name: str = "rtt-flight") -> tuple[int, mmap.mmap]:
    """A new, zeroed flight page in a memfd: (fd, writable mapping)."""
    fd, page = ring.shared_file(SIZE, name)
    _ring.format_flight(page, route_id)
    return fd, page


def attach(fd: int) -> mmap.mmap:
    """Map a flight page received over the control socket (the caller keeps the fd)."""
    return mmap.mmap(fd, SIZE, ring.SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def set_breaker(page: mmap.mmap, state: BreakerState) -> None:
    page[BREAKER_BYTE:BREAKER_BYTE + 4] = int(state).to_bytes(4, "little")


def bucket_bounds(index: int) -> tuple[int, int]:
    """The latencies (ns) bucket `index` holds: [low, high)."""
    if index < SUB:
        return index, index + 1
    octave, offset = divmod(index, SUB)
    shift = octave - 1
    return (SUB + offset) << shift, (SUB + offset + 1) << shift


@dataclasses.dataclass(frozen=True, slots=True)
class Histogram:
    """Latency counts per bucket. Histograms merge by adding and window by subtracting."""

    counts: tuple[int, ...]

    @classmethod
    def of(cls, latencies_ns: Iterable[int]) -> Histogram:
        counts = [0] * BUCKETS
        for value in latencies_ns:
            counts[_ring.bucket(value)] += 1
        return cls(tuple(counts))

    @property
    def total(self) -> int:
        return sum(self.counts)

    def __add__(self, other: Histogram) -> Histogram:
        return Histogram(tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)))

    def __sub__(self, other: Histogram) -> Histogram:
        return Histogram(tuple(a - b for a, b in zip(self.counts, other.counts, strict=True)))

    def quantile(self, q: float) -> float | None:
        """The q-quantile in ns (the middle of its bucket, so within 1/128 of the true value);
        None when empty."""
        total = self.total
        if total == 0:
            return None
        rank, seen = max(1, math.ceil(q * total)), 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                low, high = bucket_bounds(index)
                return (low + high - 1) / 2
        raise AssertionError("unreachable: rank <= total")


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One read of a flight page: counters, breaker state and the histogram."""

    route_id: int
    counters: Mapping[str, int]
    breaker: BreakerState
    histogram: Histogram

    def __sub__(self, before: Sample) -> Sample:
        """What happened between `before` and this read."""
        return Sample(self.route_id,
                      {k: v - before.counters.get(k, 0) for k, v in self.counters.items()},
                      self.breaker, self.histogram - before.histogram)

    @property
    def errors(self) -> int:
        """Frames that were wrong: corrupt on arrival, or too large to send. Drops and nacks
        are the route's backpressure policy at work, not errors; gates judge them as a rate."""
        c = self.counters
        return c["crc_errors"] + c["oversize"]

    @property
    def qdepth(self) -> int:
        c = self.counters
        return max(0, c["tx_frames"] - c["rx_frames"])


def from_json(entry: Mapping[str, Any]) -> Sample:
    """A route's entry of the daemon's `flight` answer (counters, breaker, the non-zero
    buckets as [index, count] pairs) as a Sample."""
    counts = [0] * BUCKETS
    for index, count in entry["buckets"]:
        counts[index] = count
    return Sample(route_id=entry["route_id"], counters=entry["counters"],
                  breaker=BreakerState[entry["breaker"].upper()],
                  histogram=Histogram(tuple(counts)))


def read(page: mmap.mmap | memoryview) -> Sample:
    words = memoryview(page)[:SIZE].cast("Q")
    try:
        head = words[1]
        return Sample(route_id=head >> 32,
                      counters={name: words[i] for name, i in COUNTERS.items()},
                      breaker=BreakerState(words[BREAKER_BYTE // 8] & 0xFFFFFFFF),
                      histogram=Histogram(tuple(words[_HIST_WORD:_HIST_WORD + BUCKETS])))
    finally:
        words.release()
