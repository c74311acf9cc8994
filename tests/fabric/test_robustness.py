"""Bad input and long runs: fuzzed control messages never crash the daemon or change its graph,
and thousands of protocol cycles leak no fds, threads or memory."""

from __future__ import annotations

import contextlib
import struct

import orjson
import psutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtt_fabric import protocol
from tests.fabric.conftest import PLAN, Daemon, link, symbol

A, B = "rtt://d/api/a", "rtt://d/api/b"
OPS = ["register", "unregister", "prepare", "commit", "abort", "resolve", "get_graph",
       "get_stats", "status", "bogus"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats()
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
MESSAGES = st.one_of(
    st.binary(max_size=200),  # not JSON at all
    JSON.map(orjson.dumps),  # JSON, but not a request
    st.fixed_dictionaries({"op": st.sampled_from(OPS)},
                          optional={"id": JSON, "txid": JSON, "steps": JSON, "symbols": JSON,
                                    "service": JSON, "plan_id": JSON, "from": JSON}
                          ).map(orjson.dumps),
    st.just(orjson.dumps({"op": "prepare", "txid": "x", "plan_id": PLAN,
                          "steps": [{"op": "add", "link": {**link(A, B), "lane": "warp"}}]})),
)


def _state(daemon: Daemon) -> tuple[str, int]:
    with daemon.client() as c:
        status = c.call("status")
    return status["graph_hash"], status["epoch"]


def test_fuzzed_messages_never_crash_the_daemon_or_change_the_graph(daemon: Daemon):
    with daemon.client() as c:
        c.call("register", service="svc", symbols=[symbol(A), symbol(B)])
        c.call("prepare", txid="t0", plan_id=PLAN, steps=[{"op": "add", "link": link(A, B)}])
        c.call("commit", txid="t0")
    before = _state(daemon)
    conn = [daemon.client(timeout_s=5)]

    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=MESSAGES, lie=st.sampled_from([None, None, None, "short", "huge"]))
    def probe(body: bytes, lie: str | None) -> None:
        try:
            if lie == "short":  # a frame cut off mid-body, then the peer goes away
                conn[0].send_raw(struct.pack(">I", len(body) + 7) + body)
                raise ConnectionError("hung up on purpose")
            if lie == "huge":  # a length over the limit: an error reply, then a closed stream
                conn[0].send_raw(struct.pack(">I", protocol.MAX_FRAME + 1 + len(body)))
                assert conn[0].receive()["error"]["code"] == "oversized"
                raise ConnectionError("closed by the daemon")
            conn[0].send_raw(struct.pack(">I", len(body)) + body)
            reply = conn[0].receive()
            assert reply["ok"] is False or reply.get("vote") == "nack" or "graph" in reply \
                or "node" in reply or "route" in reply or "result" in reply, reply
        except (ConnectionError, OSError, TimeoutError):
            conn[0].close()
            conn[0] = daemon.client(timeout_s=5)

    try:
        probe()
    finally:
        conn[0].close()
    assert daemon.proc is not None
    assert daemon.proc.poll() is None, daemon.log_text()
    assert _state(daemon) == before


def test_an_oversized_frame_closes_the_connection_with_an_error(daemon: Daemon):
    with daemon.client() as c:
        c.send_raw(struct.pack(">I", protocol.MAX_FRAME + 1))
        reply = c.receive()
        assert reply["error"]["code"] == "oversized"
        with contextlib.suppress(ConnectionError):
            c.receive()
            raise AssertionError("the connection should be closed")
    assert _state(daemon)[1] == 0


def test_two_thousand_cycles_leak_nothing(daemon: Daemon):
    assert daemon.proc is not None
    proc = psutil.Process(daemon.proc.pid)
    samples = []
    with daemon.client() as c:
        for cycle in range(2000):
            c.call("register", service=f"svc{cycle % 7}", symbols=[symbol(A), symbol(B)])
            add = [{"op": "add", "link": link(A, B)}]
            c.call("prepare", txid=f"a{cycle}", plan_id=PLAN, steps=add)
            c.call("commit", txid=f"a{cycle}")
            gone = [{"op": "del", "link": link(A, B)}]
            c.call("prepare", txid=f"d{cycle}", plan_id=PLAN, steps=gone)
            c.call("abort", txid=f"d{cycle}")
            c.call("prepare", txid=f"e{cycle}", plan_id=PLAN, steps=gone)
            c.call("commit", txid=f"e{cycle}")
            c.call("unregister", service=f"svc{cycle % 7}")
            if cycle % 250 == 249:
                samples.append((proc.num_fds(), proc.num_threads(), proc.memory_info().rss))
    fds, threads, rss = zip(*samples, strict=True)
    assert len(set(fds)) == 1, fds
    assert len(set(threads)) == 1, threads
    # After warm-up, memory stays flat: the second half grows by less than 2 MiB.
    assert rss[-1] - rss[len(rss) // 2] < 2 << 20, [r >> 20 for r in rss]
