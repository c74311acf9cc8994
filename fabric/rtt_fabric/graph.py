"""The route graph the fabric realizes: links, their canonical JSON, and the graph hash.

A `Graph` holds every link with its assigned lane and placement. The planner computes one for the
desired state; the node daemon computes one for what it has committed (its observed graph); the
two are compared by `Graph.hash`, so the hash is defined here, once, for both. Pure: no I/O.
docs/format.md ("Graph files") specifies the JSON and the hash.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from rtt_fabric import canonical

GRAPH_KIND = "rtt.graph/v1"
SLOT_BYTES = 256
MIN_SLOTS = 64


def ring_bytes(throughput_qps: int, latency_budget_ms: float) -> int:
    """An shm ring holds two latency budgets of frames at full rate, in power-of-two slots."""
    frames = math.ceil(throughput_qps * latency_budget_ms / 1000 * 2)
    slots = max(MIN_SLOTS, 1 << max(0, frames - 1).bit_length())
    return slots * SLOT_BYTES

LinkKey = tuple[str, str, str]  # (from, to, class)


@dataclasses.dataclass(frozen=True)
class Link:
    """One realized route. Field names match the JSON written in plans and graph files."""

    from_: str
    to: str
    cls: str
    lane: str
    from_node: str
    to_node: str
    version: str
    caps: tuple[str, ...]
    latency_budget_ms: float
    throughput_qps: int
    backpressure: str
    breaker: tuple[int, float] | None = None  # (errors, window_s); None: the node's default

    @property
    def key(self) -> LinkKey:
        return (self.from_, self.to, self.cls)

    def to_json(self) -> dict[str, Any]:
        """The link as JSON; cached per value, so callers must not mutate it."""
        return self._json

    @functools.cached_property
    def _json(self) -> dict[str, Any]:
        return {
            "from": self.from_, "to": self.to, "class": self.cls, "lane": self.lane,
            "from_node": self.from_node, "to_node": self.to_node, "version": self.version,
            "caps": list(self.caps),
            "qos": {"latency_budget_ms": self.latency_budget_ms,
                    "throughput_qps": self.throughput_qps, "backpressure": self.backpressure,
                    **({"breaker": {"errors": self.breaker[0], "window_s": self.breaker[1]}}
                       if self.breaker else {})},
        }

    @functools.cached_property
    def canonical(self) -> bytes:
        """RFC 8785 JSON of the link; cached, and embedded as-is when a plan is hashed.

        Written field by field (keys in JCS order) because it runs once per link of every graph;
        tests/fabric/test_canonical.py checks it equals `canonical.dumps(self.to_json())`.
        """
        s, n = canonical.string, canonical.number
        caps = ",".join(s(c) for c in self.caps)
        breaker = (f'"breaker":{{"errors":{n(self.breaker[0])},"window_s":{n(self.breaker[1])}}},'
                   if self.breaker else "")
        return (
            f'{{"caps":[{caps}],"class":{s(self.cls)},"from":{s(self.from_)},'
            f'"from_node":{s(self.from_node)},"lane":{s(self.lane)},'
            f'"qos":{{"backpressure":{s(self.backpressure)},{breaker}'
            f'"latency_budget_ms":{n(self.latency_budget_ms)},'
            f'"throughput_qps":{n(self.throughput_qps)}}},'
            f'"to":{s(self.to)},"to_node":{s(self.to_node)},"version":{s(self.version)}}}'
        ).encode()

    @functools.cached_property
    def digest(self) -> str:
        # Cached per value: an incremental replan re-hashes only links that changed.
        return hashlib.sha256(self.canonical).hexdigest()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Link:
        qos = data["qos"]
        return cls(from_=str(data["from"]), to=str(data["to"]), cls=str(data["class"]),
                   lane=str(data["lane"]), from_node=str(data["from_node"]),
                   to_node=str(data["to_node"]), version=str(data["version"]),
                   caps=tuple(str(c) for c in data["caps"]),
                   latency_budget_ms=float(qos["latency_budget_ms"]),
                   throughput_qps=int(qos["throughput_qps"]),
                   backpressure=str(qos["backpressure"]),
                   breaker=(int(qos["breaker"]["errors"]), float(qos["breaker"]["window_s"]))
                   if qos.get("breaker") else None)


@dataclasses.dataclass(frozen=True)
class Graph:
    links: Mapping[LinkKey, Link]

    @classmethod
    def of(cls, links: Iterable[Link]) -> Graph:
        # No sort here: the hash and the JSON order by key themselves.
        return cls({link.key: link for link in links})

    @functools.cached_property
    def placement(self) -> dict[str, str]:
        """The node of every symbol an endpoint of some link (read-only; cached per graph)."""
        nodes: dict[str, str] = {}
        for key in sorted(self.links):  # in key order, so a base that disagrees with itself
            link = self.links[key]       # about a symbol's node still reads one way only
            nodes[link.from_] = link.from_node
            nodes[link.to] = link.to_node
        return nodes

    @functools.cached_property
    def hash(self) -> str:
        """`sha256-<hex>` of the canonical JSON {kind, links: [link digests in key order]}."""
        # Hex digests need no escaping, so their JSON array is written directly.
        digests = ",".join(f'"{self.links[k].digest}"' for k in sorted(self.links))
        return canonical.digest({"kind": GRAPH_KIND,
                                 "links": canonical.Raw(f"[{digests}]".encode("ascii"))})

    def to_json(self) -> dict[str, Any]:
        return {"kind": GRAPH_KIND, "graph_hash": self.hash,
                "links": [self.links[k].to_json() for k in sorted(self.links)]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Graph:
        if data.get("kind") != GRAPH_KIND:
            raise ValueError(f"expected kind {GRAPH_KIND!r}")
        return cls.of(Link.from_json(item) for item in data["links"])


EMPTY = Graph({})
