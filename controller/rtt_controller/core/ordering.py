"""Step ordering and batching.

Steps are ordered by a lexicographic topological sort of their dependencies, with the secondary key
`(from, type, to, version)` so the order is canonical. Dependencies: a new link is wired only after
the links out of its target (downstream first); a link is removed only after the links into its
source (upstream first); a p2p slot is freed before it is refilled. Batches then cut that order
into groups of non-conflicting steps. Called by the planner pipeline.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import networkx as nx

from rtt_controller.core import model
from rtt_fabric.steps import Op, Step


def order(steps: Sequence[Step]) -> list[Step]:
    dag: nx.DiGraph = nx.DiGraph()
    ranked = sorted(steps, key=Step.sort_key)
    dag.add_nodes_from(range(len(ranked)))
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
    dag.add_edges_from(edges)  # one call: per-step calls cost more than the sort itself
    try:
        # Node ids are ranks in canonical order, so the integer key is the canonical key.
        return [ranked[i] for i in nx.lexicographical_topological_sort(dag)]
    except nx.NetworkXUnfeasible:
        # Only a cyclic base graph (an observed fabric) can get here; desired cycles are rejected
        # earlier. Fall back to deletes before adds, still canonical.
        return sorted(ranked, key=lambda s: (s.op is not Op.DEL, s.sort_key()))


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
