"""Solver seam: solves the core's `IlpModel` with PuLP, on CBC (bundled) or HiGHS (highspy).

The only place that touches a MILP solver, which spawns a process (CBC) or loads a native
library (HiGHS). Objectives are minimised lexicographically: each stage is solved, then held at its
optimum while the next is minimised. Called by the CLI and, later, the reconcile loop.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from rtt_controller.core import assignment, ilp

if TYPE_CHECKING:
    import pulp

BACKENDS = ("cbc", "highs")


class SolverUnavailable(Exception):
    """The requested backend is not installed."""


def solver(backend: str = "cbc", *, time_limit_s: float = 60.0
           ) -> Callable[[ilp.IlpModel], Mapping[str, int]]:
    """A `Solve` function for the planner, bound to one backend."""
    if backend not in BACKENDS:
        raise SolverUnavailable(f"unknown solver backend {backend!r}; choose from {BACKENDS}")

    def solve(model: ilp.IlpModel) -> Mapping[str, int]:
        return _solve(model, backend, time_limit_s)

    return solve


def _command(backend: str, time_limit_s: float) -> pulp.LpSolver:
    import pulp  # noqa: PLC0415 - 0.1 s to import (with highspy); greedy plans never need it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pulp deprecates its own constructors
        if backend == "highs":
            cmd = pulp.HiGHS(msg=False, timeLimit=time_limit_s, threads=1)
            if not cmd.available():
                raise SolverUnavailable("HiGHS needs `highspy` (pip install 'rtt[highs]')")
            return cmd
        # No `threads`: CBC given `-threads 1` with `-sec` starts a helper thread that, when the
        # solve ends within microseconds, can miss its wake-up and hold the exit for its full
        # 10 s timed wait (seen under strace in bench/converge.py: about one call in 1,200).
        # Without it CBC runs serially, on one core all the same.
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS prints its banner to fd 1 from C++ even with msg=False; stdout carries our JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _solve(model: ilp.IlpModel, backend: str, time_limit_s: float) -> dict[str, int]:
    import pulp  # noqa: PLC0415 - see _command

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        variables = {name: pulp.LpVariable(name, cat=pulp.LpBinary) for name in model.variables}
    prob = pulp.LpProblem("rtt_assign", pulp.LpMinimize)
    for k, c in enumerate(model.constraints):
        expr = pulp.lpSum(coef * variables[v] for v, coef in c.terms)
        if c.sense == "<=":
            prob += expr <= c.rhs, f"c{k}"
        elif c.sense == ">=":
            prob += expr >= c.rhs, f"c{k}"
        else:
            prob += expr == c.rhs, f"c{k}"
    cmd = _command(backend, time_limit_s)
    for stage, terms in enumerate(model.objectives):
        if not terms:
            continue
        objective = pulp.lpSum(coef * variables[v] for v, coef in terms)
        prob.setObjective(objective)
        with _quiet_stdout():
            prob.solve(cmd)
        # A time-limited HiGHS run reports status Optimal; sol_status tells a proven optimum.
        if prob.status == pulp.LpStatusInfeasible:
            raise assignment.Infeasible("no lane assignment fits node capacities and placement")
        if prob.sol_status != pulp.LpSolutionOptimal:
            raise assignment.Infeasible(
                f"solver stopped without a proven optimum ({pulp.LpSolution[prob.sol_status]})")
        best = round(pulp.value(objective))
        prob += objective <= best, f"lex{stage}"
    if not any(model.objectives):
        prob.setObjective(pulp.lpSum([]))
        with _quiet_stdout():
            prob.solve(cmd)
    return {name: round(var.value() or 0) for name, var in variables.items()}
