"""Fabric test harness: real node daemon processes, real sockets, a test-owned coordinator.

The coordinator stub answers the in-doubt query (`resolve`) from a decision table, presuming
abort for anything it never decided: that is the seam the tests own. Everything else is the
product: `rtt fabric serve` in its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from rtt_fabric import protocol
from rtt_fabric.client import Client

NODE = "n0"


class Daemon:
    """One `rtt fabric serve` process on a state directory."""

    def __init__(self, root: Path, *, coordinator: Path | None = None,
                 env: dict[str, str] | None = None, shm_mb: int = 64,
                 checkpoint_every: int = 10_000, in_doubt_after: float = 5.0,
                 node: str = NODE, extra: tuple[str, ...] = ()) -> None:
        self.node, self.extra = node, extra
        self.state, self.socket = root / "state", root / "fabric.sock"
        self.coordinator, self.env = coordinator, env or {}
        self.shm_mb, self.checkpoint_every = shm_mb, checkpoint_every
        self.in_doubt_after = in_doubt_after
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "daemon.log"

    def start(self, *, wait: bool = True, **env: str) -> Daemon:
        argv = [sys.executable, "-m", "rtt_controller.cli.main", "fabric", "serve",
                "--state", str(self.state), "--socket", str(self.socket), "--node", self.node,
                "--shm-mb", str(self.shm_mb), "--checkpoint-every", str(self.checkpoint_every),
                "--in-doubt-after", str(self.in_doubt_after), *self.extra]
        if self.coordinator is not None:
            argv += ["--coordinator", str(self.coordinator)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log,
                                         env={**os.environ, **self.env, **env})
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError, ConnectionError), self.client(timeout_s=1) as c:
                c.call("status")
                return
            time.sleep(0.02)
        raise AssertionError(f"daemon not ready:\n{self.log_text()}")

    def client(self, timeout_s: float = 10.0) -> Client:
        return Client(self.socket, timeout_s=timeout_s)

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def wait_exit(self, timeout_s: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def graph(self) -> dict[str, Any]:
        with self.client() as c:
            return c.call("get_graph")["graph"]


class Coordinator:
    """A stub coordinator: serves `resolve` from `decisions`, presuming abort otherwise."""

    def __init__(self, path: Path) -> None:
        self.path, self.decisions, self.asked = path, dict[str, str](), list[str]()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    header = conn.recv(4, socket.MSG_WAITALL)
                    body = conn.recv(protocol.frame_length(header), socket.MSG_WAITALL)
                    request = orjson.loads(body)
                    self.asked.append(request["txid"])
                    decision = self.decisions.get(request["txid"], "abort")
                    conn.sendall(protocol.frame(protocol.ok(request.get("id"),
                                                            decision=decision)))
                except (OSError, ValueError, KeyError):
                    continue

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    stub = Coordinator(tmp_path / "coordinator.sock")
    yield stub
    stub.close()


@pytest.fixture
def daemon(tmp_path: Path, coordinator: Coordinator) -> Iterator[Daemon]:
    node = Daemon(tmp_path, coordinator=coordinator.path).start()
    yield node
    if node.proc is not None and node.proc.poll() is None:
        assert node.stop() == 0, node.log_text()


def symbol(saddr: str, *versions: str, lanes: tuple[str, ...] = ("shm", "uds", "tcp")
           ) -> dict[str, Any]:
    return {"saddr": saddr, "type": "api", "versions": list(versions or ("1.0.0",)),
            "caps": ["c"], "lanes": list(lanes)}


def link(src: str, dst: str, *, lane: str = "shm", cls: str = "p2p", version: str = "1.0.0",
         qps: int = 1000, backpressure: str = "taildrop", budget_ms: float = 10,
         from_node: str = NODE, to_node: str = NODE) -> dict[str, Any]:
    return {"from": src, "to": dst, "class": cls, "lane": lane, "from_node": from_node,
            "to_node": to_node, "version": version, "caps": ["c"],
            "qos": {"latency_budget_ms": budget_ms, "throughput_qps": qps,
                    "backpressure": backpressure}}


def register(node: Daemon, service: str, *saddrs: str) -> None:
    with node.client() as c:
        c.call("register", service=service, symbols=[symbol(s) for s in saddrs])


def commit(node: Daemon, txid: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """PREPARE and COMMIT one batch on `node`; the batch must be ACKed."""
    with node.client() as c:
        vote = c.call("prepare", txid=txid, plan_id=PLAN, steps=steps)
        assert vote["vote"] == "ack", vote
        return c.call("commit", txid=txid)


PLAN = "sha256-" + "ab" * 32


# --- service processes ---------------------------------------------------------------------

_SPAWNED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _reap_services() -> Iterator[None]:
    """A test that fails mid-way must not leave its service processes running."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def spawn(node: Daemon, role: str, out: Path, *, service: str, saddr: str,
          **options: Any) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tests.fabric.service", role, "--socket", str(node.socket),
            "--service", service, "--saddr", saddr, "--out", str(out)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    proc = subprocess.Popen(argv)
    _SPAWNED.append(proc)
    return proc


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"service exited {proc.returncode} before {path.name}"
        assert time.monotonic() < deadline, f"no {path.name}"
        time.sleep(0.01)


def report(proc: subprocess.Popen[bytes], out: Path, timeout_s: float = 60) -> dict[str, Any]:
    assert proc.wait(timeout_s) == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def flight_of(node: Daemon, src: str, dst: str) -> dict[str, Any]:
    with node.client() as c:
        routes = c.call("flight")["routes"]
    (route,) = [r for r in routes if (r["from"], r["to"]) == (src, dst)]
    return route
