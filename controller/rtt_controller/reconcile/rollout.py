"""Canary rollout: a plan's batches in steps, with an SLO gate after each.

The policy's `rollout.steps` (say 10, 50, 100) are percentages of the plan's route changes. Step k
ends after the shortest prefix of the plan's batches that holds at least that share of its steps,
so the canary routes are chosen by the plan's own order: deterministic, and never ahead of what
they depend on. After each step the gate (reconcile/gate.py) judges every route added or changed
so far, window after window, until one of:

- a window passes: go on to the next step (after the last one, the plan is promoted);
- `failure_threshold` windows failed: roll back;
- inconclusive windows: `on_inconclusive` says what to do. `wait` judges more windows, up to
  `max_windows` at this step, then rolls back (inconclusive never counts as a pass); `rollback`
  rolls back at once; `pause` holds the rollout at this step, judging windows until one is
  conclusive or a new revision supersedes this one (then it rolls back).

The coordinator calls `Rollout.gate(step, batches_committed)` between batches (coordinator.py).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rtt_controller.core import model
from rtt_controller.reconcile import coordinator as coord
from rtt_controller.reconcile import gate as slo
from rtt_fabric import graph, steps
from rtt_fabric.client import ClientError


def stages(batches: Sequence[Sequence[steps.Step]], percents: Sequence[int]) -> list[int]:
    """How many of the plan's batches each canary step ends after (the last is all of them)."""
    if not batches:
        return []
    total = sum(len(b) for b in batches)
    reached = list(itertools.accumulate(len(b) for b in batches))
    ends: list[int] = []
    for percent in percents:
        need = max(1, math.ceil(total * percent / 100))
        end = bisect.bisect_left(reached, need) + 1
        if not ends or end > ends[-1]:
            ends.append(end)
    if ends[-1] != len(batches):
        ends.append(len(batches))
    return ends


def preview(batches: Sequence[Sequence[steps.Step]], percents: Sequence[int]
            ) -> list[tuple[int, int, int]]:
    """What a rollout of these batches will judge: (percent, batches applied, route changes
    applied) per canary step."""
    ends = stages(batches, percents)
    reached = list(itertools.accumulate(len(b) for b in batches))
    return [(p, end, reached[end - 1]) for p, end in zip(_percents(ends, percents, batches),
                                                          ends, strict=True)]


@dataclasses.dataclass
class StepRecord:
    """One canary step: what was judged, and how it ended."""

    percent: int
    batches: int  # the plan's batches committed when it was judged
    routes: int  # routes judged
    windows: list[slo.Window] = dataclasses.field(default_factory=list)
    outcome: str = ""  # promoted, rolled-back, or "" while it runs

    def to_json(self) -> dict[str, Any]:
        return {"percent": self.percent, "batches": self.batches, "routes": self.routes,
                "outcome": self.outcome,
                "windows": [{"verdict": w.verdict.value, "summary": w.summary()}
                            for w in self.windows]}


Observer = Callable[["StepRecord", slo.Window | None], None]


class Rollout:
    def __init__(self, *, nodes: Mapping[str, coord.Node], policy: model.Rollout,
                 batches: Sequence[Sequence[steps.Step]],
                 superseded: Callable[[], bool] = lambda: False,
                 observe: Observer = lambda _record, _window: None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.nodes, self.policy, self.batches = nodes, policy, batches
        self.ends = stages(batches, policy.steps)
        self.percents = _percents(self.ends, policy.steps, batches)
        self.superseded, self.observe, self.sleep = superseded, observe, sleep
        self.limits = slo.Limits(min_samples=policy.min_samples,
                                  max_error_rate=policy.max_error_rate,
                                  max_drop_rate=policy.max_drop_rate)
        self.steps: list[StepRecord] = []

    def routes(self, committed: int) -> dict[slo.RouteKey, float]:
        """The routes the first `committed` batches added or changed, and still live, with
        their latency budgets (ms)."""
        live: dict[graph.LinkKey, float | None] = {}
        for batch in self.batches[:committed]:
            for step in batch:
                live[step.key] = None if step.op is steps.Op.DEL else \
                    step.link.latency_budget_ms
        return {key: budget for key, budget in live.items() if budget is not None}

    def gate(self, step: int, committed: int) -> tuple[bool, str]:
        """Judge canary step `step` (0-based) with `committed` batches applied: (go on, why
        not)."""
        routes = self.routes(committed)
        record = StepRecord(self.percents[step], committed, len(routes))
        self.steps.append(record)
        self.observe(record, None)
        if not routes:  # the step only removed routes: there is nothing to measure
            record.outcome = "passed: no route added or changed"
            return True, ""
        failed = 0
        self.sleep(self.policy.settle_s)  # lanes install, services rewire: not the route's p99
        first = self._read_or_none()
        since = None if isinstance(first, str) else first
        while True:
            window, after = self._window(routes, since)
            # Waiting on an inconclusive window gathers more samples: the next judgment covers
            # the step since the last conclusive one (still one merged histogram per route).
            keep = window.verdict is slo.Verdict.INCONCLUSIVE and \
                self.policy.on_inconclusive != "rollback"
            since = since if keep and since is not None else after
            record.windows.append(window)
            self.observe(record, window)
            label = f"canary step {record.percent}% ({len(routes)} routes)"
            if window.verdict is slo.Verdict.PASS:
                record.outcome = "passed"
                return True, ""
            if window.verdict is slo.Verdict.FAIL:
                failed += 1
                if failed >= self.policy.failure_threshold:
                    record.outcome = "failed"
                    return False, f"{label}: {window.summary()}"
                continue
            why = self._inconclusive(len(record.windows))
            if why:
                record.outcome = "inconclusive"
                return False, f"{label}: {why}: {window.summary()}"

    def _inconclusive(self, windows: int) -> str:
        """Why an inconclusive window ends the rollout ('' to judge another)."""
        mode = self.policy.on_inconclusive
        if mode == "rollback":
            return "inconclusive, and policy rolls back"
        if mode == "wait" and windows >= self.policy.max_windows:
            return f"still inconclusive after {windows} windows"
        if mode == "pause" and self.superseded():
            return "paused while inconclusive, and a new revision superseded it"
        return ""

    def _window(self, routes: Mapping[slo.RouteKey, float], since: Any
                ) -> tuple[slo.Window, Any]:
        """Sleep one window, then judge `routes` from `since` (a snapshot; None: unreadable)
        to now. Returns the window and the snapshot it ended on."""
        self.sleep(self.policy.window_s)
        after = self._read_or_none()
        if since is None or isinstance(after, str):
            why = after if isinstance(after, str) else "the step's first read failed"
            return slo.Window(slo.Verdict.INCONCLUSIVE, tuple(
                slo.RouteVerdict(route, slo.Verdict.INCONCLUSIVE, f"unreadable: {why}")
                for route in sorted(routes))), None
        return slo.judge(since, after, routes, self.limits), after

    def _read_or_none(self) -> Any:
        """Every node's flight pages as one snapshot, or why they could not be read."""
        try:
            return slo.snapshot({name: node.call("flight")
                                 for name, node in sorted(self.nodes.items())})
        except (OSError, ClientError) as exc:  # a node out of reach: nothing to judge by
            return str(exc)


def _percents(ends: Sequence[int], percents: Sequence[int],
              batches: Sequence[Sequence[steps.Step]]) -> list[int]:
    """The percentage each stage stands for (the largest policy step it reaches)."""
    out = []
    for end in ends:
        reached = [p for p in percents if stages(batches, [p])[0] <= end]
        out.append(max(reached) if reached else 100)
    return out
