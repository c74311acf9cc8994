"""The planner's inventory diff: what must change to turn one graph into another.

The values (`Link`, `Graph`) are the fabric's, so a desired graph and an observed one hash alike;
this module re-exports them for the core and adds the pure diff (Flux's inventory has the same
role: New, Diff, Apply).
"""

from __future__ import annotations

import dataclasses

from rtt_fabric import graph, steps

# The core speaks of inventory.Link / inventory.Graph; they are the fabric's values.
Link = graph.Link
Graph = graph.Graph
LinkKey = graph.LinkKey
EMPTY = graph.EMPTY
GRAPH_KIND = graph.GRAPH_KIND


@dataclasses.dataclass(frozen=True)
class Diff:
    added: tuple[Link, ...]
    removed: tuple[Link, ...]
    changed: tuple[tuple[Link, Link], ...]  # (old, new)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff(base: Graph, desired: Graph) -> Diff:
    """What must change to turn `base` into `desired`, each part in key order."""
    added = tuple(desired.links[k] for k in sorted(desired.links.keys() - base.links.keys()))
    removed = tuple(base.links[k] for k in sorted(base.links.keys() - desired.links.keys()))
    changed = tuple(
        (base.links[k], desired.links[k])
        for k in sorted(base.links.keys() & desired.links.keys())
        if base.links[k] is not desired.links[k] and base.links[k] != desired.links[k]
    )
    return Diff(added=added, removed=removed, changed=changed)


def to_steps(d: Diff) -> list[steps.Step]:
    """The unordered steps that realize a diff."""
    return ([steps.Step(steps.Op.DEL, link) for link in d.removed]
            + [steps.Step(steps.Op.ADD, link) for link in d.added]
            + [steps.Step(steps.Op.UPDATE, new, old) for old, new in d.changed])
