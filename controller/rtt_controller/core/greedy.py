"""The greedy assigner for graphs above `routing.greedy_threshold` routes.

It scales linearly (after a sort) and keeps churn low: a route whose fingerprint (its resolved
demand and placement) matches its base link keeps the base lane, so an incremental replan moves
only what changed. New or changed routes take their best lane in order of latency saved per
ring byte, which is how a knapsack is filled greedily. bench/planner.py measures the gap to the ILP.
"""

from __future__ import annotations

from collections.abc import Sequence

from rtt_controller.core import costs, inventory, model
from rtt_controller.core.assignment import Assignment, Infeasible, LinkMemo
from rtt_controller.core.graph import Demand


def assign(demands: Sequence[Demand], policy: model.Policy, base: inventory.Graph,
           known: LinkMemo | None = None) -> Assignment:
    """Assign lanes; `known` (the planner's link memo) lets a replan recognise, by identity, the
    routes whose demand and base link are exactly what it built last time."""
    placement = _place(demands, policy, base)
    free = {n.name: costs.node_capacity(n) for n in policy.nodes}
    lanes: dict[tuple[str, str, str], str] = {}
    pending = []
    known = known or {}
    for d in demands:  # the hot loop of a replan
        kept = _kept_lane(d, placement, base, known)
        if kept is not None and (kept != "shm" or _reserve(d, kept, placement, free)):
            lanes[d.key] = kept
        else:
            pending.append(d)
    lane_us = costs.lane_latencies(policy)
    rank = {lane: k for k, lane in enumerate(policy.routing.prefer)}
    # Routes with one usable lane (pins, single-lane symbols) go first: they cannot move, so
    # flexible routes must not take their shm before them. Then latency saved per ring byte.
    pending.sort(key=lambda d: (len(d.lanes) > 1, -_density(d, lane_us), d.key))
    for d in pending:
        lanes[d.key] = str(_best_lane(d, placement, free, lane_us, rank))
    return Assignment(lanes=lanes, placement=placement, algorithm="greedy", backend="greedy")


def fingerprint(d: Demand, from_node: str, to_node: str) -> tuple[object, ...]:
    """What a base link must still match for its lane to be kept."""
    return (d.key, from_node, to_node, d.version, d.caps, d.latency_budget_ms,
            d.throughput_qps, d.backpressure)


def _link_fingerprint(link: inventory.Link) -> tuple[object, ...]:
    return (link.key, link.from_node, link.to_node, link.version, link.caps,
            link.latency_budget_ms, link.throughput_qps, link.backpressure)


def _kept_lane(d: Demand, placement: dict[str, str], base: inventory.Graph,
               known: LinkMemo) -> str | None:
    key = d.key
    old = base.links.get(key)
    if old is None:
        return None
    hit = known.get(id(d))
    if (hit is None or hit[0] is not d or hit[1] is not old
            or placement[key[0]] != old.from_node or placement[key[1]] != old.to_node):
        # Not built from this very demand: compare what matters, field by field.
        if old.lane not in d.lanes:
            return None
        if fingerprint(d, placement[key[0]], placement[key[1]]) != _link_fingerprint(old):
            return None
    lane = old.lane
    return None if d.preferred is not None and lane != d.preferred and d.preferred in d.lanes \
        else lane


def _place(demands: Sequence[Demand], policy: model.Policy, base: inventory.Graph
           ) -> dict[str, str]:
    """Fixed nodes first, then base placement, then the node most of a symbol's peers are on."""
    nodes = [n.name for n in policy.nodes]
    placement, unplaced = _known_placement(demands, nodes, base.placement)
    # Votes are counted only for symbols still unplaced: an incremental replan has none.
    peers: dict[str, dict[str, int]] = {s: {} for s in unplaced}
    for d in demands:
        for s, other in ((d.key[0], d.key[1]), (d.key[1], d.key[0])):
            if s in peers:
                peers[s][other] = peers[s].get(other, 0) + d.throughput_qps
    rank = {n: k for k, n in enumerate(nodes)}
    for s in sorted(peers):
        votes: dict[str, int] = {}
        for other, qps in peers[s].items():
            if other in placement:
                votes[placement[other]] = votes.get(placement[other], 0) + qps
        # Most traffic wins; ties (and no placed peer at all) go to the earliest node.
        placement[s] = max(votes, key=lambda n: (votes[n], -rank[n])) if votes else nodes[0]
    return placement


def _known_placement(demands: Sequence[Demand], nodes: Sequence[str], prior: dict[str, str]
                     ) -> tuple[dict[str, str], set[str]]:
    """Placement fixed by the symbols, then kept from the base; and what is left to place."""
    placement: dict[str, str] = {}
    for d in demands:
        if d.from_node is not None:
            placement[d.key[0]] = d.from_node
        if d.to_node is not None:
            placement[d.key[1]] = d.to_node
    known_nodes, unplaced = set(nodes), set()
    for d in demands:
        for s in d.key[:2]:
            if s not in placement:
                node = prior.get(s)
                if node in known_nodes:
                    placement[s] = node
                else:
                    unplaced.add(s)
    return placement, unplaced


def _density(d: Demand, lane_us: dict[str, int]) -> float:
    """Latency saved by shm over the next-best lane, per ring byte."""
    if model.Lane.SHM not in d.lanes or len(d.lanes) == 1:
        return 0.0
    next_best = min(lane_us[lane] for lane in d.lanes if lane != model.Lane.SHM)
    saved = (next_best - lane_us[model.Lane.SHM]) * costs.traffic_weight(d)
    return saved / costs.ring_bytes(d)


def _reserve(d: Demand, lane: str, placement: dict[str, str], free: dict[str, int]) -> bool:
    if lane != "shm":
        return True
    node, size = placement[d.key[0]], costs.ring_bytes(d)
    if free[node] < size:
        return False
    free[node] -= size
    return True


def _best_lane(d: Demand, placement: dict[str, str], free: dict[str, int],
               lane_us: dict[str, int], rank: dict[model.Lane, int]) -> model.Lane:
    """The preferred lane if any, then the lowest latency (the route's traffic weight is common
    to all its lanes, so it does not change the order), then `routing.prefer` order."""
    local = placement[d.key[0]] == placement[d.key[1]]
    candidates = sorted(
        (lane for lane in d.lanes if local or lane not in model.LOCAL_LANES),
        key=lambda lane: (lane != d.preferred, lane_us[lane], rank[lane]),
    )
    for lane in candidates:
        if _reserve(d, lane, placement, free):
            return lane
    raise Infeasible(f"{d.key[0]} -> {d.key[1]}: no lane fits its placement and capacity")
