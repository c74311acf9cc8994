"""Crash recovery of the real daemon: kill -9 at every protocol point and at random points,
torn tails, flipped bytes, and power loss. After each restart the observed graph must equal the
last committed graph, as the coordinator's decisions define it."""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rtt_fabric import graph, steps, wal
from rtt_fabric.client import ClientError
from tests.fabric.conftest import PLAN, Coordinator, Daemon, link, symbol

SYMS = [f"rtt://d/api/s{i}" for i in range(8)]


class Model:
    """What the coordinator knows: decisions, and the graph they commit to."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator, self.graph, self.count = coordinator, graph.EMPTY, 0

    def txid(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def random_batch(self, rng: random.Random) -> list[dict[str, object]]:
        """One add or delete per sender slot, never touching a link twice."""
        batch: list[dict[str, object]] = []
        for src in rng.sample(SYMS[:4], rng.randint(1, 3)):
            present = [k for k in self.graph.links if k[0] == src]
            if present:
                batch.append({"op": "del", "link": self.graph.links[present[0]].to_json()})
            else:
                batch.append({"op": "add", "link": link(src, rng.choice(SYMS[4:]),
                                                        lane=rng.choice(["shm", "uds"]))})
        return batch

    def decide(self, txid: str, decision: str, batch: list[dict[str, object]]) -> None:
        # Logged before the decision is sent, as the coordinator's WAL will do (spec/tla).
        self.coordinator.decisions[txid] = decision
        if decision == "commit":
            self.graph = steps.apply(self.graph, [
                steps.Step(steps.Op(s["op"]), graph.Link.from_json(s["link"]))  # type: ignore[arg-type]
                for s in batch])


def _boot(daemon: Daemon) -> None:
    daemon.start()
    with daemon.client() as c:
        c.call("register", service="svc", symbols=[symbol(s) for s in SYMS])


def _settled_hash(daemon: Daemon) -> str:
    """Wait until the daemon has no transaction in doubt, then return its graph hash."""
    for _ in range(500):
        with daemon.client() as c:
            status = c.call("status")
        if not status["in_doubt"]:
            return str(status["graph_hash"])
        threading.Event().wait(0.02)
    raise AssertionError(f"still in doubt: {status['in_doubt']}\n{daemon.log_text()}")


POINTS = {
    # point: (operation that reaches it, the coordinator's decision, is t1 live afterwards?)
    "prepare.before_log": ("prepare", None, False),
    "prepare.after_log": ("prepare", None, False),  # ACK never seen: presumed abort
    "commit.before_log": ("commit", "commit", True),
    "commit.before_sync": ("commit", "commit", True),  # the mid-fsync point
    "commit.after_sync": ("commit", "commit", True),
    "abort.after_log": ("abort", "abort", False),
}


@pytest.mark.parametrize("point", sorted(POINTS))
def test_kill_at_each_protocol_point(tmp_path: Path, coordinator: Coordinator, point: str):
    daemon = Daemon(tmp_path, coordinator=coordinator.path)
    _boot(daemon)
    model = Model(coordinator)
    base = [{"op": "add", "link": link(SYMS[0], SYMS[4])}]
    with daemon.client() as c:
        assert c.call("prepare", txid="t0", plan_id=PLAN, steps=base)["vote"] == "ack"
        model.decide("t0", "commit", base)
        c.call("commit", txid="t0")
    assert daemon.stop() == 0
    daemon.start(RTT_FAILPOINTS=point)
    op, decision, live = POINTS[point]
    batch = [{"op": "add", "link": link(SYMS[1], SYMS[5])}]
    with contextlib.suppress(ConnectionError, OSError, ClientError), daemon.client() as c:
        c.call("prepare", txid="t1", plan_id=PLAN, steps=batch)
        if decision is not None:
            model.decide("t1", decision, batch)
            c.call(op, txid="t1")
    assert daemon.wait_exit() != 0, "the failpoint did not fire"
    daemon.start()
    expected = model.graph
    assert _settled_hash(daemon) == expected.hash
    assert (("rtt://d/api/s1", "rtt://d/api/s5", "p2p") in expected.links) is live
    assert daemon.stop() == 0


def test_two_hundred_random_kills(tmp_path: Path, coordinator: Coordinator):
    rng = random.Random(20261127)
    daemon = Daemon(tmp_path, coordinator=coordinator.path, checkpoint_every=50)
    _boot(daemon)
    model = Model(coordinator)
    for round_ in range(200):
        assert _settled_hash(daemon) == model.graph.hash, f"round {round_}"
        _kill_mid_work(daemon, model, rng, within_s=0.04)
        daemon.start()
    assert _settled_hash(daemon) == model.graph.hash
    report = wal.verify(daemon.state / "wal")
    assert report.ok, report
    assert model.count > 200  # the kills landed among real work
    assert daemon.stop() == 0


def _kill_mid_work(daemon: Daemon, model: Model, rng: random.Random, *, within_s: float) -> None:
    """Drive transactions from a thread and SIGKILL the daemon at a random moment among them."""
    stop = threading.Event()
    worker = threading.Thread(target=_drive, args=(daemon, model, rng.random(), stop))
    worker.start()
    stop.wait(rng.uniform(0.0, within_s))
    daemon.kill()
    stop.set()
    worker.join(10)


def _drive(daemon: Daemon, model: Model, seed: float, stop: threading.Event) -> None:
    rng = random.Random(seed)
    with contextlib.suppress(ConnectionError, OSError, ClientError), daemon.client(2) as c:
        while not stop.is_set():
            txid, batch = model.txid(), model.random_batch(rng)
            if c.call("prepare", txid=txid, plan_id=PLAN, steps=batch)["vote"] != "ack":
                continue
            decision = "commit" if rng.random() < 0.8 else "abort"
            model.decide(txid, decision, batch)
            c.call(decision, txid=txid)


def test_a_torn_tail_is_truncated_and_a_flipped_byte_is_named(tmp_path: Path,
                                                             coordinator: Coordinator):
    daemon = Daemon(tmp_path, coordinator=coordinator.path)
    _boot(daemon)
    model = Model(coordinator)
    with daemon.client() as c:
        for i in range(3):
            batch = [{"op": "add", "link": link(SYMS[i], SYMS[4 + i])}]
            c.call("prepare", txid=f"t{i}", plan_id=PLAN, steps=batch)
            model.decide(f"t{i}", "commit", batch)
            c.call("commit", txid=f"t{i}")
    assert daemon.stop() == 0
    segment = sorted((daemon.state / "wal").glob("*.seg"))[-1]
    with segment.open("ab") as f:  # half a record, as a crash mid-write leaves it
        f.write(bytes(range(40)))
    daemon.start()
    assert "torn" in daemon.log_text()
    assert _settled_hash(daemon) == model.graph.hash
    assert daemon.stop() == 0
    image = bytearray(segment.read_bytes())
    middle = len(image) // 2
    image[middle] ^= 0xFF
    segment.write_bytes(bytes(image))
    daemon.start(wait=False)
    assert daemon.wait_exit() == 1
    log = daemon.log_text()
    assert "refusing to start" in log
    assert segment.name in log
    done = subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "fabric", "wal",
                           "verify", "--state", str(daemon.state)], capture_output=True, text=True)
    assert done.returncode == 1
    assert f"{segment.name}:" in done.stdout
    assert "CORRUPT" in done.stdout


def test_power_loss_never_loses_a_committed_batch(tmp_path: Path, coordinator: Coordinator):
    rng = random.Random(7)
    durable = tmp_path / "durable.log"
    daemon = Daemon(tmp_path, coordinator=coordinator.path,
                    env={wal.DURABLE_LOG_ENV: str(durable)})
    _boot(daemon)
    model = Model(coordinator)
    for round_ in range(40):
        assert _settled_hash(daemon) == model.graph.hash, f"round {round_}"
        _kill_mid_work(daemon, model, rng, within_s=0.03)
        wal.simulate_power_loss(daemon.state / "wal", durable)  # drop writes since last fsync
        daemon.start()
    assert _settled_hash(daemon) == model.graph.hash
    assert daemon.stop() == 0


def test_a_prepare_left_undecided_while_running_is_asked_about(tmp_path: Path,
                                                             coordinator: Coordinator):
    daemon = Daemon(tmp_path, coordinator=coordinator.path, in_doubt_after=0.3)
    _boot(daemon)
    batch = [{"op": "add", "link": link(SYMS[0], SYMS[4])}]
    with daemon.client() as c:
        assert c.call("prepare", txid="t1", plan_id=PLAN, steps=batch)["vote"] == "ack"
    coordinator.decisions["t1"] = "commit"  # then the coordinator goes quiet
    expected = graph.Graph.of([graph.Link.from_json(batch[0]["link"])])
    assert _settled_hash(daemon) == expected.hash
    assert "t1" in coordinator.asked
    assert daemon.stop() == 0
