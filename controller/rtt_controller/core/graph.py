"""The route graph: resolve desired routes against the symbol registry and policy, and check the
static constraints (type pairs, version meets, capabilities, ACL, fan-out, active links, pins,
cycles). Produces one `Demand` per valid route: everything the assigner needs to choose a lane.

Called by the planner pipeline; pure over the `DesiredState`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import networkx as nx

from rtt_controller.core import model, saddr, versions
from rtt_controller.core.diagnostics import Rule
from rtt_controller.core.loading import Entry, Finding
from rtt_controller.core.state import DesiredState


@dataclasses.dataclass(frozen=True, slots=True)
class Demand:
    """A checked route awaiting lane and placement: the input of the assigner."""

    key: tuple[str, str, str]
    type_pair: tuple[str, str]
    version: str  # the highest offered version inside the route's range
    caps: tuple[str, ...]
    latency_budget_ms: float
    throughput_qps: int
    backpressure: str
    breaker: tuple[int, float] | None  # (errors, window_s) from policy, or the node's default
    lanes: tuple[model.Lane, ...]  # feasible lanes, in `routing.prefer` order
    preferred: model.Lane | None
    from_node: str | None  # fixed placement, or None for the assigner to choose
    to_node: str | None


class Memo:
    """Results of earlier `resolve` calls, for a long-running caller (the reconcile loop).

    Parsed files come from a cache keyed by blob id, so an unchanged file yields the very same
    `Entry` objects in the next snapshot. The memo keys on that identity: a route whose entry and
    endpoint symbol entries are the same objects, under the same policy, resolves as before. The
    set-wide checks (active links, fan-out, cycles) depend only on the set of route keys, so a
    change that keeps the keys (a QoS edit) skips them. Pure: it only remembers values.
    """

    def __init__(self) -> None:
        self.policy_hash = ""
        self.routes: dict[int, tuple[Any, ...]] = {}
        self.valid_keys: frozenset[tuple[str, str, str]] = frozenset()

    def scope(self, policy_hash: str) -> None:
        if policy_hash != self.policy_hash:
            self.policy_hash, self.routes, self.valid_keys = policy_hash, {}, frozenset()


def resolve(state: DesiredState, memo: Memo | None = None) -> tuple[list[Demand], list[Finding]]:
    """Check every route and return the demands of those that pass, plus all findings."""
    memo = memo or Memo()
    memo.scope(state.policy_hash)
    findings: list[Finding] = []
    policy = state.policy
    nodes = {n.name for n in policy.nodes}
    for sym in state.symbols.values():
        if sym.value.node is not None and sym.value.node not in nodes:
            findings.append(_at(sym, Rule.UNKNOWN_NODE,
                                f"node {sym.value.node!r} is not declared in policy `nodes`"))
    demands, seen, symbols, known = [], {}, state.symbols, memo.routes
    for route in state.routes:  # the hot loop of a replan: kept tight on purpose
        src, dst = symbols.get(route.value.from_), symbols.get(route.value.to)
        hit = known.get(id(route))
        if hit is None or hit[0] is not route or hit[1] is not src or hit[2] is not dst:
            found: list[Finding] = []
            hit = (route, src, dst, _resolve_route(route, state, found), found)
        if hit[4]:
            findings.extend(hit[4])
        seen[id(route)] = hit
        if hit[3] is not None:
            demands.append(hit[3])
    memo.routes = seen  # drop what this state no longer holds
    keys = frozenset(route.value.key for route in state.routes)
    if keys != memo.valid_keys:
        set_findings = (_check_active_links(state.routes)
                        + _check_fanout(state.routes, policy.routing.fanout)
                        + _check_cycles(state.routes))
        findings.extend(set_findings)
        memo.valid_keys = keys if not set_findings else frozenset()
    return demands, findings


def _at(entry: Entry[Any], rule: Rule, message: str) -> Finding:
    return Finding(entry.path, entry.loc, rule, message)


def _resolve_route(entry: Entry[model.Route], state: DesiredState,
                   findings: list[Finding]) -> Demand | None:
    route, policy = entry.value, state.policy
    before = len(findings)
    ends = []
    for end in (route.from_, route.to):
        sym = state.symbols.get(end)
        if sym is None:
            findings.append(_at(entry, Rule.UNKNOWN_SYMBOL, f"{end} is not a declared symbol"))
        else:
            ends.append(sym.value)
    if len(ends) < 2:
        return None
    src, dst = ends
    if policy.types is not None and (src.type, dst.type) not in policy.types.allowed_pairs:
        findings.append(_at(entry, Rule.TYPE_PAIR,
                            f"type pair {src.type} -> {dst.type} is not allowed"))
    meet = versions.meet(dst.offered(), versions.parse_range(route.version))
    if not meet:
        findings.append(_at(entry, Rule.VERSION_MEET,
                            f"{dst.saddr} offers {_versions(dst)}; none is in {route.version!r}"))
    shared = sorted(set(src.caps) & set(dst.caps))
    caps = sorted(set(route.caps) & set(shared)) if route.caps is not None else shared
    if not caps or (route.caps is not None and len(caps) != len(set(route.caps))):
        findings.append(_at(entry, Rule.CAPS_EMPTY,
                            f"capabilities do not negotiate: {src.saddr} has {list(src.caps)}, "
                            f"{dst.saddr} has {list(dst.caps)}"
                            + (f", route asks {list(route.caps)}" if route.caps else "")))
    if not _acl_allows(policy.acl, route.from_, route.to):
        findings.append(_at(entry, Rule.ACL_DENIED,
                            f"ACL denies {route.from_} -> {route.to}"))
    lanes = _feasible_lanes(entry, src, dst, policy, findings)
    if len(findings) > before or lanes is None:
        return None
    qos, defaults = route.qos, policy.qos_defaults
    return Demand(
        key=route.key, type_pair=(src.type, dst.type), version=versions.render(meet[0]),
        caps=tuple(caps),
        latency_budget_ms=qos.latency_budget_ms or defaults.latency_budget_ms,
        throughput_qps=qos.throughput_qps or defaults.throughput_qps,
        backpressure=(qos.backpressure or defaults.backpressure).value,
        breaker=(defaults.breaker.errors, defaults.breaker.window_s) if defaults.breaker else None,
        lanes=lanes, preferred=route.lane, from_node=src.node, to_node=dst.node,
    )


def _versions(sym: model.Symbol) -> str:
    return ", ".join(versions.render(v) for v in sym.offered())


def _acl_allows(acl: model.Acl, src: str, dst: str) -> bool:
    for rule in acl.rules:
        if saddr.glob_match(rule.from_, src) and saddr.glob_match(rule.to, dst):
            return rule.action == "allow"
    return acl.default == "allow"


def _feasible_lanes(entry: Entry[model.Route], src: model.Symbol, dst: model.Symbol,
                    policy: model.Policy, findings: list[Finding]) -> tuple[model.Lane, ...] | None:
    """Lanes the pair can use under capability, placement, budget, prefer and pins."""
    route = entry.value
    budget_us = (route.qos.latency_budget_ms or policy.qos_defaults.latency_budget_ms) * 1000
    split = src.node is not None and dst.node is not None and src.node != dst.node
    usable = [
        lane for lane in policy.routing.prefer
        if lane in src.lanes and lane in dst.lanes
        and not (split and lane in model.LOCAL_LANES)
        and policy.lanes.get(lane, model.DEFAULT_LANE_MODELS[lane]).latency_us <= budget_us
    ]
    pins = {p.lane for p in policy.routing.pins
            if saddr.glob_match(p.from_, route.from_) and saddr.glob_match(p.to, route.to)}
    if len(pins) > 1:
        findings.append(_at(entry, Rule.PIN_LANE,
                            f"conflicting pins {sorted(pins)} match this route"))
        return None
    if pins:
        (pin,) = pins
        if pin not in usable:
            why = "endpoints are on different nodes" if split and pin in model.LOCAL_LANES \
                else f"usable lanes are {[str(lane) for lane in usable]}"
            findings.append(_at(entry, Rule.PIN_LANE, f"pinned to {pin} but {why}"))
            return None
        return (pin,)
    if not usable:
        findings.append(_at(entry, Rule.NO_LANE,
                            "no lane is shared by both symbols, allowed by routing.prefer, "
                            "possible for their placement and within the latency budget"))
        return None
    return tuple(usable)


def _check_active_links(routes: Iterable[Entry[model.Route]]) -> list[Finding]:
    """At most one active p2p link per sender: `(from, class != bus)` is a slot."""
    by_slot: dict[str, list[Entry[model.Route]]] = collections.defaultdict(list)
    for entry in routes:
        if entry.value.class_ is model.RouteClass.P2P:
            by_slot[entry.value.from_].append(entry)
    findings = []
    for src, entries in by_slot.items():
        entries.sort(key=lambda e: e.value.key)
        for dup in entries[1:]:
            findings.append(_at(dup, Rule.DUPLICATE_ACTIVE_LINK,
                                f"{src} already has an active p2p link to {entries[0].value.to}"))
    return findings


def _check_fanout(routes: Iterable[Entry[model.Route]], fanout: model.Fanout) -> list[Finding]:
    by_src: dict[str, list[Entry[model.Route]]] = collections.defaultdict(list)
    for entry in routes:
        if entry.value.class_ is model.RouteClass.BUS:
            by_src[entry.value.from_].append(entry)
    findings = []
    for src, entries in by_src.items():
        limit = next((lim.max for lim in fanout.limits if saddr.glob_match(lim.from_, src)),
                     fanout.default_max)
        if len(entries) > limit:
            entries.sort(key=lambda e: e.value.key)
            findings.append(_at(entries[limit], Rule.FANOUT,
                                f"{src} fans out to {len(entries)} targets; the limit is {limit}"))
    return findings


def _is_acyclic(edges: Iterable[tuple[str, str]]) -> bool:
    """Kahn's algorithm on plain dicts: the common, valid case costs one linear pass."""
    succ: dict[str, list[str]] = collections.defaultdict(list)
    indegree: collections.Counter[str] = collections.Counter()
    for src, dst in edges:
        succ[src].append(dst)
        indegree[dst] += 1
    ready = [n for n in succ if not indegree[n]]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for nxt in succ.get(node, ()):
            indegree[nxt] -= 1
            if not indegree[nxt]:
                ready.append(nxt)
    return seen == len(succ.keys() | indegree.keys())


def _check_cycles(routes: Sequence[Entry[model.Route]]) -> list[Finding]:
    """Routes are wired downstream-first, so they must form a DAG; report each cycle once."""
    if _is_acyclic((e.value.from_, e.value.to) for e in routes):
        return []
    graph: nx.DiGraph = nx.DiGraph()
    entries: dict[tuple[str, str], Entry[model.Route]] = {}
    for entry in routes:
        graph.add_edge(entry.value.from_, entry.value.to)
        entries.setdefault((entry.value.from_, entry.value.to), entry)
    findings = []
    for component in nx.strongly_connected_components(graph):
        sub = graph.subgraph(component)
        if len(component) == 1 and not sub.number_of_edges():
            continue
        cycle = nx.find_cycle(sub, source=min(component))
        path = " -> ".join([cycle[0][0], *(edge[1] for edge in cycle)])
        first = min((entries[edge[0], edge[1]] for edge in cycle), key=lambda e: (e.path, e.loc))
        findings.append(_at(first, Rule.CYCLE, f"routes form a cycle: {path}"))
    return findings
