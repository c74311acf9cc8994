"""The desired state: parsed files merged into one value, with cross-file duplicates reported.

Called by the planner pipeline after the source seam has parsed every file (through its cache).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from rtt_controller.core import model
from rtt_controller.core.diagnostics import Rule
from rtt_controller.core.loading import Entry, Finding, ParsedFile
from rtt_fabric import canonical


@dataclasses.dataclass(frozen=True)
class DesiredState:
    symbols: Mapping[str, Entry[model.Symbol]]
    routes: tuple[Entry[model.Route], ...]
    policy: model.Policy
    policy_hash: str


def policy_hash(policy: model.Policy) -> str:
    """The policy's part of the plan id. `reconcile` is left out: it tells the loop how to treat
    drift, and changes no plan."""
    return canonical.digest(policy.model_dump(mode="json", by_alias=True, exclude={"reconcile"}))


def assemble(files: Iterable[ParsedFile]) -> tuple[DesiredState, list[Finding]]:
    """Merge parsed files (in path order) and report cross-file duplicates."""
    findings: list[Finding] = []
    symbols: dict[str, Entry[model.Symbol]] = {}
    routes: dict[tuple[str, str, str], Entry[model.Route]] = {}
    policy_parts: dict[str, tuple[str, object]] = {}
    for parsed in sorted(files, key=lambda p: p.path):
        findings.extend(parsed.findings)
        for sym in parsed.symbols:
            first = symbols.setdefault(sym.value.saddr, sym)
            if first is not sym:
                findings.append(Finding(sym.path, sym.loc, Rule.DUPLICATE_SYMBOL,
                                        f"{sym.value.saddr} is already declared in {first.path}"))
        for route in parsed.routes:
            first_route = routes.setdefault(route.value.key, route)
            if first_route is not route:
                findings.append(Finding(route.path, route.loc, Rule.DUPLICATE_ROUTE,
                                        f"{_show(route.value)} is already declared in "
                                        f"{first_route.path}"))
        for key, value in parsed.policy:
            if key in policy_parts:
                findings.append(Finding(parsed.path, (key,), Rule.DUPLICATE_POLICY,
                                        f"policy section `{key}` is already set in "
                                        f"{policy_parts[key][0]}"))
                continue
            policy_parts[key] = (parsed.path, value)
    policy = model.Policy.model_validate({k: v for k, (_, v) in policy_parts.items()})
    state = DesiredState(symbols=symbols, routes=tuple(routes.values()), policy=policy,
                         policy_hash=policy_hash(policy))
    return state, findings


def _show(route: model.Route) -> str:
    return f"{route.from_} -> {route.to} ({route.class_.value})"
