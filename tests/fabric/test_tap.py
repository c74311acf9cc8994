"""`rtt tap --flight` and the breaker, against a real daemon with live traffic."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import orjson
import pytest

import rtt_fabric
from tests.fabric.conftest import Daemon, commit, link, register, symbol

PUB, SUB = "rtt://tap/out/a", "rtt://tap/in/b"

pytestmark = pytest.mark.e2e


def test_tap_writes_a_window_per_route_with_merged_percentiles(daemon: Daemon) -> None:
    register(daemon, "svc", PUB)
    register(daemon, "sink", SUB)
    commit(daemon, "route", [{"op": "add", "link": link(PUB, SUB, qps=1_000_000)}])
    with rtt_fabric.connect(daemon.socket, service="svc", symbols=[symbol(PUB)]) as out, \
            rtt_fabric.connect(daemon.socket, service="sink", symbols=[symbol(SUB)]) as into:
        pub, sub = out.publisher(PUB), into.subscriber(SUB)
        stop = threading.Event()

        def send() -> None:
            while not stop.is_set():
                pub.send(b"x" * 64)
                time.sleep(0.001)

        def receive() -> None:  # blocks on the doorbell between frames: real syscalls
            while not stop.is_set():
                sub.recv(timeout_s=0.05)

        workers = [threading.Thread(target=send), threading.Thread(target=receive)]
        for worker in workers:
            worker.start()
        try:
            tapped = subprocess.run(
                [sys.executable, "-m", "rtt_controller.cli.main", "tap", "--flight", "1.5s",
                 "--interval", "500ms", "--socket", str(daemon.socket)],
                capture_output=True, check=True, timeout=30)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    lines = [orjson.loads(raw) for raw in tapped.stdout.splitlines()]
    assert len(lines) == 3  # one route, three windows
    for line in lines:
        assert {"ts", "route_id", "p50", "p95", "p99", "qdepth", "drops", "breaker_state",
                "syscalls_delta"} <= set(line)
        assert line["frames"] > 0
        assert 0 < line["p50"] <= line["p95"] <= line["p99"]
        assert line["breaker_state"] == "closed"
        assert line["syscalls_delta"] > 0  # the subscriber sleeps on its doorbell in between


def test_errors_past_the_policys_threshold_open_the_breaker_and_it_heals(daemon: Daemon) -> None:
    # The node's own default is 100 errors in 10 s; the link carries the policy's 3 in 1 s.
    strict = daemon
    register(strict, "svc", PUB)
    register(strict, "sink", SUB)
    route = link(PUB, SUB, qps=1_000_000)
    route["qos"]["breaker"] = {"errors": 3, "window_s": 1}
    commit(strict, "route", [{"op": "add", "link": route}])
    with rtt_fabric.connect(strict.socket, service="svc", symbols=[symbol(PUB)]) as out, \
            rtt_fabric.connect(strict.socket, service="sink", symbols=[symbol(SUB)]) as into:
        pub, sub = out.publisher(PUB), into.subscriber(SUB)
        assert pub.send(b"ok") == 1
        for _ in range(4):  # four oversize frames: errors, counted on the route
            with pytest.raises(ValueError, match="exceeds max_payload"):
                pub.send(b"x" * 5000)
        deadline = time.monotonic() + 5
        while True:
            try:
                pub.send(b"probe")
            except rtt_fabric.BreakerOpen:
                break
            assert time.monotonic() < deadline, "the breaker never opened"
            time.sleep(0.02)
        with strict.client() as c:
            assert c.call("status")["breaker_trips"] == 1
        # After a window open it half-opens, and a clean window later it closes.
        deadline = time.monotonic() + 10
        while True:
            try:
                if pub.send(b"again") == 1:
                    break
            except rtt_fabric.BreakerOpen:
                pass
            assert time.monotonic() < deadline, "the breaker never let traffic through again"
            time.sleep(0.05)
        assert [f.payload for f in sub.drain(100, timeout_s=1)][-1] == b"again"
