"""`rtt tap --flight 5s`: per-route flight windows from a running node, as NDJSON.

The daemon's `flight` request returns each route's cumulative page (counters, breaker, non-zero
histogram buckets). The tap reads it every interval and writes, per route, the difference of two
reads: the window's percentiles come from the window's merged buckets. One line per route per
interval:

    {"ts": "2026-11-27T21:40:01.250Z", "route_id": 3, "from": ..., "to": ..., "class": ...,
     "lane": "shm", "interval_s": 1.0, "frames": 812, "p50": 3.1, "p95": 7.9, "p99": 12.4,
     "qdepth": 0, "drops": 0, "marked": 0, "nacked": 0, "crc_errors": 0, "breaker_state":
     "closed", "syscalls_delta": 40}

Latencies are microseconds, enqueue to dequeue; null when the window had no frame. `qdepth` is
frames sent but not yet received at the end of the window. Called by the `rtt` dispatcher.
"""

from __future__ import annotations

import datetime
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from rtt_fabric import flight
from rtt_fabric.client import Client

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


class Sink(Protocol):
    def write(self, text: str, /) -> Any: ...
    def flush(self) -> Any: ...


def duration(text: str) -> float:
    """'5s', '500ms', '2m' or a bare number of seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r}: expected a duration such as 5s, 500ms or 2m")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def windows(before: Mapping[str, Any], after: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One line per route present in both reads (a route that appeared meanwhile starts at
    its first read)."""
    earlier = {e["route_id"]: e for e in before["routes"]}
    stamp = datetime.datetime.fromtimestamp(after["ts"], datetime.UTC)
    for entry in after["routes"]:
        now = flight.from_json(entry)
        then = earlier.get(entry["route_id"])
        window = now - flight.from_json(then) if then is not None else now
        c = window.counters

        def micros(q: float, w: flight.Sample = window) -> float | None:
            value = w.histogram.quantile(q)
            return None if value is None else round(value / 1000, 3)

        yield {"ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "route_id": entry["route_id"], "from": entry["from"], "to": entry["to"],
               "class": entry["class"], "lane": entry["lane"],
               "interval_s": round(after["ts"] - (before["ts"] if then else after["ts"]), 3),
               "frames": c["rx_frames"], "p50": micros(0.5), "p95": micros(0.95),
               "p99": micros(0.99), "qdepth": now.qdepth, "drops": c["drops"],
               "marked": c["marked"], "nacked": c["nacked"], "crc_errors": c["crc_errors"],
               "breaker_state": now.breaker.name.lower(),
               "syscalls_delta": c["tx_syscalls"] + c["rx_syscalls"]}


def run(socket: Path, *, total_s: float, interval_s: float, out: Sink = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep) -> int:
    """Tap for `total_s`, a window every `interval_s`; returns the number of lines written."""
    written = 0
    with Client(socket, timeout_s=10) as client:
        before = client.call("flight")
        end = clock() + total_s
        while (left := end - clock()) > 1e-3:
            sleep(min(interval_s, left))
            after = client.call("flight")
            for line in windows(before, after):
                out.write(orjson.dumps(line).decode() + "\n")
                written += 1
            out.flush()
            before = after
    return written
