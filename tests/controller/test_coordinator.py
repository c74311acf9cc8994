"""The 2PC coordinator against two real node daemons (spec/tla/RTT.tla's coordinator actions).

Node n0 and node n1 run as `rtt fabric serve` processes that ask this coordinator's resolve
socket about transactions in doubt. Plans are hand-made batches of steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rtt_controller.reconcile import coordinator as coord
from rtt_fabric import graph, steps, wal
from tests.fabric.conftest import Daemon, link, register

pytestmark = pytest.mark.e2e
PLAN = "sha256-" + "cd" * 32


def add(src: str, dst: str, *, lane: str, a: str, b: str) -> steps.Step:
    return steps.Step(steps.Op.ADD, graph.Link.from_json(
        link(src, dst, lane=lane, from_node=a, to_node=b)))


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[tuple[coord.Coordinator, dict[str, Daemon], Path]]:
    resolve = tmp_path / "coordinator.sock"
    log = wal.Wal.open(tmp_path / "coordinator-wal")
    c = coord.Coordinator(log=log, nodes={})
    with coord.resolving(c, resolve):
        daemons = {}
        for name in ("n0", "n1"):
            (tmp_path / name).mkdir()
            daemons[name] = Daemon(tmp_path / name, node=name, coordinator=resolve).start()
        c.nodes = {n: coord.SocketNode(n, d.socket) for n, d in daemons.items()}
        register(daemons["n0"], "edge", "rtt://edge/out/x", "rtt://edge/out/y",
                 "rtt://edge/in/y")
        register(daemons["n1"], "core", "rtt://core/in/x", "rtt://core/out/z")
        yield c, daemons, tmp_path
        for d in daemons.values():
            assert d.stop() == 0, d.log_text()
    log.close()


def batches() -> list[list[steps.Step]]:
    return [[add("rtt://edge/out/y", "rtt://edge/in/y", lane="shm", a="n0", b="n0")],
            [add("rtt://edge/out/x", "rtt://core/in/x", lane="tcp", a="n0", b="n1")]]


def test_every_batch_commits_and_the_observed_graph_is_the_desired_one(fabric) -> None:
    c, daemons, _ = fabric
    plan = batches()
    desired = graph.Graph.of(s.link for batch in plan for s in batch).hash
    result = c.apply(plan_id=PLAN, batches=plan, desired_hash=desired)
    assert (result.outcome, result.committed) == (coord.Outcome.PROMOTED, 2)
    assert c.observed_hash() == desired
    assert len(daemons["n0"].graph()["links"]) == 2  # the shm link and its end of the tcp link
    assert len(daemons["n1"].graph()["links"]) == 1


def test_a_nack_in_batch_k_of_n_undoes_batches_1_to_k_minus_1(fabric) -> None:
    c, daemons, _ = fabric
    before = c.observed_hash()
    # Batch 3 needs a symbol n1 never registered: n1 NACKs it.
    plan = [*batches(), [add("rtt://core/out/z", "rtt://core/in/missing", lane="shm",
                             a="n1", b="n1")]]
    result = c.apply(plan_id=PLAN, batches=plan, desired_hash="sha256-" + "0" * 64)
    assert result.outcome is coord.Outcome.ROLLED_BACK
    assert result.committed == 2
    assert "batch 3 of 3" in result.reason
    assert "not registered" in result.reason
    assert c.observed_hash() == before  # exactly the previous graph, on both nodes
    for d in daemons.values():
        assert d.graph()["links"] == []
        with d.client() as client:
            assert client.call("status")["in_doubt"] == []


def test_a_failed_verify_rolls_the_plan_back_and_names_the_links_that_differ(fabric) -> None:
    c, daemons, _ = fabric
    plan = batches()
    # The desired graph holds a link that no batch adds: the verify finds it missing.
    extra = add("rtt://edge/out/x", "rtt://edge/in/y", lane="uds", a="n0", b="n0").link
    desired = graph.Graph.of([*(s.link for batch in plan for s in batch), extra])
    result = c.apply(plan_id=PLAN, batches=plan, desired_hash=desired.hash, desired=desired)
    assert result.outcome is coord.Outcome.ROLLED_BACK
    assert result.reason.startswith("verify: observed sha256-")
    assert "(missing 1: rtt://edge/out/x -> rtt://edge/in/y)" in result.reason
    assert all(d.graph()["links"] == [] for d in daemons.values())


def test_decisions_survive_a_restart_and_answer_the_nodes(fabric) -> None:
    c, _, tmp_path = fabric
    plan = batches()
    c.apply(plan_id=PLAN, batches=plan,
            desired_hash=graph.Graph.of(s.link for b in plan for s in b).hash)
    committed = sorted(t for t, d in c.decided.items() if d == "commit")
    assert len(committed) == 2
    with wal.Wal.open(tmp_path / "other-wal") as other:
        # A log that never saw the plan knows nothing of it: presumed abort.
        assert coord.Coordinator(log=other, nodes={}).resolve(committed[0]) == "abort"
    c._wal.close()  # reopen the same log, as a restarted coordinator does
    with wal.Wal.open(tmp_path / "coordinator-wal") as log:
        reopened = coord.Coordinator(log=log, nodes={})
        assert reopened.epoch == c.epoch + 1
        assert [reopened.resolve(t) for t in committed] == ["commit", "commit"]
        assert reopened.resolve("never-seen") == "abort"


class AsksFirst:
    """A node whose neighbour, in doubt, asks the coordinator about the transaction while this
    node is still voting (the seam is ours: it forwards to the real daemon)."""

    def __init__(self, node: coord.SocketNode, c: coord.Coordinator) -> None:
        self.name, self._node, self._c = node.name, node, c
        self.told: list[str] = []

    def call(self, op: str, **fields):
        if op == "prepare":
            self.told.append(self._c.resolve(fields["txid"]))
        return self._node.call(op, **fields)


def test_a_transaction_a_node_was_told_to_abort_never_commits(fabric) -> None:
    c, daemons, _ = fabric
    c.nodes["n1"] = asking = AsksFirst(c.nodes["n1"], c)
    plan = batches()
    result = c.apply(plan_id=PLAN, batches=plan,
                     desired_hash=graph.Graph.of(s.link for b in plan for s in b).hash)
    assert asking.told == ["abort"]  # asked mid-vote, answered abort, and it was logged first
    assert result.outcome is coord.Outcome.ROLLED_BACK
    assert result.committed == 1  # batch 1 (n0 only) committed, batch 2 could not, 1 undone
    assert "told abort" in result.reason
    assert all(d.graph()["links"] == [] for d in daemons.values())


class Crash(BaseException):
    """The coordinator process dying (not an error any code path handles)."""


class DiesAt:
    """A node that kills the coordinator when it is asked `op` the `nth` time, after the
    request reached the real daemon (so the daemon holds what it was sent)."""

    def __init__(self, node: coord.SocketNode, op: str, nth: int) -> None:
        self.name, self._node, self.op, self.nth = node.name, node, op, nth

    def call(self, op: str, **fields):
        reply = self._node.call(op, **fields)
        if op == self.op:
            self.nth -= 1
            if self.nth == 0:
                raise Crash(op)
        return reply


def _reopen(c: coord.Coordinator, tmp_path, daemons) -> tuple[coord.Coordinator, wal.Wal]:
    c._wal.close()
    log = wal.Wal.open(tmp_path / "coordinator-wal")
    return coord.Coordinator(log=log, nodes={n: coord.SocketNode(n, d.socket)
                                             for n, d in daemons.items()}), log


def test_a_restarted_coordinator_finishes_the_plan_a_crash_interrupted(fabric) -> None:
    c, daemons, tmp_path = fabric
    plan = [*batches(), [add("rtt://core/out/z", "rtt://core/in/x", lane="uds", a="n1",
                              b="n1")]]
    desired = graph.Graph.of(s.link for b in plan for s in b).hash
    # Dies right after n0 voted on batch 2: batch 1 committed, batch 2 prepared on n0 only.
    c.nodes["n0"] = DiesAt(c.nodes["n0"], "prepare", 2)
    with pytest.raises(Crash):
        c.apply(plan_id=PLAN, batches=plan, desired_hash=desired)
    with daemons["n0"].client() as client:
        assert len(client.call("status")["in_doubt"]) == 1
    again, log = _reopen(c, tmp_path, daemons)
    try:
        assert again.open_plan is not None
        assert (again.open_plan.committed, again.open_plan.rolling_back) == ({0}, False)
        settled = again.settle()
        assert [(n, d) for n, _, d in settled] == [("n0", "abort")]  # never logged: presumed
        result = again.resume(plan)
        assert (result.outcome, result.committed) == (coord.Outcome.PROMOTED, 3)
        assert again.observed_hash() == desired
        assert again.open_plan is None
    finally:
        log.close()


def test_a_restarted_coordinator_keeps_undoing_a_plan_that_was_rolling_back(fabric) -> None:
    c, daemons, tmp_path = fabric
    before = c.observed_hash()
    plan = [*batches(), [add("rtt://core/out/z", "rtt://core/in/missing", lane="shm", a="n1",
                              b="n1")]]
    # Batch 3 is NACKed (n1 lacks the symbol); the coordinator dies undoing batch 2, after
    # the inverse's PREPARE reached n0.
    c.nodes["n0"] = DiesAt(c.nodes["n0"], "prepare", 3)
    with pytest.raises(Crash):
        c.apply(plan_id=PLAN, batches=plan, desired_hash="sha256-" + "0" * 64)
    again, log = _reopen(c, tmp_path, daemons)
    try:
        assert again.open_plan is not None
        assert again.open_plan.rolling_back
        assert again.open_plan.committed == {0, 1}
        again.settle()
        result = again.resume(plan)
        assert result.outcome is coord.Outcome.ROLLED_BACK
        assert "rolling back" in result.reason
        assert again.observed_hash() == before
        for d in daemons.values():
            with d.client() as client:
                assert client.call("status")["in_doubt"] == []
    finally:
        log.close()
