"""The SLO gate and the canary steps, through their seams: `flight` answers as nodes give them
(built here from known latencies) and a clock we own.

The accuracy test is the gate's own: across two nodes and ten intervals, the window p99 the gate
reports comes from merged buckets and is within 2% of the exact p99, where averaging the
intervals' p99s (what a gate reading per-interval percentiles would do) is far off.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from rtt_controller.core import model
from rtt_controller.reconcile import gate, rollout
from rtt_fabric import flight, graph, steps
from tests.fabric.test_flight import exact

ROUTE = ("rtt://a/out/x", "rtt://b/in/x", "p2p")
LIMITS = gate.Limits(min_samples=100, max_error_rate=0.01, max_drop_rate=0.01)
COUNTERS = ("tx_frames", "rx_frames", "drops", "crc_errors", "oversize", "marked", "nacked")


def entry(latencies_ns: list[int], *, route_id: int = 1, breaker: str = "closed",
          **counters: int) -> dict[str, Any]:
    """A route's entry of a node's `flight` answer, cumulative."""
    hist = flight.Histogram.of(latencies_ns)
    base = dict.fromkeys(COUNTERS, 0) | {"rx_frames": len(latencies_ns),
                                              "tx_frames": len(latencies_ns)}
    return {"route_id": route_id, "from": ROUTE[0], "to": ROUTE[1], "class": ROUTE[2],
            "lane": "shm", "counters": base | counters, "breaker": breaker,
            "buckets": [[i, n] for i, n in enumerate(hist.counts) if n]}


def answer(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"ts": 0.0, "routes": list(entries)}


def test_the_window_p99_comes_from_merged_buckets_within_2_percent() -> None:
    rng = random.Random(11)
    # Ten intervals of lognormal latency around 300 µs, one congested; the route's frames are
    # received on two nodes (a striped route), each with its own page.
    intervals = [[int(rng.lognormvariate(math.log(300_000), 0.3 if i != 4 else 1.3))
                  for _ in range(2_000)] for i in range(10)]
    a = [v for i, values in enumerate(intervals) for v in values[: len(values) // 2]]
    b = [v for values in intervals for v in values[len(values) // 2:]]
    before = gate.snapshot({"n0": answer(), "n1": answer()})
    after = gate.snapshot({"n0": answer(entry(a, route_id=3)),
                           "n1": answer(entry(b, route_id=9))})
    window = gate.judge(before, after, {ROUTE: 1000.0}, LIMITS)
    (verdict,) = window.routes
    everything = [v for values in intervals for v in values]
    truth = exact(everything, 0.99) / 1000
    assert verdict.samples == len(everything)
    assert verdict.p99_us is not None
    assert abs(verdict.p99_us - truth) <= 0.02 * truth
    averaged = sum(exact(values, 0.99) for values in intervals) / len(intervals) / 1000
    assert abs(averaged - truth) > 0.10 * truth  # per-interval p99s, averaged: wrong


def _one(after: dict[str, Any], before: dict[str, Any] | None = None,
         budget_ms: float = 1.0) -> gate.RouteVerdict:
    seen_before = gate.snapshot({"n0": before or answer()})
    window = gate.judge(seen_before, gate.snapshot({"n0": after}), {ROUTE: budget_ms}, LIMITS)
    return window.routes[0]


@pytest.mark.parametrize(("after", "verdict", "why"), [
    (answer(entry([200_000] * 500)), "pass", "within"),
    (answer(entry([200_000] * 490 + [5_000_000] * 10)), "fail", "over the budget"),
    (answer(entry([200_000] * 50)), "inconclusive", "50 samples, fewer than 100"),
    (answer(entry([])), "inconclusive", "silent: no frame in the window"),
    (answer(), "inconclusive", "silent: no end of it is attached"),
    (answer(entry([200_000] * 500, breaker="open")), "fail", "breaker open"),
    (answer(entry([200_000] * 500, crc_errors=10)), "fail", "error rate"),
    (answer(entry([200_000] * 500, drops=10)), "fail", "drop rate"),
    (answer(entry([200_000] * 500, drops=2)), "pass", "within"),  # 0.4%: under the limit
])
def test_each_route_is_pass_fail_or_inconclusive(after, verdict, why) -> None:
    got = _one(after)
    assert got.verdict.value == verdict
    assert why in got.why


def test_a_window_is_only_what_happened_within_it() -> None:
    slow_then = answer(entry([5_000_000] * 1000))  # a bad past: not this window's business
    now = answer(entry([5_000_000] * 1000 + [200_000] * 500))
    assert _one(now, before=slow_then).verdict is gate.Verdict.PASS
    # A new page (a new generation of the route) starts from zero, not from the old one.
    renewed = answer(entry([200_000] * 500, route_id=2))
    assert _one(renewed, before=slow_then).samples == 500


def test_inconclusive_never_passes_a_window_and_a_fail_wins() -> None:
    assert gate._overall([gate.Verdict.PASS, gate.Verdict.INCONCLUSIVE]) \
        is gate.Verdict.INCONCLUSIVE
    assert gate._overall([gate.Verdict.INCONCLUSIVE, gate.Verdict.FAIL]) is gate.Verdict.FAIL
    assert gate._overall([]) is gate.Verdict.INCONCLUSIVE


# --- canary steps ---------------------------------------------------------------------------


def add(i: int) -> steps.Step:
    return steps.Step(steps.Op.ADD, graph.Link(
        from_=f"rtt://a/out/p{i}", to=f"rtt://b/in/p{i}", cls="p2p", lane="shm",
        from_node="n0", to_node="n0", version="1.0.0", caps=("c",), latency_budget_ms=1.0,
        throughput_qps=1000, backpressure="taildrop", breaker=None))


def test_steps_end_on_batch_boundaries_in_plan_order() -> None:
    batches = [[add(0)], [add(1), add(2)], [add(3)], [add(4), add(5), add(6), add(7)]]
    assert rollout.stages(batches, (10, 50, 100)) == [1, 3, 4]  # 1/8, 4/8, 8/8 steps
    assert rollout.stages(batches, (100,)) == [4]
    assert rollout.stages([[add(0)]], (10, 50, 100)) == [1]  # one batch: one step
    assert rollout.stages([], (10, 100)) == []


class FlightNode:
    """A node whose `flight` answers are scripted: one per read."""

    name = "n0"

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.reads = 0

    def call(self, op: str, **_: Any) -> dict[str, Any]:
        assert op == "flight"
        self.reads += 1
        return self.answers[min(self.reads - 1, len(self.answers) - 1)]


def _rollout(reads: list[dict[str, Any]], **policy: Any) -> tuple[rollout.Rollout, FlightNode]:
    node = FlightNode(reads)
    batch = [steps.Step(steps.Op.ADD, graph.Link(
        from_=ROUTE[0], to=ROUTE[1], cls="p2p", lane="shm", from_node="n0", to_node="n0",
        version="1.0.0", caps=("c",), latency_budget_ms=1.0, throughput_qps=1000,
        backpressure="taildrop", breaker=None))]
    r = rollout.Rollout(nodes={"n0": node}, policy=model.Rollout(**({"steps": (100,)} | policy)),
                        batches=[batch], sleep=lambda _: None)
    return r, node


def cumulative(n: int, latency_ns: int = 200_000) -> dict[str, Any]:
    return answer(entry([latency_ns] * n))


def test_wait_gathers_samples_across_windows_until_conclusive() -> None:
    r, _ = _rollout([cumulative(0), cumulative(60), cumulative(120)], on_inconclusive="wait")
    ok, why = r.gate(0, 1)
    assert (ok, why) == (True, "")
    assert [w.verdict.value for w in r.steps[0].windows] == ["inconclusive", "pass"]
    assert r.steps[0].windows[1].routes[0].samples == 120  # judged since the step began


def test_wait_gives_up_after_max_windows_and_never_passes() -> None:
    r, _ = _rollout([cumulative(0), cumulative(10), cumulative(20)], on_inconclusive="wait",
                    max_windows=2)
    ok, why = r.gate(0, 1)
    assert not ok
    assert "still inconclusive after 2 windows" in why


def test_rollback_on_inconclusive_rolls_back_at_once() -> None:
    r, _ = _rollout([cumulative(0), cumulative(10)], on_inconclusive="rollback")
    ok, why = r.gate(0, 1)
    assert not ok
    assert "inconclusive, and policy rolls back" in why


def test_pause_holds_until_a_new_revision_supersedes() -> None:
    r, _ = _rollout([cumulative(0)], on_inconclusive="pause")
    asked = iter([False, False, True])
    r.superseded = lambda: next(asked)
    ok, why = r.gate(0, 1)
    assert not ok
    assert "superseded" in why
    assert len(r.steps[0].windows) == 3


def test_failures_count_up_to_the_threshold() -> None:
    slow = 5_000_000
    reads = [cumulative(0), cumulative(500, slow), cumulative(1000, slow)]
    r, _ = _rollout(reads, failure_threshold=2)
    ok, why = r.gate(0, 1)
    assert not ok
    assert "over the budget" in why
    assert [w.verdict.value for w in r.steps[0].windows] == ["fail", "fail"]
