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

from rtt_fabric import canonical, graph, protocol, steps, wal
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
    transient: bool = False  # refused for a passing cause (a node unreachable or in doubt)


class Node(Protocol):
    """The seam to one fabric node (a daemon's control socket in production)."""

    name: str

    def call(self, op: str, **fields: Any) -> dict[str, Any]: ...


class SocketNode:
    """A node daemon reached over its control socket, one connection per call."""

    def __init__(self, name: str, path: Path, *, timeout_s: float = 30.0) -> None:
        self.name, self.path, self.timeout_s = name, path, timeout_s

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        try:
            with Client(self.path, timeout_s=self.timeout_s) as client:
                return client.call(op, **fields)
        except OSError as exc:  # say which node: "No such file" alone names nothing
            raise ConnectionError(f"node {self.name} at {self.path}: {exc.strerror or exc}"
                                  ) from exc


@dataclasses.dataclass(frozen=True)
class Survey:
    observed: graph.Graph  # links whole on every node they touch
    strays: tuple[tuple[str, graph.Link], ...]  # (node, link) it holds without its peer


@dataclasses.dataclass(frozen=True)
class Canary:
    """Canary steps: after `ends[k]` batches, `gate(k, ends[k])` says whether to go on (and
    why not). reconcile/rollout.py makes them."""

    ends: Sequence[int]
    gate: Callable[[int, int], tuple[bool, str]]


@dataclasses.dataclass
class OpenPlan:
    """A plan the log shows begun and not ended: where a restarted coordinator picks it up."""

    plan_id: str
    batches: int
    desired_hash: str
    committed: set[int] = dataclasses.field(default_factory=set)  # forward batches committed
    undone: set[int] = dataclasses.field(default_factory=set)  # their inverses committed
    rolling_back: bool = False  # a forward batch was aborted: only undoing remains


class Coordinator:
    def __init__(self, *, log: wal.Wal, nodes: Mapping[str, Node],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._wal, self.nodes, self._sleep = log, dict(nodes), sleep
        self._lock = threading.Lock()  # decisions vs. resolve requests from the nodes
        self.decided: dict[str, str] = {}
        self.epoch = 0
        self.open_plan: OpenPlan | None = None
        for record in log.replay():
            self._replay(record.kind, orjson.loads(record.payload))
        self.epoch += 1
        self._log(Kind.START, {"epoch": self.epoch})
        self._in_flight: tuple[str, dict[str, Any]] | None = None
        self._seq = 0  # transactions run in this epoch
        self._plans_sent: set[tuple[str, str]] = set()  # (node, plan id) it has taken

    def _replay(self, kind: int, record: dict[str, Any]) -> None:
        if kind == Kind.START:
            self.epoch = max(self.epoch, int(record["epoch"]))
        elif kind == Kind.BEGIN:
            self.open_plan = OpenPlan(record["plan_id"], int(record["batches"]),
                                      record["desired_hash"])
        elif kind == Kind.END:
            self.open_plan = None
        elif kind in (Kind.COMMIT, Kind.ABORT):
            self.decided[record["txid"]] = "commit" if kind == Kind.COMMIT else "abort"
            self._track(kind, record)

    def _track(self, kind: int, record: Mapping[str, Any]) -> None:
        """Follow the open plan's position from its decisions (forward commits, inverses)."""
        plan = self.open_plan
        if plan is None or record.get("plan_id") != plan.plan_id:
            return
        batch, direction = int(record["batch"]), record["dir"]
        if kind == Kind.COMMIT:
            (plan.committed if direction == "f" else plan.undone).add(batch)
        elif direction == "f":
            plan.rolling_back = True

    def _log(self, kind: Kind, record: dict[str, Any]) -> None:
        self._wal.append(int(kind), orjson.dumps(record))
        self._wal.sync()  # every coordinator record is forced before anyone acts on it

    # --- resolve: the nodes' in-doubt question -------------------------------------------------

    def resolve(self, txid: str) -> str:
        with self._lock:
            if txid in self.decided:
                return self.decided[txid]
            if self._in_flight is not None and txid == self._in_flight[0]:
                self._decide(*self._in_flight, "abort")  # durably, so it can never commit later
            return "abort"  # presumed abort: never logged as committed

    def _decide(self, txid: str, where: Mapping[str, Any], decision: str) -> None:
        self._log(Kind.COMMIT if decision == "commit" else Kind.ABORT, {"txid": txid, **where})
        self.decided[txid] = decision
        self._track(Kind.COMMIT if decision == "commit" else Kind.ABORT, where)

    def settle(self) -> list[tuple[str, str, str]]:
        """Recovery's first step: ask every node what it holds in doubt and tell it the logged
        decision, or abort (presumed: this epoch never decides an older one's transaction).
        A node in doubt refuses every new vote, so this comes before any apply. Returns
        (node, txid, decision) for each one settled; an unreachable node is left to ask."""
        settled = []
        for name in sorted(self.nodes):
            try:
                doubtful = self.nodes[name].call("status").get("in_doubt", [])
            except (OSError, ClientError, ConnectionError):
                continue
            for txid in doubtful:
                decision = self.resolve(str(txid))
                self._deliver(name, decision, str(txid))
                settled.append((name, str(txid), decision))
        return settled

    # --- apply -----------------------------------------------------------------------------------

    def apply(self, *, plan_id: str, batches: Sequence[Sequence[steps.Step]], desired_hash: str,
              signed_plan: Mapping[str, Any] | None = None,
              on_verify: Callable[[], None] | None = None,
              desired: graph.Graph | None = None, canary: Canary | None = None) -> Result:
        """Run every batch forward; on a NACK, a failed verify or a failed canary gate, undo
        what was committed. With the `desired` graph, a failed verify reports which links
        differ."""
        if self.open_plan is not None:
            raise RuntimeError(f"plan {self.open_plan.plan_id} is still open: resume it first")
        self._log(Kind.BEGIN, {"plan_id": plan_id, "batches": len(batches),
                               "desired_hash": desired_hash})
        self.open_plan = OpenPlan(plan_id, len(batches), desired_hash)
        return self._drive(self.open_plan, batches, signed_plan=signed_plan, on_verify=on_verify,
                           desired=desired, canary=canary)

    def resume(self, batches: Sequence[Sequence[steps.Step]],
               signed_plan: Mapping[str, Any] | None = None,
               on_verify: Callable[[], None] | None = None,
               canary: Canary | None = None) -> Result:
        """Finish the plan a crash interrupted (spec: CoordRecover, then the plan position read
        back from the log): forward from the first undecided batch, or, if a batch of it was
        aborted, undo the committed ones. `batches` are the open plan's own."""
        plan = self.open_plan
        if plan is None:
            raise RuntimeError("no plan is open")
        if len(batches) != plan.batches:
            raise ValueError(f"plan {plan.plan_id} has {plan.batches} batches, not {len(batches)}")
        return self._drive(plan, batches, signed_plan=signed_plan, on_verify=on_verify,
                           canary=canary)

    def _drive(self, plan: OpenPlan, batches: Sequence[Sequence[steps.Step]], *,
               signed_plan: Mapping[str, Any] | None, on_verify: Callable[[], None] | None,
               desired: graph.Graph | None = None, canary: Canary | None = None) -> Result:
        if plan.rolling_back:
            # Why it was rolling back died with the process: whether the cause has passed is
            # for the next plan to find out.
            return self._roll_back(plan, batches, "resumed after a restart: the plan was "
                                                  "rolling back", transient=True,
                                   signed_plan=signed_plan)
        why, transient, observed = self._forward(plan, batches, signed_plan=signed_plan,
                                                 on_verify=on_verify, desired=desired,
                                                 canary=canary)
        if why:
            plan.rolling_back = True
            return self._roll_back(plan, batches, why, transient=transient,
                                   signed_plan=signed_plan)
        self._end(plan, Outcome.PROMOTED)
        return Result(Outcome.PROMOTED, plan.plan_id, len(plan.committed), observed_hash=observed)

    def _forward(self, plan: OpenPlan, batches: Sequence[Sequence[steps.Step]], *,
                 signed_plan: Mapping[str, Any] | None, on_verify: Callable[[], None] | None,
                 desired: graph.Graph | None, canary: Canary | None) -> tuple[str, bool, str]:
        """The batches not yet committed, the canary gates between them, the verify and the
        last gate. Returns (why to roll back or '', whether that cause is passing, the
        observed hash)."""
        total = len(batches)
        ends = list(canary.ends) if canary is not None else []

        def judged(done: int) -> str:
            """Why the canary step ending at `done` batches fails ('' if it passes or is
            none)."""
            if canary is None or done not in ends:
                return ""
            ok, why = canary.gate(ends.index(done), done)
            return "" if ok else why

        done = len(plan.committed)
        if 0 < done < total and (why := judged(done)):  # a step a restart left unjudged
            return why, False, ""
        for index in range(done, total):
            txid = self._txid(plan.plan_id, "f", index)
            ok, reason, transient = self._transaction(
                txid, {"plan_id": plan.plan_id, "dir": "f", "batch": index}, batches[index],
                signed_plan)
            if not ok:
                return f"batch {index + 1} of {total}: {reason}", transient, ""
            if index + 1 < total and (why := judged(index + 1)):
                return why, False, ""
        if on_verify is not None:
            on_verify()
        seen = self.observed()
        if seen.hash != plan.desired_hash:
            why = f"verify: observed {seen.hash}, desired {plan.desired_hash}"
            if desired is not None:
                why += f" ({difference(seen, desired)})"
            return why, False, seen.hash
        return judged(total), False, seen.hash  # the last step is judged on the verified graph

    def _end(self, plan: OpenPlan, outcome: Outcome, reason: str = "") -> None:
        self._log(Kind.END, {"plan_id": plan.plan_id, "outcome": outcome.value,
                             **({"reason": reason} if reason else {})})
        self.open_plan = None

    def _roll_back(self, plan: OpenPlan, batches: Sequence[Sequence[steps.Step]], reason: str,
                   *, transient: bool, signed_plan: Mapping[str, Any] | None = None) -> Result:
        """Inverses of the committed batches, newest first; an inverse is retried, since the
        fabric must not refuse what it served a moment ago (spec/invariants.md). The plan's
        signature goes with them: a strict node takes a signed step's inverse too."""
        committed = len(plan.committed)
        for index in sorted(plan.committed - plan.undone, reverse=True):
            inverse = [step.inverse() for step in reversed(batches[index])]
            for attempt in range(5):
                txid = self._txid(plan.plan_id, "r", index, attempt)
                ok, why, _ = self._transaction(
                    txid, {"plan_id": plan.plan_id, "dir": "r", "batch": index}, inverse,
                    signed_plan)
                if ok:
                    break
                self._sleep(0.05 * 2 ** attempt)
            else:
                failed = f"{reason}; undoing batch {index + 1} failed: {why}"
                self._end(plan, Outcome.FAILED, failed)
                return Result(Outcome.FAILED, plan.plan_id, committed, failed)
        self._end(plan, Outcome.ROLLED_BACK, reason)
        return Result(Outcome.ROLLED_BACK, plan.plan_id, committed, reason, self.observed_hash(),
                      transient=transient)

    def _txid(self, plan_id: str, direction: str, batch: int, attempt: int = 0) -> str:
        """Unique for every transaction ever run: the epoch is new at each start, and the
        sequence is new at each transaction within it. (A plan id alone repeats: flipping
        between two graphs plans the same plan again, and a reused txid would be answered from
        its first decision.)"""
        self._seq += 1
        return f"{plan_id[7:23]}.e{self.epoch}.t{self._seq}.{direction}{batch}" + (
            f".{attempt}" if attempt else "")

    def _transaction(self, txid: str, where: dict[str, Any], batch: Sequence[steps.Step],
                     signed_plan: Mapping[str, Any] | None, *,
                     slices: Mapping[str, Sequence[steps.Step]] | None = None
                     ) -> tuple[bool, str, bool]:
        """One 2PC round for the batch `where` names (plan_id; dir "f", "r" or "x" for a
        repair; batch index), sent to each node as `slices` (default: the steps touching it).
        Returns (committed, why not, whether the cause is passing)."""
        slices = slices if slices is not None else self._slices(batch)
        plan_id = where["plan_id"]
        with self._lock:
            if txid in self.decided:  # never: an old decision must not answer a new round
                raise RuntimeError(f"txid {txid} was already decided")
            self._in_flight = (txid, where)
        prepared, reason, transient = [], "", False
        for name, part in slices.items():
            try:
                vote = self._prepare(name, txid, plan_id, [steps.to_json(s) for s in part],
                                     signed_plan)
            except (OSError, ClientError, ConnectionError) as exc:
                reason, transient = f"{name}: no vote ({exc})", True
                break
            if vote.get("vote") != "ack":
                reason = f"{name}: {vote.get('reason', 'nack')}"
                transient = "prepared and undecided" in reason
                break
            prepared.append(name)
        with self._lock:
            self._in_flight = None
            decision = self.decided.get(txid)  # a node may have asked, and been told abort
            if decision is None:
                decision = "commit" if not reason and len(prepared) == len(slices) else "abort"
                self._decide(txid, where, decision)
        if decision == "abort" and not reason:
            # A node asked about it while the vote ran (its PREPARE outlived --in-doubt-after):
            # slow, not refused, so worth another try.
            reason, transient = "a node in doubt was told abort", True
        for name in prepared if decision == "abort" else slices:
            self._deliver(name, "commit" if decision == "commit" else "abort", txid)
        return decision == "commit", reason, transient

    def _prepare(self, name: str, txid: str, plan_id: str, payload: list[dict[str, Any]],
                 signed_plan: Mapping[str, Any] | None) -> dict[str, Any]:
        """PREPARE on one node. The signed plan (megabytes at 10k routes, and verified again by
        a strict node whenever it comes) goes with a node's first PREPARE of the plan only; a
        node that no longer holds it (restarted, or holding newer plans) says `plan-unsigned`,
        and gets it again."""
        node = self.nodes[name]
        if signed_plan is None:
            return node.call("prepare", txid=txid, plan_id=plan_id, steps=payload)
        attach = (name, plan_id) not in self._plans_sent
        vote = node.call("prepare", txid=txid, plan_id=plan_id, steps=payload,
                         **({"plan": dict(signed_plan)} if attach else {}))
        if (not attach and vote.get("vote") != "ack"
                and str(vote.get("reason", "")).startswith("plan-unsigned")):
            attach = True
            vote = node.call("prepare", txid=txid, plan_id=plan_id, steps=payload,
                             plan=dict(signed_plan))
        if attach and vote.get("vote") == "ack":
            self._plans_sent.add((name, plan_id))
        return vote

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

    def survey(self) -> Survey:
        return survey(self.nodes)

    def observed(self) -> graph.Graph:
        """The fabric's graph: the links every node they touch holds."""
        return self.survey().observed

    def repair(self, strays: Sequence[tuple[str, graph.Link]], *, plan_id: str | None = None,
               signed_plan: Mapping[str, Any] | None = None) -> tuple[bool, str]:
        """Remove stray links from the nodes holding them, in one transaction of its own, so
        that a plan can add them back whole. A strict node takes it only under a signed repair
        plan (`plan.repair`, its id `plan_id`). Returns (done, why not)."""
        slices: dict[str, list[steps.Step]] = {}
        for name, link in strays:
            slices.setdefault(name, []).append(steps.Step(steps.Op.DEL, link))
        repair_id = plan_id or stray_set(strays)
        ok, why, _ = self._transaction(self._txid(repair_id, "x", 0),
                                       {"plan_id": repair_id, "dir": "x", "batch": 0}, [],
                                       signed_plan, slices=slices)
        return ok, why

    def observed_hash(self) -> str:
        return self.observed().hash


def stray_set(strays: Sequence[tuple[str, graph.Link]]) -> str:
    """A digest naming the stray links and the nodes holding them."""
    return canonical.digest(sorted(f"{n} {link.digest}" for n, link in strays))


def survey(nodes: Mapping[str, Node]) -> Survey:
    """The fabric as the nodes hold it. A link counts as observed only when every node it
    touches holds it, identically; what one node holds without its peer agreeing (a node that
    came back without its state, say) is a stray."""
    held: dict[graph.LinkKey, dict[str, graph.Link]] = {}
    for name in sorted(nodes):
        reply = nodes[name].call("get_graph")
        for item in reply["graph"]["links"]:
            link = graph.Link.from_json(item)
            held.setdefault(link.key, {})[name] = link
    complete, strays = [], []
    for by_node in held.values():
        first = next(iter(by_node.values()))
        ends = {first.from_node, first.to_node} & nodes.keys()
        if by_node.keys() == ends and all(link == first for link in by_node.values()):
            complete.append(first)
        else:
            strays += [(name, link) for name, link in sorted(by_node.items())]
    return Survey(graph.Graph.of(complete), tuple(strays))


def difference(observed: graph.Graph, desired: graph.Graph, *, shown: int = 5) -> str:
    """What a failed verify found, link by link: missing, unexpected and different links (the
    first few of each, by key)."""
    have, want = observed.links, desired.links
    parts = []
    for label, keys in (("missing", sorted(want.keys() - have.keys())),
                        ("unexpected", sorted(have.keys() - want.keys())),
                        ("different", sorted(k for k in want.keys() & have.keys()
                                             if want[k] != have[k]))):
        if keys:
            names = ", ".join(f"{k[0]} -> {k[1]}" for k in keys[:shown])
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{label} {len(keys)}: {names}{more}")
    return "; ".join(parts) or "same links, different hash"


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
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        thread.join(5)

