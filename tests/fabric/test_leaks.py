"""No leaks: connect/disconnect and route add/remove cycles leave fds, threads and memfds flat,
and a service killed with SIGKILL has its lanes reclaimed.

`Resources` snapshots a process from /proc: open descriptors, memfds among them, and threads.
The test process is a real SDK client; the daemon is a real `rtt fabric serve` process.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rtt_fabric import sdk
from tests.fabric.conftest import Daemon, commit, link, register, spawn, symbol, wait_file

PUB, SUB = "rtt://leak/out/a", "rtt://leak/in/b"
CYCLES = 2000

pytestmark = pytest.mark.e2e


@dataclasses.dataclass(frozen=True)
class Resources:
    fds: int
    memfds: int
    threads: int

    @classmethod
    def of(cls, pid: int | None = None) -> Resources:
        proc = Path("/proc") / (str(pid) if pid else "self")
        targets = []
        for entry in (proc / "fd").iterdir():
            try:
                targets.append(os.readlink(entry))
            except FileNotFoundError:  # the descriptor listdir itself used, now closed
                continue
        threads = len(list((proc / "task").iterdir()))
        return cls(fds=len(targets), memfds=sum(t.startswith("/memfd:") for t in targets),
                   threads=threads if pid else threading.active_count())


def steady(pid: int) -> Resources:
    """The daemon's resources once nothing is in flight: a closing client connection holds an
    fd for a moment, so a baseline is taken from two equal reads 100 ms apart."""
    last = Resources.of(pid)
    while True:
        time.sleep(0.1)
        now = Resources.of(pid)
        if now == last:
            return now
        last = now


def settle(expected: Resources, now: Callable[[], Resources], timeout_s: float = 10.0) -> None:
    """Wait for asynchronous reclamation to bring a process back to `expected`."""
    deadline = time.monotonic() + timeout_s
    while (seen := now()) != expected:
        assert time.monotonic() < deadline, f"not reclaimed: {seen} != {expected}"
        time.sleep(0.02)


def wait_for(check: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_connect_disconnect_cycles_leave_no_fds_threads_or_memfds(daemon: Daemon) -> None:
    register(daemon, "svc", PUB)
    register(daemon, "sink", SUB)
    commit(daemon, "route", [{"op": "add", "link": link(PUB, SUB, qps=100_000)}])
    pid = daemon.proc.pid  # type: ignore[union-attr]

    def cycle() -> None:
        with sdk.connect(daemon.socket, service="svc", symbols=[symbol(PUB)]) as conn:
            pub = conn.publisher(PUB)
            assert pub.routes  # the lane really was handed over, fds and all
            pub.send(b"x")

    cycle()  # warm-up: first-use allocations are not leaks
    here, there = Resources.of(), steady(pid)
    for _ in range(CYCLES):
        cycle()
    assert Resources.of() == here
    settle(there, lambda: Resources.of(pid))


def test_route_add_remove_cycles_leave_no_fds_threads_or_memfds(daemon: Daemon) -> None:
    register(daemon, "svc", PUB)
    register(daemon, "sink", SUB)
    pid = daemon.proc.pid  # type: ignore[union-attr]
    with sdk.connect(daemon.socket, service="svc", symbols=[symbol(PUB)]) as out, \
            sdk.connect(daemon.socket, service="sink", symbols=[symbol(SUB)]) as into:
        pub, sub = out.publisher(PUB), into.subscriber(SUB)

        def cycle(i: int, lane: str) -> None:
            route = link(PUB, SUB, lane=lane, qps=100_000)
            commit(daemon, f"add-{lane}-{i}", [{"op": "add", "link": route}])
            wait_for(lambda: pub.routes)
            pub.send(b"frame")
            assert sub.recv(timeout_s=5) is not None
            commit(daemon, f"del-{lane}-{i}", [{"op": "del", "link": route}])
            wait_for(lambda: not pub.routes)
            sub.drain(timeout_s=0)  # the retired lane is drained and freed here

        for lane in ("shm", "uds"):
            cycle(-1, lane)
        wait_for(lambda: not sub.drain(timeout_s=0) and sub.lanes == 0)
        here, there = Resources.of(), steady(pid)
        for i in range(CYCLES):
            cycle(i, ("shm", "uds")[i % 2])
        # The last retired lane is freed once the subscriber has seen its final lane set.
        settle(here, lambda: (sub.drain(timeout_s=0), Resources.of())[1])
        settle(there, lambda: Resources.of(pid))


def test_a_killed_service_has_its_lanes_reclaimed(daemon: Daemon, tmp_path: Path) -> None:
    register(daemon, "svc", PUB)
    register(daemon, "sink", SUB)
    commit(daemon, "route", [{"op": "add", "link": link(PUB, SUB, qps=100_000,
                                                      backpressure="buffer")}])
    pid = daemon.proc.pid  # type: ignore[union-attr]
    with sdk.connect(daemon.socket, service="sink", symbols=[symbol(SUB)]) as into:
        sub = into.subscriber(SUB)
        before_here, before_there = Resources.of(), steady(pid)

        ready = tmp_path / "pub.ready"
        pub = spawn(daemon, "pub", tmp_path / "pub.json", service="svc", saddr=PUB, count=500,
                    linger=600, ready_after_send=ready)
        got: list[int] = []
        while len(got) < 500:
            got += [f.frame_id for f in sub.drain(timeout_s=5)]
        wait_file(ready, pub)
        assert _attached(daemon) == 2
        os.kill(pub.pid, signal.SIGKILL)
        pub.wait(10)

        # The daemon notices the closed session, seals the dead producer's ring and gives the
        # route a fresh one; the subscriber drains the old ring and frees it.
        wait_for(lambda: _attached(daemon) == 1)
        assert sub.drain(timeout_s=0.2) == []
        settle(before_here, lambda: (sub.drain(timeout_s=0), Resources.of())[1])
        settle(before_there, lambda: Resources.of(pid))
        assert got == list(range(500))


def _attached(node: Daemon) -> int:
    with node.client() as c:
        return int(c.call("status")["attached"])
