"""End to end over every lane: real daemon, real service processes, routes set up by 2PC.

A publisher process and a subscriber process exchange self-checking payloads (tests/fabric/
service.py) over shm, uds and tcp, up to each lane's largest payload; oversize and corrupt
frames are refused and counted in the route's flight page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rtt_fabric import dataplane
from tests.fabric.conftest import (
    Daemon,
    commit,
    flight_of,
    link,
    register,
    report,
    spawn,
    wait_file,
)

PUB, SUB = "rtt://svc/out/frames", "rtt://svc/in/frames"
LARGEST = {"shm": dataplane.SHM_SLOT_PAYLOAD, "uds": dataplane.MAX_PAYLOAD,
           "tcp": dataplane.MAX_PAYLOAD}

pytestmark = pytest.mark.e2e


def exchange(node: Daemon, tmp_path: Path, *, lane: str, sizes: list[int], count: int,
             arrive: int, corrupt: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a subscriber and a publisher. On shm the subscriber reads only once the publisher is
    done, so the publisher can corrupt a frame in its slot before anyone reads it; a stream
    frame is corrupted before it is written, so there the two run side by side."""
    ready, go = tmp_path / f"{lane}.ready", tmp_path / f"{lane}.go"
    hold = {"go": go} if lane == "shm" else {}
    sub = spawn(node, "sub", tmp_path / f"{lane}.sub.json", service="receiver", saddr=SUB,
                count=arrive, ready=ready, timeout=30, **hold)
    wait_file(ready, sub)
    pub = spawn(node, "pub", tmp_path / f"{lane}.pub.json", service="sender", saddr=PUB,
                count=count, sizes=",".join(map(str, sizes)),
                corrupt_at=count // 2 if corrupt else -1)
    sent = report(pub, tmp_path / f"{lane}.pub.json")
    go.write_text("go")
    return sent, report(sub, tmp_path / f"{lane}.sub.json")


@pytest.mark.parametrize("lane", ["shm", "uds", "tcp"])
def test_frames_cross_every_lane_intact_and_in_order(daemon: Daemon, tmp_path: Path,
                                                     lane: str) -> None:
    register(daemon, "sender", PUB)
    register(daemon, "receiver", SUB)
    # Rated well above what the test sends, and buffered, so admission drops nothing here.
    commit(daemon, "add", [{"op": "add", "link": link(PUB, SUB, lane=lane, qps=1_000_000,
                                                     backpressure="buffer")}])
    largest = LARGEST[lane]
    sizes = [8, 64, 1000, largest, largest + 1, 4096 if lane != "shm" else largest]
    expected = [s for s in range(120) if sizes[s % len(sizes)] <= largest]
    sent, got = exchange(daemon, tmp_path, lane=lane, sizes=sizes, count=120,
                         arrive=len(expected), corrupt=True)

    oversize = 120 // len(sizes)  # every sixth payload is one byte too large
    assert sent["oversize"] == oversize
    assert sent["admitted"] == 120 - oversize
    # Every admitted frame arrived intact (payload checks out) and in order, the corrupt one
    # was dropped by the crc32c check before it reached the service.
    assert got["seqs"] == expected
    assert got["bad"] == 0
    # Frame ids run on without a repeat; the one gap is the corrupt frame's id.
    corrupt_id = sum(1 for seq in expected if seq < 60)
    assert got["frame_ids"] == [i for i in range(len(expected) + 1) if i != corrupt_id]
    assert got["senders"] == [PUB]

    route = flight_of(daemon, PUB, SUB)
    counters = route["counters"]
    assert counters["oversize"] == oversize
    assert counters["crc_errors"] == 1
    assert counters["rx_frames"] == len(expected)
    assert counters["tx_frames"] >= len(expected)
    assert sum(n for _, n in route["buckets"]) == len(expected)  # a latency per frame
