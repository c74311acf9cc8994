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
    lanes: Mapping[tuple[str, str, str], model.Lane]
    placement: Mapping[str, str]  # saddr -> node, for every endpoint of a demand
    algorithm: str  # "ilp" or "greedy": part of the plan's content
    backend: str  # "cbc", "highs" or "greedy": provenance only


class Infeasible(Exception):
    """No assignment satisfies capacity and placement constraints."""


def base_placement(base: inventory.Graph) -> dict[str, str]:
    placement = {}
    for link in base.links.values():
        placement[link.from_] = link.from_node
        placement[link.to] = link.to_node
    return placement


def score(demands: Sequence[Demand], assignment: Assignment, base: inventory.Graph,
          policy: model.Policy) -> costs.Objective:
    """The objective of an assignment, as both assigners define it."""
    prior = base_placement(base)
    lane_us = {lane: costs.lane_model(policy, lane).latency_us for lane in model.ALL_LANES}
    preference = latency = churn = 0
    for demand in demands:
        lane = assignment.lanes[demand.key]
        preference += int(demand.preferred is not None and demand.preferred in demand.lanes
                          and lane != demand.preferred)
        latency += lane_us[lane] * costs.traffic_weight(demand)
        old = base.links.get(demand.key)
        churn += int(old is not None and old.lane != lane.value)
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
    for d in demands:
        lane, src, dst = (assignment.lanes[d.key].value, assignment.placement[d.key[0]],
                          assignment.placement[d.key[1]])
        hit = memo.get(id(d)) if memo is not None else None
        if (hit is not None and hit[0] is d and hit[1].lane == lane
                and hit[1].from_node == src and hit[1].to_node == dst):
            link = hit[1]
        else:
            link = inventory.Link(
                from_=d.key[0], to=d.key[1], cls=d.key[2], lane=lane, from_node=src, to_node=dst,
                version=d.version, caps=d.caps, latency_budget_ms=d.latency_budget_ms,
                throughput_qps=d.throughput_qps, backpressure=d.backpressure)
        seen[id(d)] = (d, link)
        out.append(link)
    if memo is not None:
        memo.clear()
        memo.update(seen)
    return out
