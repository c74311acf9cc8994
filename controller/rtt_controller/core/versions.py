"""Semantic versions and the ranges routes accept, with the meet (intersection) test.

A symbol offers one or more concrete versions; a route accepts a range of its target's versions.
A bind is valid only when the meet, the offered versions inside the range, is non-empty.
Called by the model (parsing) and the graph checks (meet).
"""

from __future__ import annotations

import dataclasses
import functools
import re

# ASCII digits only, matched whole (fullmatch): "1.1\u0663.0" or a trailing newline is no version.
_VERSION_RE = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
_PARTIAL_RE = re.compile(r"(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?(?:\.(0|[1-9][0-9]*))?")
_COMPARATOR_RE = re.compile(r"(\^|~|>=|<=|>|<|==|=)?\s*(\S+)")

Version = tuple[int, int, int]


@functools.lru_cache(maxsize=65536)  # pure, and the same few texts recur across thousands of routes
def parse_version(text: str) -> Version:
    """Parse `MAJOR.MINOR.PATCH`; raise ValueError with a readable message."""
    match = _VERSION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a MAJOR.MINOR.PATCH version")
    major, minor, patch = (int(g) for g in match.groups())
    return (major, minor, patch)


@dataclasses.dataclass(frozen=True, slots=True)
class _Bound:
    op: str  # one of >=, >, <=, <, ==
    version: Version

    def admits(self, v: Version) -> bool:
        match self.op:
            case ">=":
                return v >= self.version
            case ">":
                return v > self.version
            case "<=":
                return v <= self.version
            case "<":
                return v < self.version
            case _:
                return v == self.version


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """A union (`||`) of intersections of bounds. `*` admits every version."""

    alternatives: tuple[tuple[_Bound, ...], ...]

    def admits(self, v: Version) -> bool:
        return any(all(b.admits(v) for b in conj) for conj in self.alternatives)


def _expand(op: str, text: str) -> tuple[_Bound, ...]:
    match = _PARTIAL_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a version")
    given = [int(g) for g in match.groups() if g is not None]
    major, minor, patch = [*given, 0, 0, 0][:3]
    low = (major, minor, patch)
    if op == "^":
        if major > 0 or len(given) == 1:
            high = (major + 1, 0, 0)
        elif minor > 0 or len(given) == 2:
            high = (0, minor + 1, 0)
        else:
            high = (0, 0, patch + 1)
        return (_Bound(">=", low), _Bound("<", high))
    if op == "~":
        high = (major + 1, 0, 0) if len(given) == 1 else (major, minor + 1, 0)
        return (_Bound(">=", low), _Bound("<", high))
    if op in ("", "=", "==") and len(given) < 3:
        # A partial bare version means "any patch/minor under it", as npm and cargo read it.
        high = (major + 1, 0, 0) if len(given) == 1 else (major, minor + 1, 0)
        return (_Bound(">=", low), _Bound("<", high))
    return (_Bound({"": "==", "=": "=="}.get(op, op), low),)


@functools.lru_cache(maxsize=65536)
def parse_range(text: str) -> Range:
    """Parse a range such as `^1.2`, `~1.4.0`, `>=1.0 <2`, `>=1.0, <2 || ^3`, or `*`."""
    alternatives: list[tuple[_Bound, ...]] = []
    for raw in text.split("||"):
        alt = raw.strip()
        if not alt:
            raise ValueError(f"empty alternative in range {text!r}; write * for any version")
        if alt == "*":
            alternatives.append(())
            continue
        bounds: list[_Bound] = []
        for token in re.split(r"[\s,]+", alt):
            comp = _COMPARATOR_RE.fullmatch(token)
            if comp is None:
                raise ValueError(f"{token!r} is not a version comparator")
            bounds.extend(_expand(comp.group(1) or "", comp.group(2)))
        alternatives.append(tuple(bounds))
    return Range(tuple(alternatives))


def meet(offered: tuple[Version, ...], accepted: Range) -> tuple[Version, ...]:
    """The offered versions that the range admits, highest first."""
    return tuple(sorted((v for v in offered if accepted.admits(v)), reverse=True))


def render(v: Version) -> str:
    return f"{v[0]}.{v[1]}.{v[2]}"
