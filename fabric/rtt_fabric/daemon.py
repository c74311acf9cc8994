"""The node daemon: owns the control socket, the WAL and the route table of one fabric node.

Start-up recovers the WAL (refusing to start on mid-log damage), replays it into the participant,
then serves the control protocol on a Unix socket (mode 0600, peers checked by SO_PEERCRED).
In-doubt transactions found at start-up are resolved by asking the coordinator, in the
background, with presumed abort on its side. SIGTERM or SIGINT stops it cleanly (exit 0).

The daemon also runs the node's data plane (rtt_fabric.dataplane): it makes each committed
route's lane, hands the ends to the services that attach, pushes new lane sets at every COMMIT,
reclaims a service's lanes when its connection closes, dials and accepts tcp lanes
(rtt_fabric.datalink), and watches the routes' flight pages for the breakers.
Called by `rtt fabric serve` (rtt_fabric.cli).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import gc
import math
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from rtt_fabric import (
    breaker,
    datalink,
    dataplane,
    flight,
    graph,
    manifests,
    participant,
    protocol,
    steps,
    strict,
    tokens,
    trust,
    wal,
)
from rtt_fabric.client import Client, ClientError
from rtt_fabric.session import Session

FAILPOINTS_ENV = "RTT_FAILPOINTS"  # comma-separated crash points, for crash tests
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


@dataclasses.dataclass(frozen=True)
class Config:
    state: Path
    socket: Path
    node: str = "local"
    shm_bytes: int = 256 << 20
    coordinator: Path | None = None
    allowed_uids: frozenset[int] = frozenset()  # besides the daemon's own uid
    checkpoint_every: int = 10_000  # WAL records between checkpoints: bounds replay
    in_doubt_after_s: float = 5.0  # a prepared txid undecided this long is asked about
    data_listen: datalink.Address | None = ("127.0.0.1", 0)  # tcp lanes arrive here
    peers: Mapping[str, datalink.Address] = dataclasses.field(default_factory=dict)
    cluster_key: Path | None = None
    breakers: breaker.Config = dataclasses.field(default_factory=breaker.Config)
    flight_every_s: float = 0.1  # how often the breakers read the flight pages
    trust_policy: trust.TrustPolicy | None = None  # strict mode (--strict --trust FILE) when set
    token_keys: Mapping[str, bytes] = dataclasses.field(default_factory=dict)  # --token-key


class StartupError(Exception):
    """The daemon cannot start; the message says why, for a person."""


def crash_points(environ: Mapping[str, str]) -> Callable[[str], None]:
    armed = {p.strip() for p in environ.get(FAILPOINTS_ENV, "").split(",") if p.strip()}

    def crash(point: str) -> None:
        if point in armed:
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


class Daemon:
    def __init__(self, config: Config, *, environ: Mapping[str, str],
                 log: TextIO = sys.stderr) -> None:
        self.config, self._environ, self._log = config, environ, log
        self._lock: int | None = None
        self._bound = False  # the socket file is ours to remove only if this process bound it
        self._prepared_at: dict[str, float] = {}  # monotonic time of each PREPARE we ACKed
        self._wal: wal.Wal | None = None
        self._since_checkpoint = 0
        self.part: participant.Participant | None = None
        self.plane = dataplane.DataPlane(node=config.node, tcp_connect=self._tcp_connect)
        self._breakers = breaker.Breakers(config.breakers)
        self._dials: list[tuple[graph.LinkKey, int]] = []
        self._dial_wake: asyncio.Event | None = None
        self._dialing: set[asyncio.Task[None]] = set()
        self._cluster_key = b""
        self.data_address: datalink.Address | None = None
        policy = config.trust_policy
        self._gate = (strict.Gate(policy, node=config.node, token_keys=config.token_keys)
                      if policy is not None else None)

    # --- start-up ------------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the state directory, recover the WAL and replay it. Raises StartupError."""
        self.config.state.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.config.state / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(f"{self.config.state}: another daemon holds this state") from None
        try:
            self._wal = wal.Wal.open(self.config.state / "wal", warn=self.say,
                                     environ=self._environ)
            part = participant.Participant(node=self.config.node,
                                           shm_bytes=self.config.shm_bytes, journal=self._wal,
                                           crash=crash_points(self._environ))
            for record in self._wal.replay():
                if record.kind == wal.CHECKPOINT:
                    part.restore(record.payload)
                else:
                    part.replay(record.kind, record.payload)
        except wal.WalCorrupt as exc:
            raise StartupError(f"refusing to start: the WAL is damaged: {exc}") from None
        except OSError as exc:
            raise StartupError(f"refusing to start: cannot read the WAL: {exc}") from None
        self.part = part
        try:
            self._cluster_key = datalink.load_key(self.config.cluster_key)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cluster key: {exc}") from None
        self.plane.rewire(part.graph.links, part.graph.links)  # no services attached yet
        gc.freeze()  # the recovered table is long-lived: keep it out of every GC pass
        self.say(f"node {part.node}: epoch {part.epoch}, {len(part.graph.links)} links, "
                 f"graph {part.graph.hash}, {len(part.in_doubt())} in doubt")

    def say(self, message: str) -> None:
        print(f"rtt fabric: {message}", file=self._log, flush=True)

    # --- serving -------------------------------------------------------------------------------

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await asyncio.start_unix_server(self._client, sock=self._listen())
        self._dial_wake = asyncio.Event()
        tasks = [asyncio.create_task(self._resolve_in_doubt(), name="in-doubt resolver"),
                 asyncio.create_task(self._dialer(), name="tcp dialer"),
                 asyncio.create_task(self._watch_flight(), name="breaker watch")]
        if self.config.data_listen is not None:
            listener = datalink.listen(self.config.data_listen)
            self.data_address = listener.getsockname()[:2]
            tasks.append(asyncio.create_task(datalink.serve(
                listener, self._cluster_key, self, self.say), name="data listener"))
            self.say(f"data listener on {self.data_address[0]}:{self.data_address[1]}")
        for task in tasks:
            task.add_done_callback(self._task_died)
        self.say(f"serving on {self.config.socket}")
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            server.close()
            await server.wait_closed()
            self.close()

    def _task_died(self, task: asyncio.Task[None]) -> None:
        """A background loop must run for the daemon's life: if one fails, say so and stop,
        rather than serve on without in-doubt resolution, tcp lanes or breakers."""
        if task.cancelled() or task.exception() is None:
            return
        self.say(f"internal error in {task.get_name()}: {task.exception()!r}")
        os.kill(os.getpid(), signal.SIGTERM)

    def _listen(self) -> socket.socket:
        path = self.config.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with contextlib.suppress(OSError), Client(path, timeout_s=1):
                raise StartupError(f"{path}: another daemon is serving this socket")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window where others can connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        self._bound = True
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock

    def close(self) -> None:
        self.plane.close()
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._bound:
            with contextlib.suppress(FileNotFoundError):
                self.config.socket.unlink()
            self._bound = False
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(writer)
        try:
            if not self._peer_allowed(writer):
                session.put(protocol.frame(protocol.error(None, "forbidden",
                                                          "peer uid is not allowed")))
                return
            while True:
                try:
                    header = await reader.readexactly(protocol.HEADER.size)
                    body = await reader.readexactly(protocol.frame_length(header))
                except asyncio.IncompleteReadError:
                    return
                except protocol.ProtocolError as exc:
                    session.put(protocol.frame(protocol.error(None, exc.code, str(exc))))
                    return  # a bad length leaves the stream unframed: close it
                reply = self.respond(body, session)
                session.put(_frame_reply(reply.message), reply.fds)
        except (ConnectionError, OSError):
            return
        finally:
            # The service is gone (exited, killed, or closed): reclaim every lane it held.
            self._push(self.plane.drop_session(session))
            await session.close()
            writer.close()

    def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      _PEERCRED.size))
        return uid == os.getuid() or uid in self.config.allowed_uids

    def handle(self, body: bytes) -> dict[str, Any]:
        """One request body in, one reply out, for callers without a session."""
        return self.respond(body, None).message

    def respond(self, body: bytes, session: Session | None) -> dataplane.Push:
        """One request body in, one reply (with any descriptors) out. Bad input never raises
        out of here."""
        try:
            request = protocol.parse_request(body)
        except protocol.ProtocolError as exc:
            return dataplane.Push(session, protocol.error(None, exc.code, str(exc)))
        try:
            if request.op in ("attach", "detach", "register"):
                return self._on_session(request, session)
            return dataplane.Push(session, protocol.ok(request.id, **self._dispatch(request)))
        except participant.Refused as exc:
            return dataplane.Push(session, protocol.error(request.id, exc.code, str(exc)))
        except OSError as exc:
            # A WAL write or fsync failed after the record may have reached the log: memory and
            # log can no longer be trusted to agree. Crash, and let recovery rebuild from the log.
            self.say(f"storage failure ({exc}); exiting so recovery rebuilds state from the WAL")
            os._exit(70)

    def _dispatch(self, request: Any) -> dict[str, Any]:
        handler: Callable[[Any], dict[str, Any]] = getattr(self, f"_on_{request.op}")
        return handler(request)

    def _on_session(self, request: Any, session: Session | None) -> dataplane.Push:
        """The requests that bind to the connection: register names the service it speaks for;
        attach and detach take and give back the ends of that service's symbols. In strict
        mode the manifest and the capability token are checked first (rtt_fabric.strict)."""
        if request.op == "register":
            symbols = [s.model_dump() for s in request.symbols]
            if self._gate is not None:
                try:
                    self._gate.register(request.service, symbols, request.signature)
                except manifests.Refused as exc:
                    raise participant.Refused(exc.code, str(exc)) from None
            self._part().register(request.service, symbols)
            if session is not None:
                session.services.add(request.service)
            reply = self._logged({"registered": len(request.symbols)})
            return dataplane.Push(session, protocol.ok(request.id, **reply))
        owner = self._part().symbols.get(request.saddr)
        if session is None or owner is None or owner.service not in session.services:
            raise participant.Refused(
                "forbidden", f"{request.saddr} is not a symbol of a service registered on this "
                             "connection")
        if request.op == "detach":
            self._push(self.plane.detach(session, request.saddr, request.role))
            if self._gate is not None:
                self._gate.detach(request.saddr, request.role)
            return dataplane.Push(session, protocol.ok(request.id))
        if self._gate is not None:
            try:
                self._gate.attach(session, request.saddr, request.role, request.token,
                                  routes=[r.link for r in self.plane.routes_of(
                                      request.saddr, request.role)],
                                  attached=self.plane.endpoints)
            except tokens.Refused as exc:
                raise participant.Refused(exc.refusal.value, str(exc)) from None
        lanes = self.plane.attach(session, request.saddr, request.role)
        return dataplane.Push(session, {**lanes.message, **protocol.ok(request.id)},
                              lanes.fds)

    def _on_unregister(self, request: protocol.Unregister) -> dict[str, Any]:
        self._part().unregister(request.service)
        return self._logged({})

    def _on_prepare(self, request: protocol.Prepare) -> dict[str, Any]:
        batch = [steps.Step(steps.Op(s.op), s.link.to_link(), s.old.to_link() if s.old else None)
                 for s in request.steps]
        part = self._part()
        if self._gate is not None and request.txid not in part.prepared:
            # A txid already prepared was checked then; the participant compares the retry.
            reason = (self._gate.prepare(request.plan_id, request.plan, batch)
                      or self._gate.routes(batch, self.plane.endpoints))
            if reason:
                return {"vote": "nack", "reason": reason}
        vote = part.prepare(request.txid, request.plan_id, batch)
        if vote.ack:
            self._prepared_at.setdefault(request.txid, time.monotonic())
        return self._logged({"vote": "ack" if vote.ack else "nack", "reason": vote.reason})

    def _on_commit(self, request: protocol.Commit) -> dict[str, Any]:
        part = self._part()
        result = self._commit(request.txid)
        # A committed graph lives until the next commit; freezing it spares the cyclic GC a walk
        # over every link (full passes cost 25-45 ms at 10k links: bench/fabric.py).
        gc.freeze()
        return self._logged({"result": result, "epoch": part.epoch,
                             "graph_hash": part.graph.hash})

    def _on_abort(self, request: protocol.Abort) -> dict[str, Any]:
        result = self._part().abort(request.txid)
        self._prepared_at.pop(request.txid, None)
        return self._logged({"result": result})

    def _on_resolve(self, _: protocol.Resolve) -> dict[str, Any]:
        raise participant.Refused("not-coordinator", "a node daemon does not decide")

    def _on_get_graph(self, _: protocol.GetGraph) -> dict[str, Any]:
        part = self._part()
        return {"graph": part.graph.to_json(), "epoch": part.epoch}

    def _on_get_stats(self, request: protocol.GetStats) -> dict[str, Any]:
        part = self._part()
        key = (request.from_, request.to, request.class_)
        link = part.graph.links.get(key)
        pending = [t for t, p in sorted(part.prepared.items()) if key in p.keys]
        return {"route": {"from": key[0], "to": key[1], "class": key[2]},
                "link": link.to_json() if link else None, "since_epoch": part.since.get(key),
                "pending_txid": pending[0] if pending else None}

    def _on_status(self, _: protocol.Status) -> dict[str, Any]:
        return self.status()

    def _on_flight(self, _: protocol.Flight) -> dict[str, Any]:
        routes = []
        for route, page in self.plane.pages():
            sample = flight.read(page)
            routes.append({
                "route_id": route.route_id, "from": route.key[0], "to": route.key[1],
                "class": route.key[2], "lane": route.link.lane,
                "latency_budget_ms": route.link.latency_budget_ms,
                "counters": dict(sample.counters), "breaker": sample.breaker.name.lower(),
                "buckets": [[i, n] for i, n in enumerate(sample.histogram.counts) if n]})
        return {"ts": time.time(), "routes": routes}

    # --- the data plane ------------------------------------------------------------------------

    def _commit(self, txid: str) -> str:
        """COMMIT, then rewire the lanes of the routes it changed (the epoch flip)."""
        part = self._part()
        held = part.prepared.get(txid)
        result = part.commit(txid)
        self._prepared_at.pop(txid, None)
        if held is not None:
            self._push(self.plane.rewire(part.graph.links, held.keys))
        return result

    def _push(self, pushes: list[dataplane.Push]) -> None:
        for push in pushes:
            if isinstance(push.session, Session):
                push.session.put(_frame_reply(push.message), push.fds)
            else:
                for fd in push.fds:
                    os.close(fd)

    def _tcp_connect(self, route: dataplane.Route, generation: int) -> None:
        self._dials.append((route.key, generation))
        if self._dial_wake is not None:
            self._dial_wake.set()

    async def _dialer(self) -> None:
        assert self._dial_wake is not None
        while True:
            await self._dial_wake.wait()
            self._dial_wake.clear()
            dials, self._dials = self._dials, []
            for key, generation in dials:
                task = asyncio.create_task(self._dial(key, generation))
                self._dialing.add(task)  # held until done: the loop keeps only weak references
                task.add_done_callback(self._dialing.discard)

    async def _dial(self, key: graph.LinkKey, generation: int) -> None:
        """Open the sending side of a tcp lane, retrying with capped backoff while the route
        still wants this generation."""
        delay = 0.05
        while True:
            route = self.plane.routes.get(key)
            if route is None or route.tx is None or route.tx.number != generation:
                return
            address = (self.data_address if route.link.to_node == self.config.node
                       else self.config.peers.get(route.link.to_node))
            if address is None:
                self.say(f"tcp route {key}: no address for node {route.link.to_node} (--peer)")
            else:
                try:
                    fd = await datalink.dial(address, datalink.hello(self._cluster_key, key,
                                                                     generation))
                except (TimeoutError, OSError) as exc:
                    self.say(f"tcp route {key}: cannot reach {address}: {exc}; will retry")
                else:
                    self._push(self.plane.tcp_connected(key, generation, fd))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def accepts(self, key: graph.LinkKey) -> bool:
        """The data listener's question: does a tcp route `key` end on this node?"""
        return self.plane.receives(key)

    def take(self, key: graph.LinkKey, fd: int) -> None:
        """A sending node's connection for `key`, checked and acknowledged."""
        self._push(self.plane.tcp_accepted(key, fd))

    async def _watch_flight(self) -> None:
        """Feed every route's error count to its breaker; publish state changes on the page."""
        while True:
            await asyncio.sleep(self.config.flight_every_s)
            now, live = time.monotonic(), set()
            for route, page in self.plane.pages():
                sample = flight.read(page)
                live.add(route.route_id)
                own = route.link.breaker
                state = self._breakers.observe(
                    route.route_id, now, sample.errors,
                    breaker.Config(errors=own[0], window_s=own[1]) if own else None)
                if state is not sample.breaker:
                    flight.set_breaker(page, state)
                    self.say(f"route {route.key}: breaker {state.name.lower()}")
            self._breakers.forget(live)

    def _part(self) -> participant.Participant:
        if self.part is None:
            raise RuntimeError("the daemon is not open")
        return self.part

    def status(self) -> dict[str, Any]:
        part = self._part()
        return {"node": part.node, "epoch": part.epoch, "graph_hash": part.graph.hash,
                "links": len(part.graph.links), "symbols": len(part.symbols),
                "services": sorted(part.services), "in_doubt": part.in_doubt(),
                "shm_used": part.shm_used(), "shm_bytes": part.shm_bytes,
                "wal_last_seq": self._wal.last_seq if self._wal else None,
                "lanes": len(self.plane.routes), "attached": len(self.plane.endpoints),
                "breaker_trips": self._breakers.trips,
                "data_address": list(self.data_address) if self.data_address else None}

    def _logged(self, reply: dict[str, Any]) -> dict[str, Any]:
        """After a WAL write: take a checkpoint when enough records have accumulated."""
        self._since_checkpoint += 1
        if self._wal is not None and self._since_checkpoint >= self.config.checkpoint_every:
            self._wal.checkpoint(self._part().snapshot())
            self._wal.prune()
            self._since_checkpoint = 0
        return reply

    # --- in-doubt resolution -------------------------------------------------------------------

    async def _resolve_in_doubt(self) -> None:
        """Ask the coordinator about every transaction in doubt: at once for those recovered at
        start-up, and for any prepared here that stays undecided past `in_doubt_after_s` (the
        coordinator may have crashed). Runs for the daemon's life, with capped backoff."""
        delay = 0.05
        while True:
            part = self._part()
            now = time.monotonic()
            after = self.config.in_doubt_after_s
            doubtful = [t for t in part.in_doubt()
                        if now - self._prepared_at.get(t, -math.inf) >= after]
            if doubtful and self.config.coordinator is None:
                self.say(f"in doubt {doubtful}: no --coordinator to ask; waiting for a decision")
            elif doubtful:
                for txid in doubtful:
                    self._apply_decision(txid, await asyncio.to_thread(self._ask, txid))
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.05
            await asyncio.sleep(max(delay, 0.05) if doubtful else 0.25)

    def _apply_decision(self, txid: str, decision: str | None) -> None:
        part = self._part()
        if decision not in ("commit", "abort") or txid not in part.prepared:
            return  # no answer yet, or decided meanwhile by a COMMIT/ABORT from a client
        try:
            if decision == "commit":
                self._commit(txid)
            else:
                part.abort(txid)
        except participant.Refused as exc:
            self.say(f"in-doubt {txid}: {decision} refused: {exc}")
            return
        self._prepared_at.pop(txid, None)
        self.say(f"in-doubt {txid} resolved: {decision}")

    def _ask(self, txid: str) -> str | None:
        assert self.config.coordinator is not None
        try:
            with Client(self.config.coordinator, timeout_s=5) as coordinator:
                return str(coordinator.call("resolve", txid=txid).get("decision"))
        except (OSError, ConnectionError, ClientError, ValueError) as exc:
            self.say(f"in-doubt {txid}: coordinator unreachable ({exc}); will retry")
            return None


def _frame_reply(reply: dict[str, Any]) -> bytes:
    try:
        return protocol.frame(reply)
    except protocol.ProtocolError as exc:  # e.g. a graph too large for one frame
        return protocol.frame(protocol.error(reply.get("id"), exc.code, f"reply: {exc}"))


def serve(config: Config, environ: Mapping[str, str]) -> int:
    daemon = Daemon(config, environ=environ)
    try:
        daemon.open()
        asyncio.run(daemon.run())
    except StartupError as exc:
        daemon.say(str(exc))
        daemon.close()
        return 1
    return 0
