"""Beyond one sender and one node: MPSC by striping, tcp lanes between two nodes, asyncio ends.

Two nodes run as two daemon processes on loopback, sharing a cluster key; the tcp route's
connection is dialed by the sending node and handed to the services at each end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rtt_fabric
from rtt_fabric import datalink
from tests.fabric.conftest import (
    Coordinator,
    Daemon,
    commit,
    link,
    register,
    report,
    spawn,
    symbol,
)

pytestmark = pytest.mark.e2e

SINK = "rtt://hub/in/all"


def wait_routed(pub: rtt_fabric.Publisher) -> None:
    deadline = time.monotonic() + 10
    while not pub.routes:
        assert time.monotonic() < deadline, "no lane arrived"
        time.sleep(0.005)


def test_many_senders_stripe_into_one_subscriber_each_in_order(daemon: Daemon,
                                                                tmp_path: Path) -> None:
    senders = [f"rtt://src{i}/out/x" for i in range(3)]
    for i, saddr in enumerate(senders):
        register(daemon, f"src{i}", saddr)
    register(daemon, "hub", SINK)
    lanes = ("shm", "uds", "shm")  # one ring or socket per producer: SPSC each
    commit(daemon, "fan-in", [{"op": "add", "link": link(s, SINK, lane=lane, qps=1_000_000,
                                                        backpressure="buffer")}
                              for s, lane in zip(senders, lanes, strict=True)])
    with rtt_fabric.connect(daemon.socket, service="hub", symbols=[symbol(SINK)]) as conn:
        sub = conn.subscriber(SINK)
        procs = [spawn(daemon, "pub", tmp_path / f"pub{i}.json", service=f"src{i}",
                       saddr=saddr, count=2000, sizes="64,512")
                 for i, saddr in enumerate(senders)]
        got: dict[str, list[int]] = {s: [] for s in senders}
        deadline = time.monotonic() + 30
        while sum(map(len, got.values())) < 6000 and time.monotonic() < deadline:
            for frame in sub.drain(1024, timeout_s=0.2):
                got[frame.sender].append(int.from_bytes(frame.payload[:8], "little"))
        for i, proc in enumerate(procs):
            assert report(proc, tmp_path / f"pub{i}.json")["admitted"] == 2000
    assert all(seqs == list(range(2000)) for seqs in got.values())


@pytest.fixture
def two_nodes(tmp_path: Path, coordinator: Coordinator) -> Iterator[tuple[Daemon, Daemon]]:
    key = tmp_path / "cluster.key"
    key.write_bytes(os.urandom(32).hex().encode())
    b = Daemon(tmp_path / "b", node="b", coordinator=coordinator.path,
               extra=("--cluster-key", str(key)))
    (tmp_path / "b").mkdir()
    b.start()
    with b.client() as c:
        host, port = c.call("status")["data_address"]
    a = Daemon(tmp_path / "a", node="a", coordinator=coordinator.path,
               extra=("--cluster-key", str(key), "--peer", f"b={host}:{port}"))
    (tmp_path / "a").mkdir()
    a.start()
    yield a, b
    for node in (a, b):
        assert node.stop() == 0, node.log_text()


def test_a_tcp_lane_joins_two_nodes(two_nodes: tuple[Daemon, Daemon]) -> None:
    a, b = two_nodes
    src, dst = "rtt://edge/out/x", "rtt://core/in/y"
    register(a, "edge", src)
    register(b, "core", dst)
    route = link(src, dst, lane="tcp", qps=1_000_000, from_node="a", to_node="b",
                 backpressure="buffer")
    for node in (a, b):  # each node prepares and commits its own end of the link
        commit(node, "cross", [{"op": "add", "link": route}])
    with rtt_fabric.connect(a.socket, service="edge", symbols=[symbol(src)]) as out, \
            rtt_fabric.connect(b.socket, service="core", symbols=[symbol(dst)]) as into:
        pub, sub = out.publisher(src), into.subscriber(dst)
        wait_routed(pub)
        payloads = [i.to_bytes(4, "little") * 100 for i in range(1000)]
        assert pub.send_many(payloads) == 1000
        while pub.flush():
            time.sleep(0.001)
        got: list[rtt_fabric.Frame] = []
        deadline = time.monotonic() + 10
        while len(got) < 1000 and time.monotonic() < deadline:
            got += sub.drain(1024, timeout_s=0.2)
    assert [f.payload for f in got] == payloads
    assert [f.frame_id for f in got] == list(range(1000))


def test_the_data_listener_refuses_a_hello_without_the_cluster_key(
        two_nodes: tuple[Daemon, Daemon]) -> None:
    _, b = two_nodes
    with b.client() as c:
        host, port = c.call("status")["data_address"]
    forged = datalink.hello(os.urandom(32), ("rtt://x/y/z", "rtt://core/in/y", "p2p"), 1)
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(forged)
        assert conn.recv(1) == b""  # closed on us
    deadline = time.monotonic() + 5
    while "not signed with this cluster's key" not in b.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_asyncio_ends_send_and_receive_without_blocking_the_loop(daemon: Daemon) -> None:
    src = "rtt://aio/out/x"
    register(daemon, "aio", src)
    register(daemon, "hub", SINK)
    commit(daemon, "aio", [{"op": "add", "link": link(src, SINK, qps=1_000_000)}])

    async def main() -> list[bytes]:
        with rtt_fabric.connect(daemon.socket, service="aio", symbols=[symbol(src)]) as out, \
                rtt_fabric.connect(daemon.socket, service="hub", symbols=[symbol(SINK)]) as into:
            pub, sub = out.publisher(src), into.subscriber(SINK)
            wait_routed(pub)
            ticks = 0

            async def ticker() -> None:  # proves the loop keeps running while recv waits
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            async def produce() -> None:
                for i in range(50):
                    await pub.send_async(i.to_bytes(2, "little"))
                    await asyncio.sleep(0.002)

            tick = asyncio.create_task(ticker())
            producer = asyncio.create_task(produce())
            got = [(await asyncio.wait_for(sub.recv_async(), 5)).payload for _ in range(50)]
            await producer
            tick.cancel()
            assert ticks > 20
            return got

    assert asyncio.run(main()) == [i.to_bytes(2, "little") for i in range(50)]


def test_a_lost_daemon_ends_the_session_but_not_the_lanes(daemon: Daemon) -> None:
    src = "rtt://solo/out/x"
    register(daemon, "solo", src)
    register(daemon, "hub", SINK)
    commit(daemon, "solo", [{"op": "add", "link": link(src, SINK, qps=1_000_000)}])
    with rtt_fabric.connect(daemon.socket, service="solo", symbols=[symbol(src)]) as out, \
            rtt_fabric.connect(daemon.socket, service="hub", symbols=[symbol(SINK)]) as into:
        pub, sub = out.publisher(src), into.subscriber(SINK)
        wait_routed(pub)
        daemon.kill()
        deadline = time.monotonic() + 5
        while out.alive or into.alive:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert isinstance(out.error, ConnectionError)
        assert pub.send(b"still here") == 1  # the ring is between the services, not the daemon
        assert sub.recv(timeout_s=2).payload == b"still here"  # type: ignore[union-attr]
