"""Binding a PREPARE to a signed plan: verify the plan's signature, then hold its steps.

A strict node accepts a batch only if every step in it is a step of a plan whose signature the
trust policy accepts. The PREPARE brings the plan's signature file and the plan's content and
provenance (`protocol.SignedPlan`). The signature is checked by `rtt_fabric.trust`, the same path
as `rtt verify`. Then the content must hash to the signed plan id, which must be the PREPARE's
`plan_id`. The plan's steps are read back out of the content, the way plan files write them
(docs/format.md): each step names its op and the `routes_*` entry it applies. Only the steps
that touch this node are kept, because no batch for this node can hold another.

Called by the strict gate (rtt_fabric.strict); pure apart from the signature check's cost: one
ed25519 verification (or a sigstore verification) and one hash of the content.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from rtt_fabric import graph, steps, trust

StepKey = tuple[str, bytes, bytes]  # op, the link's canonical JSON, the old link's (or b"")
_SECTIONS = {"add": "routes_add", "del": "routes_del", "update": "routes_change"}


class Refused(Exception):
    def __init__(self, refusal: trust.Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal

    def reason(self) -> str:
        """The NACK reason: the cause's rule id, then the detail."""
        return f"{self.refusal.value}: {self}"


@dataclasses.dataclass(frozen=True)
class Bound:
    """A verified plan, reduced to what PREPARE checks against."""

    plan_id: str
    signer: str | None
    steps: frozenset[StepKey]


def step_key(step: steps.Step) -> StepKey:
    return (step.op.value, step.link.canonical, step.old.canonical if step.old else b"")


def bind(plan_id: str, signature: Mapping[str, Any], content: Mapping[str, Any],
         provenance: Mapping[str, Any] | None, *, policy: trust.TrustPolicy,
         node: str) -> Bound:
    """Verify a signed plan for this node, or raise Refused with the cause."""
    try:
        verdict = trust.verify(orjson.dumps(signature), policy)
    except trust.PolicyError as exc:  # a pinned sigstore root that cannot be read
        raise Refused(trust.Refusal.INVALID, f"cannot verify a sigstore bundle: {exc}"
                      ) from None
    plan = {"plan_id": plan_id, "content": content, "provenance": provenance}
    verdict = trust.bind(verdict, plan)
    if verdict.problem is not None:
        raise Refused(verdict.refusal or trust.Refusal.INVALID, verdict.problem)
    try:
        # A signed plan also vouches for undoing itself: each step's inverse is what a rollback
        # sends (newest batch first) to put the node back on the plan's base graph.
        mine = [s for s in plan_steps(content) if node in (s.link.from_node, s.link.to_node)]
        held = frozenset(step_key(x) for s in mine for x in (s, s.inverse()))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise Refused(trust.Refusal.MISMATCH, f"the signed plan's steps do not read ({exc!r})"
                      ) from None
    return Bound(plan_id=plan_id, signer=verdict.signer, steps=held)


def plan_steps(content: Mapping[str, Any]) -> Iterable[steps.Step]:
    """Every step of a plan's content, in plan order."""
    for step_id in content["order"]:
        entry = content["steps"][step_id]
        op = steps.Op(entry["op"])
        section, index = str(entry["ref"]).split("/")
        if section != _SECTIONS[op.value]:
            raise ValueError(f"step {step_id} refers to {section}, not {_SECTIONS[op.value]}")
        item = content[section][int(index)]
        if op is steps.Op.UPDATE:
            yield steps.Step(op, graph.Link.from_json(item["new"]),
                             graph.Link.from_json(item["old"]))
        else:
            yield steps.Step(op, graph.Link.from_json(item))


def check(bound: Bound, batch: Iterable[steps.Step]) -> None:
    """Every step of the batch must be a step of the bound plan, or the inverse of one."""
    for step in batch:
        if step_key(step) not in bound.steps:
            raise Refused(trust.Refusal.MISMATCH,
                          f"{step.op.value} {step.link.from_} -> {step.link.to} "
                          f"({step.link.cls}) is not a step of the signed plan "
                          f"{bound.plan_id}, or not as the plan writes it")
