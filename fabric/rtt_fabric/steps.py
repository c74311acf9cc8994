"""Plan steps, their inverses, and applying steps to a graph.

A step adds, deletes or updates one link; its inverse undoes it exactly, so rolling a plan back
is applying the inverses of the committed batches in reverse order. The planner builds steps;
the node daemon validates and applies them in 2PC, so both share this one definition.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any

from rtt_fabric import graph


class Op(enum.StrEnum):
    ADD = "add"
    DEL = "del"
    UPDATE = "update"


_ID_PREFIX = {Op.ADD: "A", Op.DEL: "D", Op.UPDATE: "U"}


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    op: Op
    link: graph.Link  # the link after the step (for DEL: the link removed)
    old: graph.Link | None = None  # UPDATE only: the link before

    @property
    def key(self) -> graph.LinkKey:
        return self.link.key

    def sort_key(self) -> tuple[str, str, str, str, str]:
        """The canonical secondary key: (from, type, to, version), then class."""
        return (self.link.from_, self.op.value, self.link.to, self.link.version, self.link.cls)

    def inverse(self) -> Step:
        if self.op is Op.ADD:
            return Step(Op.DEL, self.link)
        if self.op is Op.DEL:
            return Step(Op.ADD, self.link)
        assert self.old is not None
        return Step(Op.UPDATE, self.old, self.link)


def to_json(step: Step) -> dict[str, Any]:
    """A step as PREPARE and the WAL carry it: op, link, and old (update only)."""
    out: dict[str, Any] = {"op": step.op.value, "link": step.link.to_json()}
    if step.old is not None:
        out["old"] = step.old.to_json()
    return out


def from_json(data: Mapping[str, Any]) -> Step:
    old = graph.Link.from_json(data["old"]) if data.get("old") else None
    return Step(Op(data["op"]), graph.Link.from_json(data["link"]), old)


def step_ids(ordered: Iterable[Step]) -> list[str]:
    """Ids like A1, D1, U1: op letter and position among that op's steps in plan order."""
    counts = dict.fromkeys(Op, 0)
    ids = []
    for step in ordered:
        counts[step.op] += 1
        ids.append(f"{_ID_PREFIX[step.op]}{counts[step.op]}")
    return ids


class Conflict(Exception):
    """A step does not apply to the graph it was given (the graph is not the plan's base)."""


def apply(base: graph.Graph, changes: Iterable[Step]) -> graph.Graph:
    """`base` with `changes` applied in order; Conflict if one does not apply."""
    links = dict(base.links)
    for step in changes:
        present = links.get(step.key)
        if step.op is Op.ADD:
            if present is not None:
                raise Conflict(f"add {step.key}: link already present")
            links[step.key] = step.link
        elif step.op is Op.DEL:
            if present != step.link:
                raise Conflict(f"del {step.key}: link absent or different")
            del links[step.key]
        else:
            if present != step.old:
                raise Conflict(f"update {step.key}: link absent or different")
            links[step.key] = step.link
    return graph.Graph(links)  # Graph orders by key where order matters (hash, JSON)
