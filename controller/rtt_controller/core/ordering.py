"""Step ordering and batching.

Steps are ordered by a lexicographic topological sort of their dependencies, with the secondary key
`(from, op, to, version, class)` so the order is canonical. Dependencies:
- a new link is wired only after the links out of its target (downstream first);
- a link is removed only after the links into its source (upstream first);
- a p2p slot is freed before it is refilled;
- on each node, every step that frees shm ring memory comes before every step that takes some,
  so a plan never needs more ring memory mid-way than at either end.
Batches then cut that order into groups of non-conflicting steps. Called by the planner pipeline.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import networkx as nx

from rtt_controller.core import model
from rtt_fabric import graph
from rtt_fabric.steps import Op, Step


def order(steps: Sequence[Step]) -> list[Step]:
    ranked = sorted(steps, key=Step.sort_key)
    dag: nx.DiGraph = nx.DiGraph()
    dag.add_nodes_from(range(len(ranked)))
    dag.add_edges_from(_edges(ranked))  # one call: per-step calls cost more than the sort itself
    if not nx.is_directed_acyclic_graph(dag):
        # Only removals can form a cycle (a cyclic observed base; desired cycles are rejected
        # earlier). Drop the edges inside each cycle and keep every other dependency.
        for component in nx.strongly_connected_components(dag):
            if len(component) > 1:
                dag.remove_edges_from([(u, v) for u, v in dag.subgraph(component).edges])
    # Node ids are ranks in canonical order, so the integer key is the canonical key; barrier
    # nodes (ids past the steps) only carry dependencies and are dropped from the result.
    return [ranked[i] for i in nx.lexicographical_topological_sort(dag) if i < len(ranked)]


def _edges(ranked: Sequence[Step]) -> list[tuple[int, int]]:
    adds_from: dict[str, list[int]] = collections.defaultdict(list)
    dels_to: dict[str, list[int]] = collections.defaultdict(list)
    freed_slot: dict[str, list[int]] = collections.defaultdict(list)
    for i, step in enumerate(ranked):
        if step.op is Op.ADD:
            adds_from[step.link.from_].append(i)
        elif step.op is Op.DEL:
            dels_to[step.link.to].append(i)
            if step.link.cls == model.RouteClass.P2P:
                freed_slot[step.link.from_].append(i)
    edges: list[tuple[int, int]] = []
    for i, step in enumerate(ranked):
        if step.op is Op.ADD:
            edges += [(j, i) for j in adds_from[step.link.to] if j != i]
            if step.link.cls == model.RouteClass.P2P:
                edges += [(j, i) for j in freed_slot[step.link.from_]]
        elif step.op is Op.DEL:
            edges += [(j, i) for j in dels_to[step.link.from_] if j != i]
    return edges + _shm_edges(ranked)


def _shm_edges(ranked: Sequence[Step]) -> list[tuple[int, int]]:
    """Frees before takes, per node, through one barrier node per node (not frees x takes).

    Only nodes where the plan frees ring memory get a barrier; elsewhere nothing is to wait for.
    """
    frees: dict[str, list[int]] = collections.defaultdict(list)
    takes: dict[str, list[int]] = collections.defaultdict(list)
    for i, step in enumerate(ranked):
        before = _rings(step.old if step.op is Op.UPDATE else
                        (step.link if step.op is Op.DEL else None))
        after = _rings(None if step.op is Op.DEL else step.link)
        if before != after:
            (frees if before > after else takes)[step.link.from_node].append(i)
    edges: list[tuple[int, int]] = []
    for k, node in enumerate(sorted(frees.keys() & takes.keys())):
        barrier = len(ranked) + k
        edges += [(i, barrier) for i in frees[node]] + [(barrier, i) for i in takes[node]]
    return edges


def _rings(link: graph.Link | None) -> int:
    if link is None or link.lane != "shm":
        return 0
    return graph.ring_bytes(link.throughput_qps, link.latency_budget_ms)


def batches(ordered: Sequence[Step], *, size: int) -> list[list[int]]:
    """Cut the order into batches (of indexes) of at most `size` non-conflicting steps.

    Two steps conflict when they touch the same link or the same p2p slot; keeping them in
    separate batches means every batch boundary is a state with at most one active link per slot.
    """
    out: list[list[int]] = []
    current: list[int] = []
    touched: set[tuple[str, ...]] = set()
    for i, step in enumerate(ordered):
        marks: set[tuple[str, ...]] = {("link", *step.key)}
        if step.link.cls == model.RouteClass.P2P:
            marks.add(("slot", step.link.from_))
        if current and (len(current) >= size or marks & touched):
            out.append(current)
            current, touched = [], set()
        current.append(i)
        touched |= marks
    if current:
        out.append(current)
    return out
