"""The SLO gate: judge each route over one window, from the fabric's flight pages.

A window is the difference of two reads of every node's `flight` answer (cumulative counters and
latency buckets per route; rtt_fabric.flight). A route's window merges what each node holds for
it (a tcp route's sending node counts frames out and drops, its receiving node frames in and
latency), so its p99 comes from the window's merged buckets, never from an average of
percentiles. Each route is then:

- **fail**: its breaker is open, its error rate (corrupt or oversize frames) or drop rate is over
  the policy's limit, or its p99 is over its `latency_budget_ms`;
- **inconclusive**: it carried no frame (silent) or fewer latency samples than `min_samples`;
- **pass** otherwise.

The window fails if any route fails, is inconclusive if any route is (and none fails), and passes
only if every route passes. Called by the rollout (reconcile/rollout.py) between canary steps.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any

from rtt_fabric import flight

RouteKey = tuple[str, str, str]  # from, to, class
_Seen = dict[tuple[RouteKey, str, int], flight.Sample]  # (route, node, route id) -> cumulative


class Verdict(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a secret
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclasses.dataclass(frozen=True)
class Limits:
    min_samples: int
    max_error_rate: float
    max_drop_rate: float


@dataclasses.dataclass(frozen=True)
class RouteVerdict:
    route: RouteKey
    verdict: Verdict
    why: str
    samples: int = 0
    p99_us: float | None = None
    budget_us: float | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    breaker: str = "closed"


@dataclasses.dataclass(frozen=True)
class Window:
    verdict: Verdict
    routes: tuple[RouteVerdict, ...]

    def summary(self) -> str:
        bad = [r for r in self.routes if r.verdict is not Verdict.PASS]
        shown = "; ".join(f"{r.route[0]} -> {r.route[1]}: {r.verdict.value}: {r.why}"
                          for r in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        return f"{self.verdict.value} ({len(self.routes)} routes)" + (
            f": {shown}{more}" if bad else "")


def snapshot(answers: Mapping[str, Mapping[str, Any]]) -> _Seen:
    """Every node's `flight` answer (node -> answer), as cumulative samples per route."""
    seen: _Seen = {}
    for node, answer in answers.items():
        for entry in answer["routes"]:
            key = (entry["from"], entry["to"], entry["class"])
            seen[key, node, entry["route_id"]] = flight.from_json(entry)
    return seen


def window(before: _Seen, after: _Seen, route: RouteKey) -> flight.Sample | None:
    """What happened to `route` between two snapshots, merged over the nodes that hold it
    (None if no node holds a flight page for it: no end ever attached)."""
    parts = []
    for (key, node, route_id), now in after.items():
        if key != route:
            continue
        then = before.get((key, node, route_id))  # a new page (generation) starts at zero
        parts.append(now - then if then is not None else now)
    if not parts:
        return None
    counters: dict[str, int] = {}
    histogram = flight.Histogram(tuple([0] * flight.BUCKETS))
    for part in parts:
        for name, value in part.counters.items():
            counters[name] = counters.get(name, 0) + value
        histogram = histogram + part.histogram
    breaker = max((p.breaker for p in parts), key=_severity)
    return flight.Sample(route_id=parts[0].route_id, counters=counters, breaker=breaker,
                         histogram=histogram)


def _severity(state: flight.BreakerState) -> int:
    return {flight.BreakerState.CLOSED: 0, flight.BreakerState.HALF_OPEN: 1,
            flight.BreakerState.OPEN: 2}.get(state, 0)


def judge_route(route: RouteKey, sample: flight.Sample | None, *, budget_ms: float,
                limits: Limits) -> RouteVerdict:
    budget_us = budget_ms * 1000.0
    if sample is None:
        return RouteVerdict(route, Verdict.INCONCLUSIVE, "silent: no end of it is attached",
                            budget_us=budget_us)
    c = sample.counters
    received, samples = c.get("rx_frames", 0), sample.histogram.total
    errors, drops = sample.errors, c.get("drops", 0)
    error_rate = errors / (received + errors) if received + errors else 0.0
    offered = c.get("tx_frames", 0) + drops
    drop_rate = drops / offered if offered else 0.0
    p99_ns = sample.histogram.quantile(0.99)
    p99_us = None if p99_ns is None else round(p99_ns / 1000.0, 3)
    checks = (  # the first that holds decides; a route passes only if none does
        (sample.breaker is flight.BreakerState.OPEN, Verdict.FAIL, "breaker open"),
        (error_rate > limits.max_error_rate, Verdict.FAIL,
         f"error rate {error_rate:.2%} over {limits.max_error_rate:.2%} ({errors} bad frames)"),
        (drop_rate > limits.max_drop_rate, Verdict.FAIL,
         f"drop rate {drop_rate:.2%} over {limits.max_drop_rate:.2%} ({drops} dropped)"),
        (samples == 0, Verdict.INCONCLUSIVE, "silent: no frame in the window"),
        (samples < limits.min_samples, Verdict.INCONCLUSIVE,
         f"{samples} samples, fewer than {limits.min_samples}"),
        (p99_us is not None and p99_us > budget_us, Verdict.FAIL,
         f"p99 {p99_us} µs over the budget {budget_us:.0f} µs ({samples} samples)"),
    )
    verdict, why = next(((v, w) for hit, v, w in checks if hit), (
        Verdict.PASS, f"p99 {p99_us} µs within {budget_us:.0f} µs ({samples} samples)"))
    return RouteVerdict(route, verdict, why, samples=samples, p99_us=p99_us,
                        budget_us=budget_us, error_rate=error_rate, drop_rate=drop_rate,
                        breaker=sample.breaker.name.lower())


def judge(before: _Seen, after: _Seen, routes: Mapping[RouteKey, float],
          limits: Limits) -> Window:
    """One window over `routes` (route -> latency budget in ms)."""
    verdicts = tuple(judge_route(route, window(before, after, route), budget_ms=budget,
                                 limits=limits) for route, budget in sorted(routes.items()))
    return Window(_overall(v.verdict for v in verdicts), verdicts)


def _overall(verdicts: Iterable[Verdict]) -> Verdict:
    seen = set(verdicts)
    if Verdict.FAIL in seen:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in seen or not seen:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS
