"""The client SDK that services import: connect to the node daemon, register, publish, subscribe.

    conn = rtt_fabric.connect(".rtt/sockets/fabric.sock", service="ui", symbols=[...])
    pub = conn.publisher("rtt://ui/hook/refresh")
    pub.send(b"...")

A `Connection` is the service's session with its node. One background thread ("rtt-control")
reads the control socket: replies to this process's requests, and the lane sets the daemon
pushes at each COMMIT, which it installs into the publisher and subscriber handles (with the
descriptors that came with them over SCM_RIGHTS). Frames never cross the control socket. When
the connection closes, or the process dies, the daemon reclaims every lane it held. Losing the
daemon does not stop lanes already installed, but the session is over (`alive` turns false,
`error` says why): no lane set arrives on it again, and the service reconnects to be rewired.
docs/sdk.md has a runnable example.
"""

from __future__ import annotations

import array
import collections
import contextlib
import os
import select
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from rtt_fabric import endpoints, protocol
from rtt_fabric.ring import WaitPolicy

MAX_FDS = 253  # SCM_MAX_FD: the most descriptors one message can carry
FLUSH_EVERY_S = 0.002  # how often the control thread flushes publishers' buffered frames

Handle = endpoints.Publisher | endpoints.Subscriber
H = TypeVar("H", endpoints.Publisher, endpoints.Subscriber)


class ConnectError(Exception):
    """The daemon refused a request; `code` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class _Slot:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None


def connect(path: str | Path, *, service: str, symbols: Sequence[Mapping[str, Any]],
            signature: Mapping[str, Any] | None = None, timeout_s: float = 10.0) -> Connection:
    """Open a session with the node daemon at `path` and register `service`'s manifest
    (`signature`: its signed envelope, which a strict node may require)."""
    conn = Connection(path, timeout_s=timeout_s)
    try:
        conn.register(service, symbols, signature=signature)
    except BaseException:
        conn.close()
        raise
    return conn


class Connection:
    def __init__(self, path: str | Path, *, timeout_s: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._timeout_s = timeout_s
        self._send_lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        self._next_id = 0
        self._handles: dict[tuple[str, str], Handle] = {}
        self._closed = False
        self.error: BaseException | None = None  # the control thread's last failure, if any
        self._thread = threading.Thread(target=self._read_loop, name="rtt-control", daemon=True)
        self._thread.start()

    # --- requests ------------------------------------------------------------------------------

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request; the reply's fields. Raises ConnectError on an error reply."""
        slot = _Slot()
        with self._send_lock:
            if self._closed:
                raise ConnectionError("the connection is closed")
            self._next_id += 1
            request_id = self._next_id
            self._slots[request_id] = slot
            self._sock.sendall(protocol.frame({"op": op, "id": request_id, **fields}))
        if not slot.done.wait(self._timeout_s):
            self._slots.pop(request_id, None)
            raise TimeoutError(f"no reply to {op} within {self._timeout_s} s")
        reply = slot.reply
        if reply is None:
            raise ConnectionError("the daemon closed the connection")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise ConnectError(str(err.get("code", "error")), str(err.get("message", "")))
        return reply

    def register(self, service: str, symbols: Sequence[Mapping[str, Any]], *,
                 signature: Mapping[str, Any] | None = None) -> None:
        """Register (or re-register) a manifest; `rtt keys sign-manifest` makes `signature`."""
        self.service = service
        extra = {"signature": dict(signature)} if signature is not None else {}
        self.call("register", service=service, symbols=[dict(s) for s in symbols], **extra)

    def publisher(self, saddr: str, *, buffer_limit: int = 4096, block_s: float = 5.0,
                  token: Mapping[str, Any] | None = None) -> endpoints.Publisher:
        """The sending end of `saddr`; its lanes follow every COMMIT from now on. A strict
        node wants `token`: a signed capability token (`tx` or `open`) as `rtt keys
        sign-token` prints it."""
        return self._attach(saddr, "pub",
                            endpoints.Publisher(saddr, buffer_limit=buffer_limit, block_s=block_s),
                            token)

    def subscriber(self, saddr: str, *, wait: WaitPolicy = endpoints.DEFAULT_WAIT,
                   token: Mapping[str, Any] | None = None) -> endpoints.Subscriber:
        """The receiving end of `saddr`: frames from every route into it. A strict node wants
        `token` (`rx` or `open`), as for `publisher`."""
        return self._attach(saddr, "sub", endpoints.Subscriber(saddr, wait=wait), token)

    def _attach(self, saddr: str, role: str, handle: H,
                token: Mapping[str, Any] | None = None) -> H:
        key = (saddr, role)
        if key in self._handles:
            raise ValueError(f"{saddr} already has a {role} handle on this connection")
        self._handles[key] = handle  # the control thread installs the reply's lanes into it
        try:
            extra = {} if token is None else {"token": dict(token)}
            self.call("attach", saddr=saddr, role=role, **extra)
        except BaseException:
            self._handles.pop(key, None)
            handle.close()
            raise
        return handle

    def release(self, handle: Handle) -> None:
        """Close a handle's lanes and tell the daemon (a publisher seals its rings first)."""
        role = "pub" if isinstance(handle, endpoints.Publisher) else "sub"
        if self._handles.get((handle.saddr, role)) is not handle:
            return
        handle.close()
        with contextlib.suppress(ConnectError, ConnectionError, OSError):
            self.call("detach", saddr=handle.saddr, role=role)
        self._handles.pop((handle.saddr, role), None)

    def close(self) -> None:
        """Close every handle, then the session; the daemon reclaims what is left."""
        for handle in list(self._handles.values()):
            handle.close()
        with self._send_lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join()
        self._sock.close()
        self._handles.clear()

    @property
    def alive(self) -> bool:
        """Whether the session with the daemon is up. Lanes already installed keep carrying
        frames without it; no new lane set arrives until the service connects again."""
        return self._thread.is_alive() and not self._closed

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the control thread --------------------------------------------------------------------

    def _read_loop(self) -> None:
        buf, fds = bytearray(), collections.deque[int]()
        space = socket.CMSG_SPACE(MAX_FDS * 4)
        try:
            while True:
                if not self._wait_readable():
                    continue
                data, ancillary, _flags, _ = self._sock.recvmsg(1 << 16, space)
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        got = array.array("i")
                        got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                        fds.extend(got)
                if not data:
                    if not self._closed:
                        self.error = ConnectionError("the daemon closed the connection")
                    return
                buf += data
                self._parse(buf, fds)
        except OSError as exc:
            if not self._closed:
                self.error = exc
        finally:
            for fd in fds:
                os.close(fd)
            for slot in list(self._slots.values()):
                slot.done.set()

    def _wait_readable(self) -> bool:
        """Block until the socket is readable; meanwhile flush publishers' buffered frames."""
        pending = any(isinstance(h, endpoints.Publisher) and h.backlog()
                      for h in list(self._handles.values()))
        ready, _, _ = select.select([self._sock], [], [], FLUSH_EVERY_S if pending else None)
        if not ready:
            for handle in list(self._handles.values()):
                if isinstance(handle, endpoints.Publisher):
                    handle.flush()
        return bool(ready)

    def _parse(self, buf: bytearray, fds: collections.deque[int]) -> None:
        while len(buf) >= protocol.HEADER.size:
            length = protocol.frame_length(bytes(buf[:protocol.HEADER.size]))
            end = protocol.HEADER.size + length
            if len(buf) < end:
                return
            message = orjson.loads(bytes(buf[protocol.HEADER.size:end]))
            del buf[:end]
            mine = [fds.popleft() for _ in range(min(int(message.get("nfds", 0)), len(fds)))]
            self._dispatch(message, mine)

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        used: set[int] = set()
        try:
            if "lanes" in message:
                used = self._install(message, fds)
        except Exception as exc:  # a bad lane set must not kill the session's reader
            self.error = exc
            print(f"rtt sdk: cannot install lanes for {message.get('saddr')}: {exc!r}",
                  file=sys.stderr)
        finally:
            for index, fd in enumerate(fds):
                if index not in used:
                    os.close(fd)
        slot = self._slots.pop(message["id"], None) if message.get("id") is not None else None
        if slot is not None:
            slot.reply = message
            slot.done.set()

    def _install(self, message: dict[str, Any], fds: list[int]) -> set[int]:
        handle = self._handles.get((message["saddr"], message["role"]))
        if handle is None:
            return set()
        entries = message["lanes"]
        used = {i for e in entries for i in e["fds"].values()}
        if isinstance(handle, endpoints.Subscriber):
            used.add(message["bell"])
            taken = handle.install(entries, fds, fds[message["bell"]])
        else:
            taken = handle.install(entries, fds)
        return used if taken else set()
