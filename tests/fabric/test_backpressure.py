"""Admission and backpressure against a slow consumer: each policy counted exactly.

The consumer does not read while the publisher sends, so frames meet either a full lane (an shm
ring of known slot count) or an empty token bucket (the route's rate). What `send` reports, what
the flight page counts and what the subscriber finally receives must agree frame for frame.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from rtt_fabric import dataplane, endpoints, graph, sdk
from tests.fabric.conftest import Daemon, commit, flight_of, link, register, symbol

PUB, SUB = "rtt://bp/out/a", "rtt://bp/in/b"
SENT = 300

pytestmark = pytest.mark.e2e


@pytest.fixture
def ends(daemon: Daemon, request: pytest.FixtureRequest
         ) -> Iterator[tuple[endpoints.Publisher, endpoints.Subscriber]]:
    register(daemon, "svc", PUB)
    register(daemon, "sink", SUB)
    commit(daemon, "route", [{"op": "add", "link": link(PUB, SUB, **request.param)}])
    with sdk.connect(daemon.socket, service="svc", symbols=[symbol(PUB)]) as out, \
            sdk.connect(daemon.socket, service="sink", symbols=[symbol(SUB)]) as into:
        pub, sub = out.publisher(PUB), into.subscriber(SUB)
        deadline = time.monotonic() + 10
        while not pub.routes:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        yield pub, sub


def offer(pub: endpoints.Publisher, count: int) -> tuple[int, int]:
    """Send `count` frames numbered by payload; (admitted, refused by Backpressure)."""
    admitted = refused = 0
    for seq in range(count):
        try:
            admitted += pub.send(seq.to_bytes(4, "little"))
        except endpoints.Backpressure:
            refused += 1
    return admitted, refused


def receive_all(sub: endpoints.Subscriber, pub: endpoints.Publisher) -> list[endpoints.Frame]:
    frames: list[endpoints.Frame] = []
    while batch := sub.drain(4096, timeout_s=0.3):
        frames += batch
        pub.flush()
    return frames


def seqs(frames: list[endpoints.Frame]) -> list[int]:
    return [int.from_bytes(f.payload, "little") for f in frames]


FAST = {"qps": 100_000}  # a big bucket: only the ring's room limits
SLOTS = dataplane.slot_count(graph.Link(  # the ring the daemon makes for FAST
    PUB, SUB, "p2p", "shm", "n0", "n0", "1.0.0", ("c",), 10, 100_000, "taildrop"))


@pytest.mark.parametrize("ends", [{**FAST, "backpressure": "taildrop"}], indirect=True)
def test_taildrop_drops_what_finds_the_ring_full(daemon: Daemon, ends) -> None:
    pub, sub = ends
    admitted, refused = offer(pub, SENT)
    assert (admitted, refused) == (SLOTS, 0)
    got = receive_all(sub, pub)
    assert seqs(got) == list(range(SLOTS))  # the tail was dropped, never the head
    counters = flight_of(daemon, PUB, SUB)["counters"]
    assert counters["drops"] == SENT - SLOTS
    assert counters["tx_frames"] == counters["rx_frames"] == SLOTS


@pytest.mark.parametrize("ends", [{**FAST, "backpressure": "nack"}], indirect=True)
def test_nack_refuses_to_the_caller_what_finds_the_ring_full(daemon: Daemon, ends) -> None:
    pub, sub = ends
    admitted, refused = offer(pub, SENT)
    assert (admitted, refused) == (SLOTS, SENT - SLOTS)
    assert seqs(receive_all(sub, pub)) == list(range(SLOTS))
    counters = flight_of(daemon, PUB, SUB)["counters"]
    assert counters["nacked"] == SENT - SLOTS
    assert counters["drops"] == 0


@pytest.mark.parametrize("ends", [{**FAST, "backpressure": "buffer"}], indirect=True)
def test_buffer_holds_what_finds_the_ring_full_and_loses_nothing(daemon: Daemon, ends) -> None:
    pub, sub = ends
    admitted, refused = offer(pub, SENT)
    assert (admitted, refused) == (SENT, 0)
    assert pub.backlog() == SENT - SLOTS
    assert seqs(receive_all(sub, pub)) == list(range(SENT))  # all of them, in order
    counters = flight_of(daemon, PUB, SUB)["counters"]
    assert counters["buffered"] == SENT - SLOTS
    assert counters["drops"] == 0
    assert counters["rx_frames"] == SENT


# The rate limit: 1,000 frames/s with a 10 ms budget banks 10 tokens. On uds the socket buffer
# holds every frame, so only the bucket refuses.
SLOW = {"lane": "uds", "qps": 1000, "budget_ms": 10}


@pytest.mark.parametrize("ends", [{**SLOW, "backpressure": "mark"}], indirect=True)
def test_mark_sends_over_rate_frames_flagged(daemon: Daemon, ends) -> None:
    pub, sub = ends
    admitted, refused = offer(pub, 50)
    assert (admitted, refused) == (50, 0)
    got = receive_all(sub, pub)
    assert seqs(got) == list(range(50))
    marked = [f for f in got if f.marked]
    # The first ten rode on banked tokens; the ones after found the bucket empty (a token or
    # two may refill while sending).
    assert not any(f.marked for f in got[:10])
    assert 35 <= len(marked) <= 40
    counters = flight_of(daemon, PUB, SUB)["counters"]
    assert counters["marked"] == counters["rx_marked"] == len(marked)
    assert counters["drops"] == 0


@pytest.mark.parametrize("ends", [{**SLOW, "backpressure": "taildrop"}], indirect=True)
def test_taildrop_over_rate_drops_exactly_what_send_refused(daemon: Daemon, ends) -> None:
    pub, sub = ends
    admitted, _ = offer(pub, 50)
    assert 10 <= admitted <= 15
    got = receive_all(sub, pub)
    assert len(got) == admitted
    assert flight_of(daemon, PUB, SUB)["counters"]["drops"] == 50 - admitted
    time.sleep(0.05)  # 50 tokens refill at 1,000/s
    assert offer(pub, 10) == (10, 0)
