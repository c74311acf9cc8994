"""The flight recorder: bucket geometry, merged-window percentiles, and what the C core records.

The percentile tests are the SLO gate's own accuracy: a window's p99 read from merged buckets is
within 2% of the exact p99 of the same latencies, where averaging per-interval p99s is not.
"""

from __future__ import annotations

import math
import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtt_fabric import _ring, flight, ring


@given(st.integers(min_value=0, max_value=(1 << 37) - 1))
def test_every_latency_falls_inside_its_bucket(value: int) -> None:
    low, high = flight.bucket_bounds(_ring.bucket(value))
    assert low <= value < high
    assert high - low <= max(1, low / 64)  # 1/64 relative width past the exact range


def test_buckets_tile_the_range_without_gaps() -> None:
    previous_high = 0
    for index in range(flight.BUCKETS):
        low, high = flight.bucket_bounds(index)
        assert low == previous_high
        previous_high = high
    assert _ring.bucket(1 << 40) == flight.BUCKETS - 1  # beyond the range: the last bucket


def exact(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_window_p99_from_merged_buckets_is_within_2_percent_of_exact() -> None:
    rng = random.Random(7)
    # Ten one-second intervals of a lognormal latency around 20 µs, one of them congested.
    intervals = [[int(rng.lognormvariate(math.log(20_000), 0.4 if i != 6 else 1.2))
                  for _ in range(5_000)] for i in range(10)]
    merged = flight.Histogram.of([])
    for values in intervals:
        merged = merged + flight.Histogram.of(values)
    everything = [v for values in intervals for v in values]
    for q in (0.5, 0.95, 0.99):
        got = merged.quantile(q)
        assert got is not None
        assert abs(got - exact(everything, q)) <= 0.02 * exact(everything, q)

    # Averaging the intervals' p99s misses the congested second's tail: off by more than five
    # times the tolerance the merged buckets meet.
    averaged = sum(exact(values, 0.99) for values in intervals) / len(intervals)
    assert abs(averaged - exact(everything, 0.99)) > 0.10 * exact(everything, 0.99)


def test_windows_are_differences_of_cumulative_reads() -> None:
    fd, page = flight.create(7)
    try:
        writer = _ring.Flight(page)
        before = flight.read(page)
        for ns in (100, 200, 300):
            writer.received(_ring.monotonic_ns() - ns, 10, 0)
        window = flight.read(page) - before
        assert window.route_id == 7
        assert window.counters["rx_frames"] == 3
        assert window.counters["rx_bytes"] == 30
        assert window.histogram.total == 3
        writer.close()
    finally:
        page.close()
        os.close(fd)


def test_the_ring_records_frames_latency_and_counters_when_given_a_page() -> None:
    fd, page = flight.create(1)
    producer = ring.create(slot_count=64, max_payload=100)
    consumer = ring.attach(os.dup(producer.fd), flight=page)
    sender = _ring.Ring(producer.mapping, flight=page)
    try:
        assert sender.send_many(1, 0, [b"a" * 10] * 5) == 5
        assert sender.push(1, 5, b"b" * 20, _ring.FLAG_MARK)
        frames = consumer.ring.drain_flagged(100)
        assert [f[3] for f in frames] == [0] * 5 + [_ring.FLAG_MARK]
        sample = flight.read(page)
        assert sample.counters["tx_frames"] == sample.counters["rx_frames"] == 6
        assert sample.counters["tx_bytes"] == sample.counters["rx_bytes"] == 70
        assert sample.counters["rx_marked"] == 1
        assert sample.histogram.total == 6
        assert sample.qdepth == 0
        with pytest.raises(ValueError, match="exceeds max_payload"):
            sender.push(1, 6, b"x" * (sender.max_payload + 1))
        assert flight.read(page).counters["oversize"] == 1
    finally:
        sender.close()
        consumer.close()
        producer.close()
        page.close()
        os.close(fd)


def test_a_sealed_ring_is_finished_only_once_drained() -> None:
    end = ring.create(slot_count=8, max_payload=32)
    try:
        assert end.ring.push(1, 0, b"last")
        end.ring.seal()
        assert end.ring.sealed
        assert not end.ring.finished()
        assert end.ring.drain(8) == [(1, 0, b"last")]
        assert end.ring.finished()
    finally:
        end.close()


def test_stream_frames_round_trip_and_a_bad_crc_is_skipped_and_counted() -> None:
    fd, page = flight.create(3)
    try:
        recorder = _ring.Flight(page)
        data = bytearray(_ring.encode(3, 10, [b"one", b"two", b"three"], 0, 1000))
        data[32 + 3 + 32 + 1] ^= 0xFF  # a payload byte of the second frame
        frames, used, bad = _ring.decode(data + b"\x52\x54", 1000, recorder)
        assert [(f[1], f[2]) for f in frames] == [(10, b"one"), (12, b"three")]
        assert (used, bad) == (len(data), 1)
        assert flight.read(page).counters["crc_errors"] == 1
        recorder.close()
    finally:
        page.close()
        os.close(fd)


def test_the_token_bucket_banks_a_burst_and_refills_at_its_rate() -> None:
    gate = _ring.Gate(1000.0, 10.0)
    assert gate.take_n(25) == 10
    assert not gate.take()
    gate.refund(2)
    assert gate.take_n(5) == 2
