"""Lane and placement assignment: the value the assigners produce, and how to score one.

Two assigners fill it: `ilp` (exact, lexicographic, through a solver seam) and `greedy` (large
graphs, keeps unchanged routes). Called by the planner pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from rtt_controller.core import costs, inventory, model
from rtt_controller.core.graph import Demand


@dataclasses.dataclass(frozen=True)
class Assignment:
    # Lane names as plain str: StrEnum members hash and read in Python code, which showed up at
    # 10k routes per replan; as values they compare equal to their names either way.
    lanes: Mapping[tuple[str, str, str], str]
    placement: Mapping[str, str]  # saddr -> node, for every endpoint of a demand
    algorithm: str  # "ilp" or "greedy": part of the plan's content
    backend: str  # "cbc", "highs", "separable" (ILP without a solver) or "greedy": provenance


class Infeasible(Exception):
    """No assignment satisfies capacity and placement constraints."""


def score(demands: Sequence[Demand], assignment: Assignment, base: inventory.Graph,
          policy: model.Policy) -> costs.Objective:
    """The objective of an assignment, as both assigners define it."""
    prior = base.placement
    lane_us = costs.lane_latencies(policy)
    preference = latency = churn = 0
    for demand in demands:
        lane = assignment.lanes[demand.key]
        preference += int(demand.preferred is not None and demand.preferred in demand.lanes
                          and lane != demand.preferred)
        latency += lane_us[lane] * costs.traffic_weight(demand)
        old = base.links.get(demand.key)
        churn += int(old is not None and old.lane != lane)
    for saddr_, node in assignment.placement.items():
        churn += int(saddr_ in prior and prior[saddr_] != node)
    return costs.Objective(preference=preference, latency=latency, churn=churn)


# id(demand) -> (demand, the link built for it last time); the demand is kept so its id stays
# unique while the entry lives.
LinkMemo = dict[int, tuple[Demand, inventory.Link]]


def links(demands: Sequence[Demand], assignment: Assignment,
          memo: LinkMemo | None = None) -> list[inventory.Link]:
    """The realized links an assignment describes.

    With a memo (keyed by demand identity), an unchanged route with an unchanged assignment yields
    the same `Link` object as last time, whose canonical bytes and digest are already cached.
    """
    out, seen = [], {}
    lanes, placement, known = assignment.lanes, assignment.placement, memo or {}
    for d in demands:  # the hot loop of a replan
        key = d.key
        lane, src, dst = lanes[key], placement[key[0]], placement[key[1]]
        hit = known.get(id(d))
        if (hit is None or hit[0] is not d or hit[1].lane != lane
                or hit[1].from_node != src or hit[1].to_node != dst):
            hit = (d, inventory.Link(
                from_=key[0], to=key[1], cls=key[2], lane=lane, from_node=src, to_node=dst,
                version=d.version, caps=d.caps, latency_budget_ms=d.latency_budget_ms,
                throughput_qps=d.throughput_qps, backpressure=d.backpressure,
                breaker=d.breaker))
        seen[id(d)] = hit
        out.append(hit[1])
    if memo is not None:
        memo.clear()
        memo.update(seen)
    return out
