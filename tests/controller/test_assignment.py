"""Lane and placement assignment: constraints hold, objectives order, greedy stays close."""

from __future__ import annotations

import pytest
from bench import generate
from hypothesis import HealthCheck, given, settings

from rtt_controller import solvers
from rtt_controller.core import assignment, costs, graph, ilp, inventory, loading, planner, state
from rtt_controller.core.model import Lane
from rtt_controller.core.plan import Provenance
from tests import strategies

ORIGIN = Provenance(repo=None, commit=None, created_at=None, backend="")


def _files(symbols: str, routes: str, policy: str) -> list[loading.ParsedFile]:
    return [loading.parse_file("desired/symbols/s.yaml", symbols.encode()),
            loading.parse_file("desired/routes/r.yaml", routes.encode()),
            loading.parse_file("policies/p.yaml", policy.encode())]


def _desired(files, *, algorithm="ilp", backend="cbc", base=inventory.EMPTY):
    return planner.desired_graph(files, base=base, solve=solvers.solver(backend),
                                 backend=backend, algorithm=algorithm)


SYMS = "symbols:\n" + "".join(
    f"  - {{saddr: rtt://d/api/s{i}, type: api, version: 1.0.0, caps: [c]{node}}}\n"
    for i, node in enumerate([", node: a", "", ", node: a", "", ", node: b"]))


def test_unplaced_symbols_join_their_peers_so_shm_is_possible():
    routes = ("routes:\n  - {from: rtt://d/api/s0, to: rtt://d/api/s1}\n"
              "  - {from: rtt://d/api/s3, to: rtt://d/api/s4}\n")
    policy = "acl: {default: allow}\nnodes: [{name: a}, {name: b}]\n"
    for algorithm in ("ilp", "greedy"):
        d = _desired(_files(SYMS, routes, policy), algorithm=algorithm)
        assert d.assignment.placement["rtt://d/api/s1"] == "a"
        assert d.assignment.placement["rtt://d/api/s3"] == "b"
        assert {link.lane for link in d.graph.links.values()} == {"shm"}


def test_split_nodes_force_tcp_and_a_pin_cannot_override_that():
    routes = "routes:\n  - {from: rtt://d/api/s0, to: rtt://d/api/s4}\n"
    policy = "acl: {default: allow}\nnodes: [{name: a}, {name: b}]\n"
    d = _desired(_files(SYMS, routes, policy))
    assert [link.lane for link in d.graph.links.values()] == ["tcp"]
    pinned = policy + "routing:\n  pins: [{from: 'rtt://d/api/s0', lane: shm}]\n"
    with pytest.raises(planner.Rejected) as rejected:
        _desired(_files(SYMS, routes, pinned))
    assert [f.rule.value for f in rejected.value.findings] == ["pin-lane-unusable"]


def _fan_in(qps: list[int]) -> tuple[str, str]:
    """Symbols and bus routes, all on node a: sender i (at qps[i]) to one receiver, 10 ms."""
    last = len(qps)
    syms = "symbols:\n" + "".join(
        f"  - {{saddr: rtt://d/api/s{i}, type: api, version: 1.0.0, caps: [c], node: a}}\n"
        for i in range(last + 1))
    routes = "routes:\n" + "".join(
        f"  - {{from: rtt://d/api/s{i}, to: rtt://d/api/s{last}, class: bus, "
        f"qos: {{throughput_qps: {rate}, latency_budget_ms: 10}}}}\n"
        for i, rate in enumerate(qps))
    return syms, routes


def test_shm_capacity_binds_and_goes_to_the_busiest_routes():
    syms, routes = _fan_in([1000, 50000, 1000, 50000, 1000, 50000])
    # Each 50k route needs a 1024-slot ring (256 KiB); 1 MiB holds three of them plus change.
    policy = ("acl: {default: allow}\nnodes: [{name: a, shm_mb: 1}]\n"
              "routing: {fanout: {default_max: 9}}\n")
    for algorithm in ("ilp", "greedy"):
        d = _desired(_files(syms, routes, policy), algorithm=algorithm)
        lanes = {link.from_: link.lane for link in d.graph.links.values()}
        used = sum(costs.ring_bytes(dm) for dm in d.demands
                   if lanes[dm.key[0]] == "shm")
        assert used <= 1024 * 1024
        assert [lanes[f"rtt://d/api/s{i}"] for i in (1, 3, 5)] == ["shm"] * 3


def test_route_lane_preference_beats_latency():
    routes = "routes:\n  - {from: rtt://d/api/s0, to: rtt://d/api/s2, lane: uds}\n"
    policy = "acl: {default: allow}\nnodes: [{name: a}, {name: b}]\n"
    d = _desired(_files(SYMS, routes, policy))
    assert [link.lane for link in d.graph.links.values()] == ["uds"]


def test_churn_is_minimised_against_the_base_when_latency_ties():
    syms = "symbols:\n" + "".join(
        f"  - {{saddr: rtt://d/api/s{i}, type: api, version: 1.0.0, caps: [c]}}\n"
        for i in range(2))
    routes = "routes:\n  - {from: rtt://d/api/s0, to: rtt://d/api/s1}\n"
    policy = "acl: {default: allow}\nnodes: [{name: a}, {name: b}]\n"
    fresh = _desired(_files(syms, routes, policy))
    assert set(fresh.assignment.placement.values()) == {"a"}  # canonical tie-break: first node
    moved = inventory.Graph.of(
        inventory.Link(**{**link.__dict__, "from_node": "b", "to_node": "b"})
        for link in fresh.graph.links.values())
    again = _desired(_files(syms, routes, policy), base=moved)
    assert set(again.assignment.placement.values()) == {"b"}


def test_infeasible_capacity_is_reported_as_invalid_input():
    syms = "symbols:\n" + "".join(
        f"  - {{saddr: rtt://d/api/s{i}, type: api, version: 1.0.0, caps: [c], node: a, "
        "lanes: [shm]}\n" for i in range(2))
    routes = "routes:\n  - {from: rtt://d/api/s0, to: rtt://d/api/s1}\n"
    policy = "acl: {default: allow}\nnodes: [{name: a, shm_mb: 0}]\n"
    for algorithm in ("ilp", "greedy"):
        with pytest.raises(planner.Rejected) as rejected:
            _desired(_files(syms, routes, policy), algorithm=algorithm)
        assert [f.rule.value for f in rejected.value.findings] == ["plan-infeasible"]


@pytest.mark.parametrize("routes", [60, 200])
def test_greedy_is_close_to_the_ilp_and_highs_matches_cbc(routes):
    files = [loading.parse_file(p, t.encode())
             for p, t in sorted(generate.generate(routes, seed=3).items())]
    ilp = _desired(files, algorithm="ilp")
    greedy = _desired(files, algorithm="greedy")
    highs = _desired(files, algorithm="ilp", backend="highs")
    policy = ilp.state.policy
    best = assignment.score(ilp.demands, ilp.assignment, inventory.EMPTY, policy)
    fast = assignment.score(greedy.demands, greedy.assignment, inventory.EMPTY, policy)
    assert best <= fast  # the ILP is optimal for the lexicographic objective
    assert fast.latency <= best.latency * 1.05
    assert highs.graph.hash == ilp.graph.hash


def _model(files, base=inventory.EMPTY):
    validated, findings = state.assemble(files)
    demands, more = graph.resolve(validated)
    assert not findings + more
    demands.sort(key=lambda d: d.key)
    return ilp.formulate(demands, validated.policy, base), demands, validated.policy


def _stages(model, solution):
    return [sum(coef * solution[v] for v, coef in terms) for terms in model.objectives]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=strategies.desired_states(placed=True) | strategies.desired_states()
       | strategies.desired_states(placed=True, shm_mb=0))  # no ring fits: only some compete
def test_what_presolve_settles_is_what_the_solver_would_choose(drawn):
    model, _, _ = _model(strategies.parse(strategies.to_files(drawn)))
    fixed, left = ilp.presolve(model)
    cbc = solvers.solver("cbc")
    solved = dict(cbc(model))
    presolved = fixed if left is None else {**fixed, **cbc(left)}
    # Every choice has a unique best (the tie-break stage), so the optimum is unique.
    assert _stages(model, presolved) == _stages(model, solved)
    assert presolved == solved


def test_placed_routes_skip_the_solver_until_the_shm_budget_binds():
    syms, routes = _fan_in([50000] * 5)
    policy = ("acl: {{default: allow}}\nnodes: [{{name: a, shm_mb: {mb}}}]\n"
              "routing: {{fanout: {{default_max: 9}}}}\n")
    roomy = _desired(_files(syms, routes, policy.format(mb=2)))
    assert roomy.assignment.backend == ilp.SEPARABLE
    assert [link.lane for link in roomy.graph.links.values()] == ["shm"] * 5
    # Five 256 KiB rings do not fit in 1 MiB: every route's own best breaks the budget, so the
    # solver decides which route gives up shm.
    tight = _desired(_files(syms, routes, policy.format(mb=1)))
    assert tight.assignment.backend == "cbc"
    assert sorted(link.lane for link in tight.graph.links.values()) == ["shm"] * 4 + ["uds"]
    # A sixth sender that asks for uds keeps it without the solver: its best pick uses no
    # budget. Only the five that compete for the budget are left to solve, each between shm
    # and its best lane without a ring (uds; tcp can never beat it).
    syms, routes = _fan_in([50000] * 6)
    routes = routes.replace("{from: rtt://d/api/s0,", "{lane: uds, from: rtt://d/api/s0,")
    model, demands, _ = _model(_files(syms, routes, policy.format(mb=1)))
    fixed, left = ilp.presolve(model)
    assert left is not None
    assert {v for v, on in fixed.items() if on} == {"x0_uds"}
    assert [d.lanes for d in demands[1:]] == [(Lane.SHM, Lane.UDS, Lane.TCP)] * 5
    assert left.variables == tuple(f"x{i}_{lane}" for i in range(1, 6) for lane in ("shm", "uds"))
    mixed = _desired(_files(syms, routes, policy.format(mb=1)))
    assert sorted(link.lane for link in mixed.graph.links.values()) == ["shm"] * 4 + ["uds"] * 2
