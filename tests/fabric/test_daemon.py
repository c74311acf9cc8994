"""The node daemon end to end: a real process, a real socket, the real WAL."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rtt_fabric import graph
from rtt_fabric.client import ClientError
from tests.fabric.conftest import NODE, PLAN, Daemon, link, symbol

A, B, C = "rtt://d/api/a", "rtt://d/api/b", "rtt://d/api/c"


def _register(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("register", service="svc", symbols=[symbol(A), symbol(B, "1.0.0", "2.0.0"),
                                                    symbol(C, lanes=("tcp",))])


def test_sigterm_exits_zero_and_the_socket_is_private(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o600
    assert daemon.stop() == 0
    assert not daemon.socket.exists()


def test_prepare_commit_flips_the_epoch_and_a_second_commit_is_a_noop(daemon):
    _register(daemon)
    with daemon.client() as c:
        vote = c.call("prepare", txid="t1", plan_id=PLAN,
                      steps=[{"op": "add", "link": link(A, B)}])
        assert vote["vote"] == "ack"
        assert c.call("status")["epoch"] == 0  # prepared is not yet live
        first = c.call("commit", txid="t1")
        assert (first["result"], first["epoch"]) == ("committed", 1)
        again = c.call("commit", txid="t1")
        assert (again["result"], again["epoch"]) == ("already committed", 1)
        observed = c.call("get_graph")["graph"]
    expected = graph.Graph.of([graph.Link.from_json(link(A, B))])
    assert observed["graph_hash"] == expected.hash == first["graph_hash"]


@pytest.mark.parametrize(("step", "reason"), [
    ({"op": "add", "link": link(A, "rtt://d/api/zz")}, "is not registered"),
    ({"op": "add", "link": link(A, B, version="3.0.0")}, "offers ['1.0.0', '2.0.0']"),
    ({"op": "add", "link": link(A, C)}, "does not speak shm"),
    ({"op": "del", "link": link(A, B)}, "does not apply to the committed graph"),
    ({"op": "add", "link": link(A, B, qps=20_000_000)}, "shm budget"),
    ({"op": "add", "link": {**link(A, B), "from_node": "elsewhere", "to_node": "x"}},
     "neither end is on node"),
])
def test_prepare_nacks_with_a_reason(daemon, step, reason):
    _register(daemon)
    with daemon.client() as c:
        vote = c.call("prepare", txid="t1", plan_id=PLAN, steps=[step])
        assert vote["vote"] == "nack"
        assert reason in vote["reason"]
        assert c.call("status")["in_doubt"] == []  # a NACK reserves nothing


def test_one_transaction_at_a_time(daemon):
    _register(daemon)
    with daemon.client() as c:
        step = [{"op": "add", "link": link(A, B)}]
        assert c.call("prepare", txid="t1", plan_id=PLAN, steps=step)["vote"] == "ack"
        other = [{"op": "add", "link": link(B, A, lane="uds")}]
        second = c.call("prepare", txid="t2", plan_id=PLAN, steps=other)
        assert second["vote"] == "nack"
        assert "txid t1 is prepared and undecided" in second["reason"]
        assert c.call("abort", txid="t1")["result"] == "aborted"
        assert c.call("prepare", txid="t3", plan_id=PLAN, steps=step)["vote"] == "ack"


def test_prepare_refuses_a_second_active_p2p_link_for_a_sender(daemon):
    _register(daemon)
    with daemon.client() as c:
        c.call("prepare", txid="t1", plan_id=PLAN, steps=[{"op": "add", "link": link(A, B)}])
        c.call("commit", txid="t1")
        vote = c.call("prepare", txid="t2", plan_id=PLAN,
                      steps=[{"op": "add", "link": link(A, "rtt://d/api/c", lane="tcp")}])
        assert vote["vote"] == "nack"
        assert f"{A} would have two active p2p links" in vote["reason"]


def test_out_of_order_messages_get_errors_not_crashes(daemon):
    _register(daemon)
    with daemon.client() as c:
        with pytest.raises(ClientError) as err:
            c.call("commit", txid="never-prepared")
        assert err.value.code == "unknown-txid"
        assert c.call("abort", txid="never-prepared")["result"] == "not prepared"
        c.call("prepare", txid="t1", plan_id=PLAN, steps=[{"op": "add", "link": link(A, B)}])
        c.call("abort", txid="t1")
        with pytest.raises(ClientError) as err:
            c.call("commit", txid="t1")
        assert err.value.code == "aborted"
        with pytest.raises(ClientError) as err:
            c.call("resolve", txid="t1")
        assert err.value.code == "not-coordinator"
        assert c.call("status")["epoch"] == 0


def test_register_conflicts_and_unregister(daemon):
    _register(daemon)
    with daemon.client() as c:
        with pytest.raises(ClientError) as err:
            c.call("register", service="other", symbols=[symbol(A)])
        assert err.value.code == "conflict"
        c.call("unregister", service="svc")
        assert c.call("status")["symbols"] == 0
        with pytest.raises(ClientError):
            c.call("unregister", service="svc")


def test_state_survives_a_clean_restart(daemon):
    _register(daemon)
    with daemon.client() as c:
        c.call("prepare", txid="t1", plan_id=PLAN, steps=[{"op": "add", "link": link(A, B)}])
        before = c.call("commit", txid="t1")["graph_hash"]
    assert daemon.stop() == 0
    daemon.start()
    with daemon.client() as c:
        status = c.call("status")
        assert (status["graph_hash"], status["epoch"], status["symbols"]) == (before, 1, 3)
        stats = c.call("get_stats", **{"from": A, "to": B, "class": "p2p"})
        assert stats["since_epoch"] == 1
        assert stats["link"]["lane"] == "shm"


def test_a_second_daemon_is_refused_and_leaves_the_first_alone(daemon, tmp_path):
    for socket_path in (tmp_path / "other.sock", daemon.socket):
        other = Daemon(tmp_path)
        other.socket = socket_path
        other.start(wait=False)
        assert other.wait_exit() == 1
        assert "another daemon holds this state" in other.log_text()
        with daemon.client() as c:  # the first daemon's socket is still there and answers
            assert c.call("status")["epoch"] == 0


def test_status_command_prints_the_graph_hash_as_json(daemon):
    _register(daemon)
    with daemon.client() as c:
        c.call("prepare", txid="t1", plan_id=PLAN, steps=[{"op": "add", "link": link(A, B)}])
        c.call("commit", txid="t1")
    done = subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "fabric", "status",
                           "--socket", str(daemon.socket), "--format", "json"],
                          capture_output=True, text=True, check=True)
    status = json.loads(done.stdout)
    assert status["node"] == NODE
    assert status["graph_hash"] == status["graph"]["graph_hash"]
    assert [lk["from"] for lk in status["graph"]["links"]] == [A]


def test_a_peer_with_another_uid_is_refused(tmp_path):
    if os.getuid() != 0:
        pytest.fail("this test runs as root (as CI does) to act as another uid")
    reachable = Path(tempfile.mkdtemp(prefix="rtt-uid-"))  # pytest's tmp_path is 0700
    reachable.chmod(0o755)
    node = Daemon(tmp_path)
    node.socket = reachable / "fabric.sock"
    node.start()
    try:
        probe = (
            "import os, sys\n"
            "from rtt_fabric.client import Client\n"
            "os.setgid(65534); os.setuid(65534)  # after the imports: /root is not readable\n"
            "try:\n"
            "    with Client(sys.argv[1], timeout_s=5) as c:\n"
            "        print(c.receive()['error']['code'])  # refused peers are told at once\n"
            "except PermissionError:\n"
            "    print('EACCES')\n"
        )
        args = [sys.executable, "-c", probe, str(node.socket)]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        # The socket is 0600: another uid cannot even connect.
        done = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
        assert done.stdout.strip() == "EACCES", done.stderr
        # Opened up by hand, the daemon still refuses the peer by its SO_PEERCRED uid.
        os.chmod(node.socket, 0o666)
        done = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
        assert done.stdout.strip() == "forbidden", done.stderr
        with node.client() as c:  # and the daemon is unharmed
            assert c.call("status")["epoch"] == 0
    finally:
        assert node.stop() == 0
        shutil.rmtree(reachable, ignore_errors=True)


def test_a_late_prepare_after_a_presumed_abort_is_refused(daemon):
    _register(daemon)
    with daemon.client() as c:
        assert c.call("abort", txid="t9")["result"] == "not prepared"
        vote = c.call("prepare", txid="t9", plan_id=PLAN, steps=[{"op": "add", "link": link(A, B)}])
        assert vote["vote"] == "nack"
        assert "already decided (abort)" in vote["reason"]
        assert c.call("status")["in_doubt"] == []


def test_the_shm_budget_counts_what_a_batch_frees(tmp_path, coordinator):
    one_ring = graph.ring_bytes(1000, 10)  # the rings of link() below
    node = Daemon(tmp_path, coordinator=coordinator.path, shm_mb=1).start()
    try:
        with node.client() as c:
            c.call("register", service="svc", symbols=[symbol(A), symbol(B), symbol(C)])
            filler = [{"op": "add", "link": link(f"rtt://d/api/f{i}", B)}
                      for i in range((1 << 20) // one_ring - 1)]
            c.call("register", service="fill", symbols=[symbol(s["link"]["from"]) for s in filler])
            c.call("prepare", txid="t0", plan_id=PLAN, steps=filler)
            c.call("commit", txid="t0")
            c.call("prepare", txid="t1", plan_id=PLAN, steps=[{"op": "add", "link": link(A, B)}])
            c.call("commit", txid="t1")
            assert c.call("status")["shm_used"] == 1 << 20  # full
            changed = {**link(A, B), "qos": {**link(A, B)["qos"], "backpressure": "nack"}}
            update = [{"op": "update", "link": changed, "old": link(A, B)}]
            assert c.call("prepare", txid="t2", plan_id=PLAN, steps=update)["vote"] == "ack"
            c.call("commit", txid="t2")
            swap = [{"op": "del", "link": changed}, {"op": "add", "link": link(C, B)}]
            assert c.call("prepare", txid="t3", plan_id=PLAN, steps=swap)["vote"] == "ack"
            c.call("commit", txid="t3")
            more = [{"op": "add", "link": link(A, C, lane="shm")}]
            vote = c.call("prepare", txid="t4", plan_id=PLAN, steps=more)
            assert vote["vote"] == "nack"
            assert "shm budget" in vote["reason"]
    finally:
        assert node.stop() == 0
