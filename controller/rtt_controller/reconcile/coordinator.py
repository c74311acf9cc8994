"""The 2PC coordinator: applies a plan's batches across the fabric's nodes, or undoes them.

For each batch: PREPARE on every node the batch touches (each node gets the steps with an end on
it); on unanimous ACK, force-log COMMIT in the coordinator's own WAL and only then send COMMIT;
on any NACK, force-log ABORT, send it, and roll back: the inverses of the batches already
committed, newest first, each its own transaction. After the last batch the observed graph (the
union of every node's committed links) must hash to the plan's desired graph, or the plan rolls
back too. The model of record is spec/tla/RTT.tla (CoordPrepare, CoordLogCommit, CoordSendCommit,
CoordAbort, Verify, Rollback, CoordRecover).

Participants that are in doubt ask `resolve(txid)` (the daemon's `--coordinator` socket, served
by `resolving`): a logged decision is answered from the log; the transaction in flight is
aborted first (logged) and then answered "abort", so it can never commit afterwards; anything
else is presumed aborted. Called by the reconcile loop; tests drive it directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from rtt_fabric import graph, protocol, steps, wal
from rtt_fabric.client import Client, ClientError


class Kind(enum.IntEnum):
    """The coordinator's WAL record kinds."""

    START = 1  # a coordinator process started: its epoch
    BEGIN = 2  # a plan's apply began: plan id, the batches and the desired hash
    COMMIT = 3
    ABORT = 4
    END = 5  # the plan ended: promoted, rolled-back or failed


class Outcome(enum.StrEnum):
    PROMOTED = "promoted"  # every batch committed and observed == desired
    ROLLED_BACK = "rolled-back"  # a NACK or a failed verify; the fabric is on the base graph
    FAILED = "failed"  # the rollback itself could not finish; needs a person


@dataclasses.dataclass(frozen=True)
class Result:
    outcome: Outcome
    plan_id: str
    committed: int  # forward batches committed before the end
    reason: str = ""
    observed_hash: str = ""


class Node(Protocol):
    """The seam to one fabric node (a daemon's control socket in production)."""

    name: str

    def call(self, op: str, **fields: Any) -> dict[str, Any]: ...


class SocketNode:
    """A node daemon reached over its control socket, one connection per call."""

    def __init__(self, name: str, path: Path, *, timeout_s: float = 30.0) -> None:
        self.name, self.path, self.timeout_s = name, path, timeout_s

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        with Client(self.path, timeout_s=self.timeout_s) as client:
            return client.call(op, **fields)


class Coordinator:
    def __init__(self, *, log: wal.Wal, nodes: Mapping[str, Node],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._wal, self.nodes, self._sleep = log, dict(nodes), sleep
        self._lock = threading.Lock()  # decisions vs. resolve requests from the nodes
        self.decided: dict[str, str] = {}
        self.epoch = 0
        for record in log.replay():
            self._replay(record.kind, orjson.loads(record.payload))
        self.epoch += 1
        self._log(Kind.START, {"epoch": self.epoch})
        self._in_flight: str | None = None

    def _replay(self, kind: int, record: dict[str, Any]) -> None:
        if kind == Kind.START:
            self.epoch = max(self.epoch, int(record["epoch"]))
        elif kind in (Kind.COMMIT, Kind.ABORT):
            self.decided[record["txid"]] = "commit" if kind == Kind.COMMIT else "abort"

    def _log(self, kind: Kind, record: dict[str, Any]) -> None:
        self._wal.append(int(kind), orjson.dumps(record))
        self._wal.sync()  # every coordinator record is forced before anyone acts on it

    # --- resolve: the nodes' in-doubt question -------------------------------------------------

    def resolve(self, txid: str) -> str:
        with self._lock:
            if txid in self.decided:
                return self.decided[txid]
            if txid == self._in_flight:  # decide now, durably, so it can never commit later
                self._decide(txid, "abort")
            return "abort"  # presumed abort: never logged as committed

    def _decide(self, txid: str, decision: str) -> None:
        self._log(Kind.COMMIT if decision == "commit" else Kind.ABORT, {"txid": txid})
        self.decided[txid] = decision

    # --- apply -----------------------------------------------------------------------------------

    def apply(self, *, plan_id: str, batches: Sequence[Sequence[steps.Step]], desired_hash: str,
              signed_plan: Mapping[str, Any] | None = None) -> Result:
        """Run every batch forward; on a NACK or a failed verify, undo what was committed."""
        self._log(Kind.BEGIN, {"plan_id": plan_id, "batches": len(batches),
                               "desired_hash": desired_hash})
        done: list[Sequence[steps.Step]] = []
        for index, batch in enumerate(batches):
            txid = self._txid(plan_id, "f", index)
            ok, reason = self._transaction(txid, plan_id, batch, signed_plan)
            if not ok:
                return self._roll_back(plan_id, done, f"batch {index + 1} of {len(batches)}: "
                                                      f"{reason}")
            done.append(batch)
        observed = self.observed_hash()
        if observed != desired_hash:
            return self._roll_back(plan_id, done, f"verify: observed {observed}, desired "
                                                  f"{desired_hash}")
        self._log(Kind.END, {"plan_id": plan_id, "outcome": Outcome.PROMOTED.value})
        return Result(Outcome.PROMOTED, plan_id, len(done), observed_hash=observed)

    def _roll_back(self, plan_id: str, done: Sequence[Sequence[steps.Step]],
                   reason: str) -> Result:
        """Inverses of the committed batches, newest first; an inverse is retried, since the
        fabric must not refuse what it served a moment ago (spec/invariants.md)."""
        for index in reversed(range(len(done))):
            inverse = [step.inverse() for step in reversed(done[index])]
            for attempt in range(5):
                txid = self._txid(plan_id, "r", index, attempt)
                ok, why = self._transaction(txid, plan_id, inverse, None)
                if ok:
                    break
                self._sleep(0.05 * 2 ** attempt)
            else:
                self._log(Kind.END, {"plan_id": plan_id, "outcome": Outcome.FAILED.value,
                                     "reason": f"{reason}; undoing batch {index + 1}: {why}"})
                return Result(Outcome.FAILED, plan_id, len(done),
                              f"{reason}; undoing batch {index + 1} failed: {why}")
        self._log(Kind.END, {"plan_id": plan_id, "outcome": Outcome.ROLLED_BACK.value,
                             "reason": reason})
        return Result(Outcome.ROLLED_BACK, plan_id, len(done), reason, self.observed_hash())

    def _txid(self, plan_id: str, direction: str, batch: int, attempt: int = 0) -> str:
        return f"{plan_id[7:23]}.e{self.epoch}.{direction}{batch}" + (
            f".{attempt}" if attempt else "")

    def _transaction(self, txid: str, plan_id: str, batch: Sequence[steps.Step],
                     signed_plan: Mapping[str, Any] | None) -> tuple[bool, str]:
        """One 2PC round. Returns (committed, why not)."""
        slices = self._slices(batch)
        with self._lock:
            self._in_flight = txid
        prepared, reason = [], ""
        for name, part in slices.items():
            extra = {"plan": dict(signed_plan)} if signed_plan is not None else {}
            try:
                vote = self.nodes[name].call("prepare", txid=txid, plan_id=plan_id,
                                             steps=[steps.to_json(s) for s in part], **extra)
            except (OSError, ClientError, ConnectionError) as exc:
                reason = f"{name}: no vote ({exc})"
                break
            if vote.get("vote") != "ack":
                reason = f"{name}: {vote.get('reason', 'nack')}"
                break
            prepared.append(name)
        with self._lock:
            self._in_flight = None
            decision = self.decided.get(txid)  # a node may have asked, and been told abort
            if decision is None:
                decision = "commit" if not reason and len(prepared) == len(slices) else "abort"
                self._decide(txid, decision)
        if decision == "abort":
            reason = reason or "a node in doubt was told abort"
        for name in prepared if decision == "abort" else slices:
            self._deliver(name, "commit" if decision == "commit" else "abort", txid)
        return decision == "commit", reason

    def _deliver(self, name: str, op: str, txid: str) -> None:
        """Send a logged decision until the node takes it (a node that restarts in doubt asks
        for it anyway, so giving up here loses nothing but time)."""
        for attempt in range(20):
            try:
                self.nodes[name].call(op, txid=txid)
                return
            except ClientError:
                return  # already decided there (e.g. resolved by asking): nothing to send
            except (OSError, ConnectionError):
                self._sleep(min(0.05 * 2 ** attempt, 1.0))

    def _slices(self, batch: Sequence[steps.Step]) -> dict[str, list[steps.Step]]:
        out: dict[str, list[steps.Step]] = {}
        for step in batch:
            for node in sorted({step.link.from_node, step.link.to_node}):
                if node not in self.nodes:
                    raise KeyError(f"the plan names node {node!r}, which has no participant")
                out.setdefault(node, []).append(step)
        return out

    # --- verify ----------------------------------------------------------------------------------

    def observed_hash(self) -> str:
        """The hash of the fabric's graph: every node's committed links, each link once."""
        links: dict[graph.LinkKey, graph.Link] = {}
        for name in sorted(self.nodes):
            reply = self.nodes[name].call("get_graph")
            for item in reply["graph"]["links"]:
                link = graph.Link.from_json(item)
                links[link.key] = link
        return graph.Graph.of(links.values()).hash


@contextlib.contextmanager
def resolving(coordinator: Coordinator, path: Path) -> Iterator[None]:
    """Answer the nodes' `resolve` requests on a Unix socket (the daemons' `--coordinator`)
    while the context is open."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            header = conn.recv(protocol.HEADER.size, socket.MSG_WAITALL)
            request = orjson.loads(conn.recv(protocol.frame_length(header), socket.MSG_WAITALL))
            decision = coordinator.resolve(str(request["txid"]))
            conn.sendall(protocol.frame(protocol.ok(request.get("id"), decision=decision)))

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError, ValueError, KeyError, protocol.ProtocolError):
                answer(conn)

    thread = threading.Thread(target=loop, name="rtt-resolve", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        thread.join(5)

