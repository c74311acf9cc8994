"""Applying a plan file to the fabric: its batches, its signature, the coordinator around them.

Called by `rtt apply` (and, next, by the reconcile loop). The plan's own batches are applied in
order; a signature found beside the plan (`<plan>.dsse.json`, `<plan>.sigstore.json`) travels
with every PREPARE, so nodes in strict mode can bind to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from rtt_controller.core import model
from rtt_controller.core import plan as plan_mod
from rtt_controller.reconcile import coordinator as coord
from rtt_controller.reconcile import records, rollout
from rtt_controller.signing import sidecar
from rtt_fabric import steps, wal


def batches(plan: plan_mod.Plan) -> list[list[steps.Step]]:
    """The plan's batches as steps, in plan order (content["order"] lists `plan.steps`' ids)."""
    by_id = dict(zip(plan.content["order"], plan.steps, strict=True))
    return [[by_id[step_id] for step_id in batch] for batch in plan.content["batches"]]


def signed(plan_file: Path, data: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a strict node's PREPARE wants: the first signature beside the plan, with the plan's
    content and provenance; None for an unsigned plan."""
    found = sidecar.beside(plan_file)
    if not found:
        return None
    return {"signature": orjson.loads(found[0].read_bytes()), "content": data["content"],
            "provenance": data["provenance"]}


_PHASE = {coord.Outcome.PROMOTED: records.Phase.CONVERGED,
          coord.Outcome.ROLLED_BACK: records.Phase.ROLLED_BACK,
          coord.Outcome.FAILED: records.Phase.FAILED}


def apply_file(plan_file: Path, *, nodes: Mapping[str, coord.Node], state: Path,
               clock: Callable[[], float] = time.time,
               canary: model.Rollout | None = None) -> coord.Result:
    """Load, check and apply one plan file with a coordinator whose WAL lives in `state`, and
    which answers the nodes' in-doubt queries on `state/coordinator.sock` meanwhile. The status
    and the history in `state` record the apply (reconcile/records.py). With `canary`, the
    batches go out in its steps, each judged by the SLO gate (reconcile/rollout.py)."""
    data = orjson.loads(plan_file.read_bytes())
    plan = plan_mod.load(data)
    with locked(state):
        return _apply(plan_file, data, plan, nodes=nodes, state=state, clock=clock,
                      canary=canary)


class Busy(Exception):
    """Another controller holds this state directory."""


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """One controller per state directory: an exclusive lock held for the whole apply."""
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{state}: another controller is using this state directory") from None
        yield
    finally:
        os.close(fd)


def _apply(plan_file: Path, data: Mapping[str, Any], plan: plan_mod.Plan, *,
           nodes: Mapping[str, coord.Node], state: Path, clock: Callable[[], float],
           canary: model.Rollout | None) -> coord.Result:
    book = records.Records(state)
    started, began = records.utc_now(clock), clock()
    book.set_status(phase=records.Phase.APPLYING.value, plan_id=plan.plan_id,
                    revision=plan.provenance.commit, since=started)
    with wal.Wal.open(state / "wal") as log:
        coordinator = coord.Coordinator(log=log, nodes=nodes)
        steps_of = batches(plan)
        gated = None if canary is None else rollout.Rollout(nodes=nodes, policy=canary,
                                                            batches=steps_of)
        with coord.resolving(coordinator, state / "coordinator.sock"):
            result = coordinator.apply(plan_id=plan.plan_id, batches=steps_of,
                                       desired_hash=str(plan.content["desired_graph_hash"]),
                                       signed_plan=signed(plan_file, data),
                                       canary=coord.Canary(gated.ends, gated.gate)
                                       if gated else None)
    phase = _PHASE[result.outcome]
    book.set_status(phase=phase.value, since=records.utc_now(clock),
                    applied_plan_id=plan.plan_id if phase is records.Phase.CONVERGED
                    else book.status().get("applied_plan_id"),
                    observed_graph_hash=result.observed_hash, last_error=result.reason or None)
    book.append(records.Entry(revision=plan.provenance.commit, plan_id=plan.plan_id,
                              outcome=result.outcome.value, started_at=started,
                              duration_s=round(clock() - began, 3), batches=result.committed,
                              reason=result.reason,
                              desired_graph_hash=str(plan.content["desired_graph_hash"]),
                              canary=tuple(s.to_json() for s in gated.steps) if gated else ()))
    return result


def parse_nodes(specs: Sequence[str]) -> dict[str, coord.Node]:
    """`NAME=SOCKET` pairs, one per fabric node; ValueError names a bad one."""
    nodes: dict[str, coord.Node] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{spec!r}: expected NODE=SOCKET")
        nodes[name] = coord.SocketNode(name, Path(path))
    return nodes
