"""The lane-and-placement ILP, formulated as plain values so the core stays solver-free.

`formulate` builds an `IlpModel` (binary variables, linear constraints, lexicographic objectives);
a solver seam (`rtt_controller.solvers`) solves it and `decode` maps the solution back. The model:

- x[r,l] = 1 when route r uses lane l (only its feasible lanes exist); exactly one per route.
- p[s,n] = 1 when unplaced symbol s runs on node n; exactly one per symbol.
- c[r] <= 1 when r's endpoints may share a node; local lanes (shm, uds) need c[r] = 1.
- z[r,n] >= x[r,shm] + p[from,n] - 1 counts r's ring against node n's shm budget.

Objectives, in order: unmet route lane preferences, traffic-weighted latency, churn against the
base, then a canonical tie-break that weights each lane and node choice by its preference rank
and by the route's or symbol's canonical position (earlier ones get earlier-preferred choices).
The weights make remaining ties rare, not impossible: two assignments can still tie on the sum
(for example two routes trading shm for lanes of equal cost). CBC and HiGHS agree on every
instance the tests and benchmarks use; a tie the weights cannot break would show as two solvers
disagreeing on the plan id, which tests/controller/test_determinism.py checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from rtt_controller.core import costs, inventory, model
from rtt_controller.core.assignment import Assignment
from rtt_controller.core.graph import Demand

Terms = tuple[tuple[str, int], ...]

SEPARABLE = "separable"  # the backend recorded when `presolve` settled the model: no solver ran


@dataclasses.dataclass(frozen=True)
class Constraint:
    terms: Terms
    sense: str  # "<=", ">=" or "=="
    rhs: int


@dataclasses.dataclass(frozen=True)
class IlpModel:
    variables: tuple[str, ...]  # all binary
    constraints: tuple[Constraint, ...]
    objectives: tuple[Terms, ...]  # minimised lexicographically


@dataclasses.dataclass
class _Builder:
    variables: list[str] = dataclasses.field(default_factory=list)
    constraints: list[Constraint] = dataclasses.field(default_factory=list)

    def var(self, name: str) -> str:
        self.variables.append(name)
        return name

    def add(self, terms: Sequence[tuple[str, int]], sense: str, rhs: int) -> None:
        self.constraints.append(Constraint(tuple(terms), sense, rhs))


def formulate(demands: Sequence[Demand], policy: model.Policy,
              base: inventory.Graph) -> IlpModel:
    b = _Builder()
    nodes = [n.name for n in policy.nodes]
    fixed = _fixed_placement(demands)
    unplaced = sorted({s for d in demands for s in (d.key[0], d.key[1]) if s not in fixed})
    place = {s: {n: b.var(f"p{i}_{j}") for j, n in enumerate(nodes)}
             for i, s in enumerate(unplaced)}
    for s in unplaced:
        b.add([(v, 1) for v in place[s].values()], "==", 1)

    def on(s: str, n: str) -> tuple[list[tuple[str, int]], int]:
        """p[s,n] as (terms, constant): a variable if unplaced, else 0/1."""
        if s in place:
            return [(place[s][n], 1)], 0
        return [], int(fixed[s] == n)

    x: dict[tuple[int, model.Lane], str] = {}
    shm_load: dict[str, list[tuple[str, int]]] = {n: [] for n in nodes}
    for i, d in enumerate(demands):
        for lane in d.lanes:
            x[i, lane] = b.var(f"x{i}_{lane.value}")
        b.add([(x[i, lane], 1) for lane in d.lanes], "==", 1)
        local = [x[i, lane] for lane in d.lanes if lane in model.LOCAL_LANES]
        src, dst = d.key[0], d.key[1]
        if local and (src in place or dst in place):
            c = b.var(f"c{i}")
            b.add([(v, 1) for v in local] + [(c, -1)], "<=", 0)
            for n in nodes:
                (ts, ks), (td, kd) = on(src, n), on(dst, n)
                # c <= 1 - p[src,n] + p[dst,n]  and  c <= 1 + p[src,n] - p[dst,n]
                b.add([(c, 1), *ts, *((v, -k) for v, k in td)], "<=", 1 - ks + kd)
                b.add([(c, 1), *((v, -k) for v, k in ts), *td], "<=", 1 + ks - kd)
        if model.Lane.SHM in d.lanes:
            size = costs.ring_bytes(d)
            for n in nodes:
                ts, ks = on(src, n)
                if not ts and not ks:
                    continue
                if not ts:  # placement fixed on n: the ring counts whenever shm is chosen
                    shm_load[n].append((x[i, model.Lane.SHM], size))
                    continue
                z = b.var(f"z{i}_{nodes.index(n)}")
                b.add([(z, 1), (x[i, model.Lane.SHM], -1), *((v, -k) for v, k in ts)], ">=", -1)
                shm_load[n].append((z, size))
    for node in policy.nodes:
        if shm_load[node.name]:
            b.add(shm_load[node.name], "<=", costs.node_capacity(node))
    objectives = _objectives(demands, policy, base, x, place)
    return IlpModel(tuple(b.variables), tuple(b.constraints), objectives)


def presolve(model: IlpModel) -> tuple[dict[str, int], IlpModel | None]:
    """Settle what can be settled without a solver: (values fixed, the model left to solve,
    None when nothing is left). A model it cannot reduce comes back whole, with nothing fixed.

    A choice is a constraint "these variables sum to 1" (one lane per route, one node per
    symbol). When every variable sits in exactly one choice, each objective is a sum of
    per-variable costs, so without the other constraints (capacities, co-location) the
    lexicographic optimum takes, in every choice, its best variable: the one whose costs stage
    by stage are smallest (any other pick is worse at the first stage where it differs, and no
    other choice can make that up). Then:

    - if those picks satisfy every other constraint, they are the optimum of the whole model;
    - else, when every other constraint is a budget (`<=`, coefficients >= 0), a choice whose
      best variable is in no budget keeps it: in any optimum, putting that choice back on its
      best variable costs it nothing at any stage and frees budget, so an optimum with it
      exists. Likewise, in a choice that competes for a budget, of its variables that use none
      only the best can be in an optimum (swapping to it uses the same budget, none, and
      costs less). Only the competing choices go to the solver, without those variables.

    Within a choice, a tie over every stage goes to the earlier variable; the tie-break stage
    gives every variable of a choice its own cost, so the optimum is unique and the solver
    would pick the same. Incremental replans of placed routes land here.
    """
    split = _choices(model)
    if split is None:
        return {}, model
    choices, rest = split
    cost = {v: [0] * len(model.objectives) for v in model.variables}
    for stage, terms in enumerate(model.objectives):
        for v, coef in terms:
            cost[v][stage] += coef
    best = [min(names, key=cost.__getitem__) for names in choices]  # first of equals
    solution = dict.fromkeys(model.variables, 0)
    solution.update(dict.fromkeys(best, 1))
    if all(_holds(c, solution) for c in rest):
        return solution, None
    if not all(c.sense == "<=" and all(coef >= 0 for _, coef in c.terms) for c in rest):
        return {}, model
    budgeted = {v for c in rest for v, coef in c.terms if coef}
    fixed: dict[str, int] = {}
    for names, pick in zip(choices, best, strict=True):
        if pick not in budgeted:
            fixed.update((v, int(v == pick)) for v in names)
            continue
        free = [v for v in names if v not in budgeted]
        if free:  # of the choices that use no budget, only the best can be chosen
            keep = min(free, key=cost.__getitem__)
            fixed.update((v, 0) for v in free if v != keep)
    if not fixed:
        return {}, model
    left = [v for v in model.variables if v not in fixed]
    return fixed, IlpModel(
        variables=tuple(left),
        constraints=tuple(Constraint(tuple((v, k) for v, k in c.terms if v not in fixed),
                                     c.sense, c.rhs)  # fixed variables here are all 0
                          for c in model.constraints
                          if any(v not in fixed for v, _ in c.terms)),
        objectives=tuple(tuple((v, k) for v, k in terms if v not in fixed)
                         for terms in model.objectives))


def _choices(model: IlpModel) -> tuple[list[list[str]], list[Constraint]] | None:
    """The model's choices and its other constraints; None unless every variable is in
    exactly one choice."""
    chosen_in: set[str] = set()
    choices: list[list[str]] = []
    rest: list[Constraint] = []
    for c in model.constraints:
        if c.sense == "==" and c.rhs == 1 and all(coef == 1 for _, coef in c.terms):
            names = [v for v, _ in c.terms]
            if chosen_in.intersection(names):
                return None
            chosen_in.update(names)
            choices.append(names)
        else:
            rest.append(c)
    return (choices, rest) if len(chosen_in) == len(model.variables) else None


def _holds(c: Constraint, solution: Mapping[str, int]) -> bool:
    total = sum(coef * solution[v] for v, coef in c.terms)
    return total <= c.rhs if c.sense == "<=" else total >= c.rhs if c.sense == ">=" \
        else total == c.rhs


def _fixed_placement(demands: Sequence[Demand]) -> dict[str, str]:
    fixed = {}
    for d in demands:
        if d.from_node is not None:
            fixed[d.key[0]] = d.from_node
        if d.to_node is not None:
            fixed[d.key[1]] = d.to_node
    return fixed


def _objectives(demands: Sequence[Demand], policy: model.Policy, base: inventory.Graph,
                x: Mapping[tuple[int, model.Lane], str],
                place: Mapping[str, Mapping[str, str]]) -> tuple[Terms, ...]:
    preference, latency, churn, tie = [], [], [], []
    prior = base.placement
    rank = {lane: k for k, lane in enumerate(policy.routing.prefer)}
    count = len(demands)
    for i, d in enumerate(demands):
        old = base.links.get(d.key)
        for lane in d.lanes:
            v = x[i, lane]
            if d.preferred is not None and d.preferred in d.lanes and lane != d.preferred:
                preference.append((v, 1))
            latency.append((v, costs.latency_cost(d, lane, policy)))
            if old is not None and old.lane != lane.value:
                churn.append((v, 1))
            if rank[lane]:
                tie.append((v, rank[lane] * (count - i)))
    symbols = sorted(place)
    for k, s in enumerate(symbols):
        for j, (node, v) in enumerate(place[s].items()):
            if s in prior and prior[s] != node:
                churn.append((v, 1))
            if j:
                tie.append((v, j * (len(symbols) - k)))
    return tuple(tuple(t) for t in (preference, latency, churn, tie))


def decode(demands: Sequence[Demand], policy: model.Policy, solution: Mapping[str, int],
           *, backend: str) -> Assignment:
    """Map a solver's 0/1 values back to lanes and nodes."""
    nodes = [n.name for n in policy.nodes]
    placement = _fixed_placement(demands)
    unplaced = sorted({s for d in demands for s in (d.key[0], d.key[1]) if s not in placement})
    for i, s in enumerate(unplaced):
        placement[s] = next(n for j, n in enumerate(nodes) if solution.get(f"p{i}_{j}", 0) > 0.5)
    lanes = {d.key: str(next(lane for lane in d.lanes
                             if solution.get(f"x{i}_{lane.value}", 0) > 0.5))
             for i, d in enumerate(demands)}
    return Assignment(lanes=lanes, placement=placement, algorithm="ilp", backend=backend)
