"""The planner pipeline: parsed files + base graph -> desired graph -> ordered, batched plan.

Pure: the solver arrives as a function (`Solve`), provided by `rtt_controller.solvers`. Invalid
input raises `Rejected` with every finding of the run, not just the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from rtt_controller.core import (
    assignment,
    greedy,
    ilp,
    inventory,
    ordering,
    plan,
    state,
)
from rtt_controller.core import graph as graph_mod
from rtt_controller.core.diagnostics import Rule
from rtt_controller.core.loading import Finding, ParsedFile

PLANNER_VERSION = "1"

Solve = Callable[[ilp.IlpModel], Mapping[str, int]]
Progress = Callable[[str], None]  # told what each stage did; does nothing by default


def _silent(_: str) -> None:
    pass
Algorithm = Literal["auto", "ilp", "greedy"]


class Rejected(Exception):
    def __init__(self, findings: Sequence[Finding]) -> None:
        super().__init__(f"{len(findings)} finding(s)")
        self.findings = list(findings)


@dataclasses.dataclass
class Memo:
    """What a long-running caller keeps between plans so a small change costs little.

    Optional everywhere; results never depend on it (tests plan with and without one).
    """

    resolve: graph_mod.Memo = dataclasses.field(default_factory=graph_mod.Memo)
    links: assignment.LinkMemo = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Desired:
    """A validated desired state with its lanes and placement chosen."""

    state: state.DesiredState
    demands: Sequence[graph_mod.Demand]  # in key order
    assignment: assignment.Assignment
    graph: inventory.Graph


@dataclasses.dataclass(frozen=True)
class Result:
    plan: plan.Plan
    desired: Desired


def validate(files: Sequence[ParsedFile]) -> state.DesiredState:
    """Validate without assigning lanes: the `rtt validate` path."""
    validated, findings = state.assemble(files)
    findings += graph_mod.resolve(validated)[1]
    if findings:
        raise Rejected(findings)
    return validated


def desired_graph(files: Sequence[ParsedFile], *, base: inventory.Graph, solve: Solve | None,
                  backend: str, algorithm: Algorithm = "auto", memo: Memo | None = None,
                  progress: Progress = _silent) -> Desired:
    """Validate the desired state and assign lanes and placement."""
    memo = memo or Memo()
    validated, findings = state.assemble(files)
    progress(f"read {len(files)} files: {len(validated.symbols)} symbols, "
             f"{len(validated.routes)} routes")
    demands, graph_findings = graph_mod.resolve(validated, memo.resolve)
    findings += graph_findings
    if findings:
        raise Rejected(findings)
    progress(f"checked {len(demands)} routes")
    demands.sort(key=lambda d: d.key)
    use_ilp = algorithm == "ilp" or (
        algorithm == "auto" and len(demands) <= validated.policy.routing.greedy_threshold)
    try:
        if use_ilp and solve is not None and demands:
            model = ilp.formulate(demands, validated.policy, base)
            fixed, left = ilp.presolve(model)
            solution = fixed if left is None else {**fixed, **solve(left)}
            chosen = ilp.decode(demands, validated.policy, solution,
                                backend=ilp.SEPARABLE if left is None else backend)
        else:
            chosen = greedy.assign(demands, validated.policy, base, memo.links)
    except assignment.Infeasible as exc:
        where = next((p.path for p in files for key, _ in p.policy if key == "nodes"), "policies/")
        raise Rejected([Finding(where, ("nodes",), Rule.INFEASIBLE, str(exc))]) from None
    progress(f"assigned lanes and placement ({chosen.algorithm}, {chosen.backend})")
    return Desired(state=validated, demands=demands, assignment=chosen,
                   graph=inventory.Graph.of(assignment.links(demands, chosen, memo.links)))


def make_plan(files: Sequence[ParsedFile], *, base: inventory.Graph, solve: Solve | None,
              backend: str, origin: plan.Provenance, algorithm: Algorithm = "auto",
              memo: Memo | None = None, progress: Progress = _silent) -> Result:
    """Plan `files` against `base`; `origin` is the provenance minus the backend, filled here."""
    desired = desired_graph(files, base=base, solve=solve, backend=backend, algorithm=algorithm,
                            memo=memo, progress=progress)
    policy = desired.state.policy
    ordered = ordering.order(inventory.to_steps(inventory.diff(base, desired.graph)))
    objective = assignment.score(desired.demands, desired.assignment, base, policy)
    built = plan.build(
        ordered=ordered,
        batches=ordering.batches(ordered, size=policy.rollout.batch_size),
        base_hash=base.hash, desired_hash=desired.graph.hash,
        policy_hash=desired.state.policy_hash, planner_version=PLANNER_VERSION,
        algorithm=desired.assignment.algorithm, objective=objective.to_json(),
        provenance=dataclasses.replace(origin, backend=desired.assignment.backend),
    )
    progress(f"planned {len(ordered)} steps in {len(built.content['batches'])} batches")
    return Result(plan=built, desired=desired)
