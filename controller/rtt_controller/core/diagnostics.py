"""Diagnostics: the one shape every validation error takes.

Every stage of the core reports problems as `Diagnostic` values instead of raising, so that a single
run can report all errors at once. The CLI renders them as `path:line: rule: message (hint: ...)`.
"""

from __future__ import annotations

import dataclasses
import enum


class Rule(enum.StrEnum):
    """Stable rule ids. They are part of the CLI contract: scripts match on them."""

    YAML_SYNTAX = "yaml-syntax"
    NOT_UTF8 = "not-utf8"
    FILE_TOO_LARGE = "file-too-large"
    SCHEMA = "schema"
    UNKNOWN_FIELD = "unknown-field"
    MISSING_FIELD = "missing-field"
    BAD_SADDR = "bad-saddr"
    BAD_VERSION = "bad-version"
    DUPLICATE_SYMBOL = "duplicate-symbol"
    DUPLICATE_ROUTE = "duplicate-route"
    DUPLICATE_POLICY = "duplicate-policy-key"
    UNKNOWN_SYMBOL = "unknown-symbol"
    UNKNOWN_NODE = "unknown-node"
    TYPE_PAIR = "type-pair-not-allowed"
    VERSION_MEET = "version-meet-empty"
    CAPS_EMPTY = "caps-negotiation-empty"
    ACL_DENIED = "acl-denied"
    DUPLICATE_ACTIVE_LINK = "duplicate-active-link"
    FANOUT = "fanout-limit"
    PIN_LANE = "pin-lane-unusable"
    NO_LANE = "no-feasible-lane"
    CYCLE = "dependency-cycle"
    INFEASIBLE = "plan-infeasible"


HINTS: dict[Rule, str] = {
    Rule.YAML_SYNTAX: "fix the YAML syntax at the marked position",
    Rule.NOT_UTF8: "save the file as UTF-8",
    Rule.FILE_TOO_LARGE: "split the file; each desired/policy file has a size limit",
    Rule.SCHEMA: "see docs/format.md for the expected shape",
    Rule.UNKNOWN_FIELD: "remove the field or fix its spelling; see docs/format.md",
    Rule.MISSING_FIELD: "add the required field; see docs/format.md",
    Rule.BAD_SADDR: "a symbol address reads rtt://<domain>/<kind>/<name>, lower-case [a-z0-9_-]",
    Rule.BAD_VERSION: "versions read MAJOR.MINOR.PATCH; ranges like ^1.2, ~1.4.0, >=1.0 <2",
    Rule.DUPLICATE_SYMBOL: "each saddr is declared once across desired/symbols/",
    Rule.DUPLICATE_ROUTE: "each (from, to, class) is declared once across desired/routes/",
    Rule.DUPLICATE_POLICY: "each top-level policy key lives in exactly one file under policies/",
    Rule.UNKNOWN_SYMBOL: "declare the symbol under desired/symbols/ or fix the address",
    Rule.UNKNOWN_NODE: "declare the node under `nodes:` in policies/",
    Rule.TYPE_PAIR: "add the pair to `types.allowed_pairs` in policies/, or route elsewhere",
    Rule.VERSION_MEET: "widen the route's `version` range or upgrade the target symbol",
    Rule.CAPS_EMPTY: "the two symbols must share at least one capability (and cover `caps`)",
    Rule.ACL_DENIED: "add an allow rule to `acl.rules` in policies/ if this route is intended",
    Rule.DUPLICATE_ACTIVE_LINK: "a p2p sender has one active link; use class: bus to fan out",
    Rule.FANOUT: "raise the limit under `routing.fanout` or split the bus",
    Rule.PIN_LANE: "pin a lane both endpoints support (shm/uds need one node)",
    Rule.NO_LANE: "no lane meets the route's constraints; relax the pin, budget or placement",
    Rule.CYCLE: "routes must form a DAG so they can be wired downstream-first; break the loop",
    Rule.INFEASIBLE: "capacities cannot hold every route; raise node capacity or relax pins",
}


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Diagnostic:
    """One problem, located in a source file. Ordered by location for stable output."""

    path: str
    line: int
    rule: Rule
    message: str
    hint: str = ""

    def render(self) -> str:
        hint = self.hint or HINTS.get(self.rule, "")
        tail = f" (hint: {hint})" if hint else ""
        return f"{self.path}:{self.line}: {self.rule.value}: {self.message}{tail}"

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "rule": self.rule.value,
            "message": self.message,
            "hint": self.hint or HINTS.get(self.rule, ""),
        }
