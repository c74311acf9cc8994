"""The 2PC participant: the node's route table, its registered symbols, and the protocol rules.

Every change follows one discipline: validate, write the WAL record, make it durable when the
protocol needs it (PREPARED before ACK, COMMIT before it takes effect), then apply it in memory.
Replaying the same records rebuilds the same state, which is how the daemon recovers. The model
of record is spec/tla/RTT.tla (PartPrepareAck, PartNack, PartCommit, PartAbort, PartRecover).
Called by the node daemon; the journal (the WAL) and the crash hook are passed in.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from rtt_fabric import graph, steps

DECISION_HISTORY = 65_536  # decided txids remembered for idempotent COMMIT/ABORT


class Kind(enum.IntEnum):
    """WAL record kinds (fabric/WAL.md)."""

    REGISTER = 1
    UNREGISTER = 2
    PREPARED = 3
    COMMIT = 4
    ABORT = 5


class Journal(Protocol):
    def append(self, kind: int, payload: bytes) -> int: ...
    def sync(self) -> None: ...


class Refused(Exception):
    """A request the participant will not carry out; the daemon replies with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True)
class Symbol:
    service: str
    versions: frozenset[str]
    lanes: frozenset[str]


@dataclasses.dataclass(frozen=True, slots=True)
class Prepared:
    plan_id: str
    steps: tuple[steps.Step, ...]
    reserved: int  # shm ring bytes held until the decision

    @property
    def keys(self) -> frozenset[graph.LinkKey]:
        return frozenset(step.key for step in self.steps)


@dataclasses.dataclass(frozen=True, slots=True)
class Vote:
    ack: bool
    reason: str = ""


def _never(_: str) -> None:
    pass


class Participant:
    def __init__(self, *, node: str, shm_bytes: int, journal: Journal,
                 crash: Callable[[str], None] = _never) -> None:
        self.node, self.shm_bytes, self._journal, self._crash = node, shm_bytes, journal, crash
        self.graph: graph.Graph = graph.EMPTY
        self.epoch = 0
        self.symbols: dict[str, Symbol] = {}
        self.services: dict[str, tuple[str, ...]] = {}
        self.prepared: dict[str, Prepared] = {}
        self.decided: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.since: dict[graph.LinkKey, int] = {}  # epoch at which each link last changed
        # Kept up to date at each COMMIT so no request costs a pass over the whole table.
        self._shm_used = 0
        self._senders: collections.Counter[str] = collections.Counter()  # p2p links per sender

    # --- registration --------------------------------------------------------------------------

    def register(self, service: str, symbols: Sequence[Mapping[str, Any]]) -> None:
        for sym in symbols:
            owner = self.symbols.get(sym["saddr"])
            if owner is not None and owner.service != service:
                raise Refused("conflict", f"{sym['saddr']} is registered by {owner.service}")
        self._log(Kind.REGISTER, {"service": service, "symbols": list(symbols)}, sync=True)

    def unregister(self, service: str) -> None:
        if service not in self.services:
            raise Refused("unknown-service", f"service {service!r} is not registered")
        self._log(Kind.UNREGISTER, {"service": service}, sync=True)

    # --- two-phase commit ----------------------------------------------------------------------

    def prepare(self, txid: str, plan_id: str, batch: Sequence[steps.Step]) -> Vote:
        """Validate, reserve, log PREPARED durably, and only then vote ACK."""
        held = self.prepared.get(txid)
        if held is not None:  # a retried PREPARE whose ACK was lost
            return Vote(True) if held.steps == tuple(batch) else Vote(False, "txid reused")
        if txid in self.decided:
            return Vote(False, f"txid {txid} is already decided ({self.decided[txid]})")
        reason, reserved = self._check(batch)
        if reason:
            return Vote(False, reason)
        self._crash("prepare.before_log")
        record = {"txid": txid, "plan_id": plan_id, "reserved": reserved,
                  "steps": [steps.to_json(s) for s in batch]}
        self._log(Kind.PREPARED, record, sync=True)
        self._crash("prepare.after_log")
        return Vote(True)

    def commit(self, txid: str) -> str:
        """Make a prepared batch take effect (one epoch flip); a second COMMIT is a no-op."""
        if self.decided.get(txid) == "commit":
            return "already committed"
        if self.decided.get(txid) == "abort":
            raise Refused("aborted", f"txid {txid} was aborted")
        if txid not in self.prepared:
            raise Refused("unknown-txid", f"txid {txid} is not prepared here")
        self._crash("commit.before_log")
        self._journal.append(Kind.COMMIT, orjson.dumps({"txid": txid}))
        self._crash("commit.before_sync")
        self._journal.sync()  # one fsync per batch: the group commit
        self._crash("commit.after_sync")
        self._apply(Kind.COMMIT, {"txid": txid})
        return "committed"

    def abort(self, txid: str) -> str:
        """Release a prepared batch. Aborting an unknown txid is a no-op (presumed abort)."""
        if self.decided.get(txid) == "commit":
            raise Refused("committed", f"txid {txid} is already committed")
        if txid not in self.prepared:
            if txid not in self.decided:
                # Remember the presumed abort, so a PREPARE that arrives late is refused. Not
                # fsynced: losing it in a crash only loses that refusal, never a decision.
                self._log(Kind.ABORT, {"txid": txid}, sync=False)
            return "not prepared"
        self._log(Kind.ABORT, {"txid": txid}, sync=True)
        self._crash("abort.after_log")
        return "aborted"

    def in_doubt(self) -> list[str]:
        return sorted(self.prepared)

    # --- validation ----------------------------------------------------------------------------

    def _check(self, batch: Sequence[steps.Step]) -> tuple[str, int]:
        """Why this batch cannot be prepared here ("" if it can), and the ring bytes it needs."""
        if self.prepared:
            # One transaction at a time, and an in-doubt one is resolved before the next vote:
            # the formal model relies on it (spec/invariants.md, requirement 5).
            return f"txid {min(self.prepared)} is prepared and undecided", 0
        after = self._after(batch)
        if isinstance(after, str):
            return after, 0
        need = self._net_rings(after)
        free = self.shm_bytes - self.shm_used()
        budget = f"shm budget: needs {need} ring bytes, {max(free, 0)} free" if need > free else ""
        return self._check_steps(batch) or self._check_slots(batch) or budget, max(0, need)

    def _check_steps(self, batch: Sequence[steps.Step]) -> str:
        for step in batch:
            link = step.link
            if self.node not in (link.from_node, link.to_node):
                return f"{_show(step)}: neither end is on node {self.node}"
            problem = "" if step.op is steps.Op.DEL else self._endpoint_problem(link)
            if problem:
                return f"{_show(step)}: {problem}"
        return ""

    def _after(self, batch: Sequence[steps.Step]
               ) -> dict[graph.LinkKey, graph.Link | None] | str:
        """The links the batch touches, as the batch leaves them; or why it does not apply.

        An overlay over the committed graph, so the cost follows the batch, not the table.
        """
        overlay: dict[graph.LinkKey, graph.Link | None] = {}
        for step in batch:
            present = overlay[step.key] if step.key in overlay else self.graph.links.get(step.key)
            expected = None if step.op is steps.Op.ADD else (
                step.link if step.op is steps.Op.DEL else step.old)
            if present != expected:
                return (f"does not apply to the committed graph: {step.op.value} {step.key}: "
                        + ("link already present" if expected is None else
                           "link absent or different"))
            overlay[step.key] = None if step.op is steps.Op.DEL else step.link
        return overlay

    def _check_slots(self, batch: Sequence[steps.Step]) -> str:
        senders: collections.Counter[str] = collections.Counter()
        for step in batch:
            if step.link.cls == "p2p" and step.op is not steps.Op.UPDATE:
                senders[step.link.from_] += 1 if step.op is steps.Op.ADD else -1
        for src in sorted(senders):
            if self._senders[src] + senders[src] > 1:
                return f"{src} would have two active p2p links"
        return ""

    def _net_rings(self, after: Mapping[graph.LinkKey, graph.Link | None]) -> int:
        """Ring bytes the batch adds, net of the rings it frees (an inverse batch frees what
        its batch took, so it is never refused for want of its own memory)."""
        before = sum(_ring(link, self.node) for key in after
                     if (link := self.graph.links.get(key)) is not None)
        return sum(_ring(link, self.node) for link in after.values() if link) - before

    def _endpoint_problem(self, link: graph.Link) -> str:
        for saddr, node in ((link.from_, link.from_node), (link.to, link.to_node)):
            if node != self.node:
                continue  # the remote end is checked by its own node
            sym = self.symbols.get(saddr)
            if sym is None:
                return f"{saddr} is not registered on {self.node}"
            if link.lane not in sym.lanes:
                return f"{saddr} does not speak {link.lane}"
        target = self.symbols.get(link.to) if link.to_node == self.node else None
        if target is not None and link.version not in target.versions:
            return f"{link.to} offers {sorted(target.versions)}, not {link.version}"
        return ""

    def shm_used(self) -> int:
        return self._shm_used

    # --- the log -------------------------------------------------------------------------------

    def _log(self, kind: Kind, record: dict[str, Any], *, sync: bool) -> None:
        self._journal.append(kind, orjson.dumps(record))
        if sync:
            self._journal.sync()
        self._apply(kind, record)

    def replay(self, kind: int, payload: bytes) -> None:
        """Apply one WAL record during recovery (no journaling, no crash points)."""
        self._apply(Kind(kind), orjson.loads(payload))

    def _apply(self, kind: Kind, record: dict[str, Any]) -> None:
        if kind is Kind.REGISTER:
            self._drop_service(record["service"])
            for sym in record["symbols"]:
                self.symbols[sym["saddr"]] = Symbol(
                    service=record["service"], versions=frozenset(sym["versions"]),
                    lanes=frozenset(sym.get("lanes", ("shm", "uds", "tcp"))))
            self.services[record["service"]] = tuple(s["saddr"] for s in record["symbols"])
        elif kind is Kind.UNREGISTER:
            self._drop_service(record["service"])
        elif kind is Kind.PREPARED:
            self.prepared[record["txid"]] = Prepared(
                plan_id=record["plan_id"], reserved=record["reserved"],
                steps=tuple(steps.from_json(s) for s in record["steps"]))
        elif kind is Kind.COMMIT:
            held = self.prepared.pop(record["txid"])
            self._account(held.steps, sign=-1, links=self.graph.links)
            self.graph = steps.apply(self.graph, held.steps)
            self._account(held.steps, sign=+1, links=self.graph.links)
            self.epoch += 1
            for key in held.keys:
                if key in self.graph.links:
                    self.since[key] = self.epoch
                else:
                    self.since.pop(key, None)
            self._decide(record["txid"], "commit")
        else:
            self.prepared.pop(record["txid"], None)
            self._decide(record["txid"], "abort")

    def _account(self, batch: Iterable[steps.Step], *, sign: int,
                  links: Mapping[graph.LinkKey, graph.Link]) -> None:
        """Add (or, with sign -1, remove) the links the batch touches to the running totals."""
        for key in {step.key for step in batch}:
            link = links.get(key)
            if link is not None:
                self._shm_used += sign * _ring(link, self.node)
                if link.cls == "p2p":
                    self._senders[link.from_] += sign

    def _drop_service(self, service: str) -> None:
        for saddr in self.services.pop(service, ()):
            self.symbols.pop(saddr, None)

    def _decide(self, txid: str, decision: str) -> None:
        self.decided[txid] = decision
        while len(self.decided) > DECISION_HISTORY:
            self.decided.popitem(last=False)

    # --- checkpoints ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state, for a WAL checkpoint; `restore` reads it back."""
        return orjson.dumps({
            "node": self.node, "epoch": self.epoch,
            "links": [link.to_json() for link in self.graph.links.values()],
            "since": [[*key, epoch] for key, epoch in self.since.items()],
            "symbols": {saddr: {"service": s.service, "versions": sorted(s.versions),
                                "lanes": sorted(s.lanes)} for saddr, s in self.symbols.items()},
            "prepared": {txid: {"plan_id": p.plan_id, "reserved": p.reserved,
                                "steps": [steps.to_json(s) for s in p.steps]}
                         for txid, p in self.prepared.items()},
            "decided": list(self.decided.items()),
        })

    def restore(self, payload: bytes) -> None:
        state = orjson.loads(payload)
        self.epoch = state["epoch"]
        self.graph = graph.Graph.of(graph.Link.from_json(item) for item in state["links"])
        self._shm_used = sum(_ring(link, self.node) for link in self.graph.links.values())
        self._senders = collections.Counter(k[0] for k in self.graph.links if k[2] == "p2p")
        self.since = {(f, t, c): e for f, t, c, e in state["since"]}
        self.symbols, self.services = {}, {}
        for saddr, s in state["symbols"].items():
            self.symbols[saddr] = Symbol(service=s["service"], versions=frozenset(s["versions"]),
                                         lanes=frozenset(s["lanes"]))
            self.services[s["service"]] = (*self.services.get(s["service"], ()), saddr)
        self.prepared = {txid: Prepared(plan_id=p["plan_id"], reserved=p["reserved"],
                                        steps=tuple(steps.from_json(s) for s in p["steps"]))
                         for txid, p in state["prepared"].items()}
        self.decided = collections.OrderedDict((t, d) for t, d in state["decided"])


def _ring(link: graph.Link, node: str) -> int:
    if link.lane != "shm" or link.from_node != node:
        return 0
    return graph.ring_bytes(link.throughput_qps, link.latency_budget_ms)


def _show(step: steps.Step) -> str:
    return f"{step.op.value} {step.link.from_} -> {step.link.to} ({step.link.cls})"

