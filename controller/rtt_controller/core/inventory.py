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


@dataclasses.dataclass(frozen=True)
class Diff:
    added: tuple[Link, ...]
    removed: tuple[Link, ...]
    changed: tuple[tuple[Link, Link], ...]  # (old, new)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff(base: Graph, desired: Graph) -> Diff:
    """What must change to turn `base` into `desired`, each part in key order.

    One pass over each side: an unchanged link is usually the very same object (the planner's
    memo reuses it), so the identity test settles most keys without comparing fields.
    """
    old_links, new_links = base.links, desired.links
    added, changed = [], []
    for key, new in new_links.items():
        old = old_links.get(key)
        if old is None:
            added.append(new)
        elif old is not new and old != new:
            changed.append((old, new))
    removed = [old for key, old in old_links.items() if key not in new_links]
    return Diff(added=tuple(sorted(added, key=_key)), removed=tuple(sorted(removed, key=_key)),
                changed=tuple(sorted(changed, key=lambda pair: pair[1].key)))


def _key(link: Link) -> LinkKey:
    return link.key


def to_steps(d: Diff) -> list[steps.Step]:
    """The unordered steps that realize a diff."""
    return ([steps.Step(steps.Op.DEL, link) for link in d.removed]
            + [steps.Step(steps.Op.ADD, link) for link in d.added]
            + [steps.Step(steps.Op.UPDATE, new, old) for old, new in d.changed])
