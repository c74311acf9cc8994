"""The plan format: content (content-addressed), provenance (signed later, not addressed).

`plan_id = "sha256-" + hex(sha256(RFC 8785 JSON of content))`. The content holds what the plan does
and what it was computed from; provenance holds where and when it came from. Called by the planner
pipeline (build), by the CLI (show, render) and later by signing and the coordinator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rtt_controller.core import inventory
from rtt_fabric import canonical
from rtt_fabric.steps import Op, Step, step_ids

PLAN_KIND = "rtt.plan/v1"


@dataclasses.dataclass(frozen=True)
class Provenance:
    repo: str | None
    commit: str | None
    created_at: str | None  # the commit's time, RFC 3339 UTC; never the wall clock
    backend: str  # what ran (cbc, highs, separable, greedy); the algorithm is in the content

    def to_json(self) -> dict[str, Any]:
        return {"source": {"repo": self.repo, "commit": self.commit},
                "created_at": self.created_at, "solver_backend": self.backend}


@dataclasses.dataclass(frozen=True)
class Plan:
    plan_id: str
    content: Mapping[str, Any]
    provenance: Provenance
    steps: tuple[Step, ...]  # in plan order; content["order"] holds their ids

    def to_json(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "content": self.content,
                "provenance": self.provenance.to_json(), "sign": None}

    @property
    def empty(self) -> bool:
        return not self.steps


_SECTION = {Op.ADD: "routes_add", Op.DEL: "routes_del", Op.UPDATE: "routes_change"}


def build(*, ordered: Sequence[Step], batches: Sequence[Sequence[int]], base_hash: str,
          desired_hash: str, policy_hash: str, planner_version: str, algorithm: str,
          objective: Mapping[str, int], provenance: Provenance) -> Plan:
    """Assemble the content. Each link is written once, in its routes_* section; a step names
    its op, the entry it applies (`section/index`) and its inverse op on that same entry."""
    ids = step_ids(ordered)
    sections: dict[str, list[Any]] = {name: [] for name in _SECTION.values()}
    hashed: dict[str, Any] = {name: [] for name in _SECTION.values()}  # the same, as Raw
    steps: dict[str, Any] = {}
    for step_id, step in zip(ids, ordered, strict=True):
        name = _SECTION[step.op]
        steps[step_id] = {"op": step.op.value, "ref": f"{name}/{len(sections[name])}",
                          "inverse": step.inverse().op.value}
        if step.op is Op.UPDATE and step.old is not None:
            sections[name].append({"old": step.old.to_json(), "new": step.link.to_json()})
            hashed[name].append({"old": canonical.Raw(step.old.canonical),
                                 "new": canonical.Raw(step.link.canonical)})
        else:
            sections[name].append(step.link.to_json())
            hashed[name].append(canonical.Raw(step.link.canonical))
    content = {
        "kind": PLAN_KIND,
        "planner": {"version": planner_version, "algorithm": algorithm},
        "base_graph_hash": base_hash,
        "desired_graph_hash": desired_hash,
        "policy_hash": policy_hash,
        "objective": dict(objective),
        **sections,
        "steps": steps,
        "order": ids,
        "batches": [[ids[i] for i in batch] for batch in batches],
    }
    # The id hashes the same content, with each link's cached canonical bytes embedded and the
    # many small step objects written directly (JCS key order: inverse, op, ref).
    hashed["steps"] = canonical.Raw(("{" + ",".join(
        f'{canonical.string(i)}:{{"inverse":{canonical.string(steps[i]["inverse"])},'
        f'"op":{canonical.string(steps[i]["op"])},"ref":{canonical.string(steps[i]["ref"])}}}'
        for i in sorted(steps, key=lambda k: k.encode("utf-16-be"))) + "}").encode("utf-8"))
    plan_id = canonical.digest({**content, **hashed})
    return Plan(plan_id=plan_id, content=content, provenance=provenance, steps=tuple(ordered))


REPAIR = "repair"  # the algorithm a stray-link repair plan names


def repair(links: Sequence[inventory.Link], *, stray_set: str, planner_version: str,
           provenance: Provenance) -> Plan:
    """A plan of one batch that deletes `links`: half-links a node holds without its peer,
    which the loop removes before the revision's plan adds them back whole. As a plan it can
    be signed, and a strict node takes it like any other. Its base graph hash is `stray_set`
    (a digest of the strays and the nodes holding them), its desired graph is empty, and it
    comes from no policy."""
    unique = {link.canonical: link for link in links}
    ordered = [Step(Op.DEL, unique[key]) for key in sorted(unique)]
    return build(ordered=ordered, batches=[list(range(len(ordered)))], base_hash=stray_set,
                 desired_hash=inventory.EMPTY.hash, policy_hash="", planner_version=planner_version,
                 algorithm=REPAIR, objective={}, provenance=provenance)


def _step(content: Mapping[str, Any], entry: Mapping[str, Any]) -> Step:
    section, index = entry["ref"].split("/")
    op = Op(entry["op"])
    if _SECTION[op] != section:
        raise PlanFormatError(f"step {entry} refers to the wrong section")
    item = content[section][int(index)]
    if op is Op.UPDATE:
        old = inventory.Link.from_json(item["old"])
        return Step(op, inventory.Link.from_json(item["new"]), old)
    step = Step(op, inventory.Link.from_json(item))
    if step.inverse().op.value != entry["inverse"]:
        raise PlanFormatError(f"step {entry} has an inverse that does not undo it")
    return step


class PlanFormatError(ValueError):
    """A plan file that does not parse or whose id does not match its content."""


def load(data: Mapping[str, Any]) -> Plan:
    """Read a plan written by `Plan.to_json`, checking its content address."""
    try:
        content = data["content"]
        if content.get("kind") != PLAN_KIND:
            raise PlanFormatError(f"not an {PLAN_KIND} plan")
        if canonical.digest(content) != data["plan_id"]:
            raise PlanFormatError("plan_id does not match the plan's content")
        steps = tuple(_step(content, content["steps"][i]) for i in content["order"])
        prov = data.get("provenance") or {}
        source = prov.get("source") or {}
        provenance = Provenance(repo=source.get("repo"), commit=source.get("commit"),
                                created_at=prov.get("created_at"),
                                backend=str(prov.get("solver_backend", "")))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, PlanFormatError):
            raise
        raise PlanFormatError(f"malformed plan: {exc!r}") from None
    return Plan(plan_id=data["plan_id"], content=content, provenance=provenance, steps=steps)
