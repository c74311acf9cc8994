"""The node daemon: owns the control socket, the WAL and the route table of one fabric node.

Start-up recovers the WAL (refusing to start on mid-log damage), replays it into the participant,
then serves the control protocol on a Unix socket (mode 0600, peers checked by SO_PEERCRED).
In-doubt transactions found at start-up are resolved by asking the coordinator, in the
background, with presumed abort on its side. SIGTERM or SIGINT stops it cleanly (exit 0).
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

from rtt_fabric import participant, protocol, steps, wal
from rtt_fabric.client import Client, ClientError

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
        resolver = asyncio.create_task(self._resolve_in_doubt())
        self.say(f"serving on {self.config.socket}")
        try:
            await stop.wait()
        finally:
            resolver.cancel()
            server.close()
            await server.wait_closed()
            self.close()

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
        try:
            if not self._peer_allowed(writer):
                writer.write(protocol.frame(protocol.error(None, "forbidden",
                                                           "peer uid is not allowed")))
                return
            while True:
                try:
                    header = await reader.readexactly(protocol.HEADER.size)
                    body = await reader.readexactly(protocol.frame_length(header))
                except asyncio.IncompleteReadError:
                    return
                except protocol.ProtocolError as exc:
                    writer.write(protocol.frame(protocol.error(None, exc.code, str(exc))))
                    return  # a bad length leaves the stream unframed: close it
                writer.write(_frame_reply(self.handle(body)))
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            writer.close()

    def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      _PEERCRED.size))
        return uid == os.getuid() or uid in self.config.allowed_uids

    def handle(self, body: bytes) -> dict[str, Any]:
        """One request body in, one reply out. Bad input never raises out of here."""
        try:
            request = protocol.parse_request(body)
        except protocol.ProtocolError as exc:
            return protocol.error(None, exc.code, str(exc))
        try:
            return protocol.ok(request.id, **self._dispatch(request))
        except participant.Refused as exc:
            return protocol.error(request.id, exc.code, str(exc))
        except OSError as exc:
            # A WAL write or fsync failed after the record may have reached the log: memory and
            # log can no longer be trusted to agree. Crash, and let recovery rebuild from the log.
            self.say(f"storage failure ({exc}); exiting so recovery rebuilds state from the WAL")
            os._exit(70)

    def _dispatch(self, request: Any) -> dict[str, Any]:
        handler: Callable[[Any], dict[str, Any]] = getattr(self, f"_on_{request.op}")
        return handler(request)

    def _on_register(self, request: protocol.Register) -> dict[str, Any]:
        self._part().register(request.service, [s.model_dump() for s in request.symbols])
        return self._logged({"registered": len(request.symbols)})

    def _on_unregister(self, request: protocol.Unregister) -> dict[str, Any]:
        self._part().unregister(request.service)
        return self._logged({})

    def _on_prepare(self, request: protocol.Prepare) -> dict[str, Any]:
        batch = [steps.Step(steps.Op(s.op), s.link.to_link(), s.old.to_link() if s.old else None)
                 for s in request.steps]
        vote = self._part().prepare(request.txid, request.plan_id, batch)
        if vote.ack:
            self._prepared_at.setdefault(request.txid, time.monotonic())
        return self._logged({"vote": "ack" if vote.ack else "nack", "reason": vote.reason})

    def _on_commit(self, request: protocol.Commit) -> dict[str, Any]:
        part = self._part()
        result = part.commit(request.txid)
        self._prepared_at.pop(request.txid, None)
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
                "wal_last_seq": self._wal.last_seq if self._wal else None}

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
                part.commit(txid)
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
