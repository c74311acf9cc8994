"""The planner's cost model: predicted latency, shared-memory ring sizing, and the objective.

Shared by the ILP formulation and the greedy assigner, so both optimise the same numbers and
their objectives can be compared (bench/planner.py does).
"""

from __future__ import annotations

import dataclasses

from rtt_controller.core import model
from rtt_controller.core.graph import Demand
from rtt_fabric import graph


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Objective:
    """Compared lexicographically: honour route lane preferences, then latency, then churn."""

    preference: int
    latency: int
    churn: int

    def to_json(self) -> dict[str, int]:
        return {"preference": self.preference, "latency": self.latency, "churn": self.churn}


def traffic_weight(demand: Demand) -> int:
    """Latency is weighted by traffic, in units of 100 frames/s, so busy routes count more."""
    return demand.throughput_qps // 100 + 1


def latency_cost(demand: Demand, lane: model.Lane, policy: model.Policy) -> int:
    return lane_model(policy, lane).latency_us * traffic_weight(demand)


def lane_latencies(policy: model.Policy) -> dict[str, int]:
    """Predicted latency per lane name, for loops that price many routes."""
    return {str(lane): lane_model(policy, lane).latency_us for lane in model.ALL_LANES}


def lane_model(policy: model.Policy, lane: model.Lane) -> model.LaneModel:
    return policy.lanes.get(lane, model.DEFAULT_LANE_MODELS[lane])


def ring_bytes(demand: Demand) -> int:
    """The shm ring a route needs; the fabric reserves the same amount at PREPARE."""
    return graph.ring_bytes(demand.throughput_qps, demand.latency_budget_ms)


def node_capacity(node: model.Node) -> int:
    return node.shm_mb * 1024 * 1024
