"""The epoch flip under traffic: routes that stay lose and repeat nothing while others churn.

A publisher process sends continuously on a route that stays, while the test commits 1,000
batches that each add or remove two other routes: one from the same publisher symbol (its lane
set changes) and one into the same subscriber symbol (its lane set changes). Every flip pushes
new lane sets to both services. The subscriber process checks frame ids and payloads.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fabric.conftest import (
    Daemon,
    commit,
    flight_of,
    link,
    register,
    report,
    spawn,
    wait_file,
)

MAIN, AUX = "rtt://svc/out/main", "rtt://svc/out/aux"
SINK, SIDE = "rtt://svc/in/main", "rtt://svc/in/side"
FLIPS = 1000

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("lane", ["shm", "uds", "tcp"])
def test_a_thousand_epoch_flips_lose_and_repeat_no_frame_on_a_route_that_stays(
        daemon: Daemon, tmp_path: Path, lane: str) -> None:
    register(daemon, "sender", MAIN, AUX)
    register(daemon, "receiver", SINK, SIDE)
    stays = link(MAIN, SINK, lane=lane, cls="bus", qps=1_000_000, backpressure="buffer")
    churn = [link(MAIN, SIDE, lane="shm", cls="bus"), link(AUX, SINK, lane=lane)]
    commit(daemon, "base", [{"op": "add", "link": stays}])

    ready, until = tmp_path / "ready", tmp_path / "until"
    sub = spawn(daemon, "sub", tmp_path / "sub.json", service="receiver", saddr=SINK,
                count=10**9, ready=ready, until=until, timeout=600, also=SIDE)
    wait_file(ready, sub)
    pub = spawn(daemon, "pub", tmp_path / "pub.json", service="sender", saddr=MAIN,
                count=10**9, until=until, pace_us=0, also=AUX)
    start = time.monotonic()
    while flight_of(daemon, MAIN, SINK)["counters"]["rx_frames"] < 100:
        assert time.monotonic() - start < 20, "no traffic on the route that stays"
        time.sleep(0.01)

    for flip in range(FLIPS):
        op = "add" if flip % 2 == 0 else "del"
        commit(daemon, f"flip-{flip}", [{"op": op, "link": item} for item in churn])
    # The attach plus one lane set per flip: each service waits until it has installed them all.
    partial = tmp_path / "until.partial"
    partial.write_text(f"stop {FLIPS + 1}")
    partial.rename(until)  # the services poll for the file: it must appear whole
    sent = report(pub, tmp_path / "pub.json", timeout_s=180)
    got = report(sub, tmp_path / "sub.json", timeout_s=180)

    assert sent["sent"] > 10 * FLIPS  # traffic ran throughout, not between flips
    assert sent["generations"] > FLIPS  # the publisher saw every flip (plus its attach)
    assert got["generations"] > FLIPS
    assert sent["refused"] == sent["oversize"] == 0
    assert got["bad"] == 0
    # Every frame offered on the route that stays arrived once, in order, ids unbroken.
    assert got["seqs"] == list(range(sent["sent"])), "lost, repeated or reordered frames"
    assert got["frame_ids"] == list(range(sent["sent"]))
    assert got["senders"] == [MAIN]
