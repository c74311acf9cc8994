"""The GitOps loop end to end: the real git CLI, two real node daemons, real service processes
publishing over the routes the loop commits, and the loop watching the repository.

One test per scenario of the loop's contract (README, "The GitOps loop").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtt_controller.cli import main as cli
from rtt_fabric import trust
from tests.controller import loopkit
from tests.controller.loopkit import World, converged_on, running, wait_for
from tests.fabric.conftest import report, spawn

pytestmark = pytest.mark.e2e
WIDTH = 6
FIRST = [(0, "shm"), (1, "uds"), (2, "tcp")]
SECOND = [(0, "shm"), (1, "uds"), (2, "tcp"), (3, "shm"), (4, "tcp")]


@pytest.fixture
def world(tmp_path: Path, make_repo) -> Iterator[World]:
    repo = make_repo("repo")
    loopkit.seed(repo, width=WIDTH, routes=[])
    w = World(tmp_path, repo).start(WIDTH)
    try:
        yield w
    finally:
        w.stop()


def _converge(world: World, revision: str, timeout_s: float = 30) -> None:
    wait_for(converged_on(world, revision), timeout_s=timeout_s,
             what=f"converged on {revision[:12]}\n" + loopkit.dump(world))


def test_1_a_push_converges_signed_and_verified(world: World) -> None:
    with running(world):
        _converge(world, loopkit.head(world.repo))
        rev = loopkit.push_routes(world.repo, FIRST, "three routes")
        _converge(world, rev)
    status = world.status()
    assert world.observed_hash() == status["desired_graph_hash"] == status["observed_graph_hash"]
    plan_file = world.state / "plans" / f"{status['applied_plan_id']}.json"
    plan = json.loads(plan_file.read_text())
    assert plan["provenance"]["source"]["commit"] == rev
    assert len(world.daemons["n0"].graph()["links"]) == 3  # two local, n0's end of the tcp one
    # The signature beside it verifies, with the real verifier, against the controller's key.
    public = (world.root / "keys" / "controller.pub").read_text().strip()
    policy = trust.TrustPolicy(keys=(trust.TrustedKey(
        "controller", trust.decode_public_key(public, key_id="controller")),))
    sig = plan_file.with_name(plan_file.name.replace(".json", ".dsse.json"))
    verdict = trust.bind(trust.verify(sig.read_bytes(), policy), plan)
    assert verdict.ok, verdict.problem
    # `rtt verify` says the same from the command line.
    trust_file = world.root / "trust.yaml"
    trust_file.write_text("trust:\n  keys:\n    - key_id: controller\n"
                          f"      public_key: {public}\n")
    assert cli.main(["verify", str(plan_file), "--trust", str(trust_file)]) == 0
    outcomes = [e.outcome for e in world.history()]
    assert outcomes[-1] == "promoted"


def test_2_a_second_push_keeps_traffic_flowing_on_routes_that_stay(world: World,
                                                                   tmp_path: Path) -> None:
    with running(world):
        rev = loopkit.push_routes(world.repo, FIRST, "three routes")
        _converge(world, rev)
        sub_out, pub_out = tmp_path / "sub.json", tmp_path / "pub.json"
        n0 = world.daemons["n0"]
        sub = spawn(n0, "sub", sub_out, service="sub0", saddr="rtt://edge/in/p0",
                    count=20000, timeout=60)
        pub = spawn(n0, "pub", pub_out, service="pub0", saddr="rtt://edge/out/p0",
                    count=20000, pace_us=200, timeout=60)
        time.sleep(1.0)  # traffic is flowing on route 0
        rev2 = loopkit.push_routes(world.repo, SECOND, "two more routes")
        _converge(world, rev2)
        pub_report = report(pub, pub_out, timeout_s=60)
        sub_report = report(sub, sub_out, timeout_s=60)
    assert len(world.daemons["n0"].graph()["links"]) == 5
    # Route 0 stayed: every frame sent arrived, in order, with none lost or repeated.
    assert pub_report["admitted"] == 20000
    assert sub_report["bad"] == 0
    assert sub_report["seqs"] == list(range(20000))


def test_3_git_revert_converges_back_to_the_earlier_graph(world: World) -> None:
    with running(world):
        rev1 = loopkit.push_routes(world.repo, FIRST, "three routes")
        _converge(world, rev1)
        first_hash = world.observed_hash()
        first_plan = world.status()["applied_plan_id"]
        rev2 = loopkit.push_routes(world.repo, SECOND, "two more routes")
        _converge(world, rev2)
        assert world.observed_hash() != first_hash
        loopkit.git(world.repo.path, "revert", "--no-edit", "HEAD")
        rev3 = loopkit.head(world.repo)
        _converge(world, rev3)
    assert world.observed_hash() == first_hash == world.status()["desired_graph_hash"]
    assert world.status()["applied_plan_id"] != first_plan  # planned from the second graph


def test_4_a_nack_in_batch_k_of_n_leaves_the_previous_graph(world: World) -> None:
    with running(world):
        rev1 = loopkit.push_routes(world.repo, FIRST, "three routes")
        _converge(world, rev1)
        before = world.observed_hash()
        # Route 5's subscriber on n1 leaves: n1 will NACK the batch that adds route 5, the last
        # of three (one route per batch below, routes sorted by key).
        with world.daemons["n1"].client() as c:
            c.call("unregister", service="core5")
        loopkit.seed(world.repo, width=WIDTH, batch=1, routes=[
            *FIRST, (3, "shm"), (4, "uds"), (5, "tcp")])
        rev2 = loopkit.head(world.repo)
        wait_for(lambda: world.status().get("judged_revision") == rev2, what="rolled back")
        status = world.status()
    assert status["phase"] == "rolled-back"
    assert "batch 3 of 3" in status["last_error"]
    assert "not registered" in status["last_error"]
    assert world.observed_hash() == before
    last = world.history()[-1]
    assert (last.outcome, last.revision, last.batches) == ("rolled-back", rev2, 2)
    for d in world.daemons.values():
        with d.client() as c:
            assert c.call("status")["in_doubt"] == []


@pytest.mark.parametrize("mode", ["heal", "detect"])
def test_6_drift_made_by_hand_is_healed_or_only_reported(world: World, mode: str) -> None:
    loopkit.seed(world.repo, width=WIDTH, routes=FIRST, drift=mode)
    rev = loopkit.head(world.repo)
    with running(world) as lp:
        _converge(world, rev)
        desired = world.observed_hash()
        # By hand: remove route 0 (an shm link on n0) with a 2PC of our own.
        link = next(x for x in world.daemons["n0"].graph()["links"]
                    if x["from"] == "rtt://edge/out/p0")
        with world.daemons["n0"].client() as c:
            assert c.call("prepare", txid="by-hand", plan_id="sha256-" + "ee" * 32,
                          steps=[{"op": "del", "link": link}])["vote"] == "ack"
            c.call("commit", txid="by-hand")
        assert world.observed_hash() != desired
        lp.wake.set()
        if mode == "heal":
            wait_for(lambda: world.observed_hash() == desired, what="healed")
            wait_for(converged_on(world, rev))
            outcomes = [e.outcome for e in world.history()]
            assert "drift-healing" in outcomes
            assert outcomes[-1] == "promoted (drift)"
        else:
            wait_for(lambda: world.status().get("drift"), what="drift recorded")
            time.sleep(1.5)  # a few resync passes: still only recorded
            assert world.observed_hash() != desired
            outcomes = [e.outcome for e in world.history()]
            assert outcomes.count("drift-detected") == 1  # once per drifted graph
    status = world.status()
    if mode == "detect":
        assert status["drift"]["observed_graph_hash"] == world.observed_hash()
    else:
        assert status["drift"] is None


def test_7_an_invalid_commit_is_reported_and_nothing_is_applied(world: World) -> None:
    with running(world):
        rev1 = loopkit.push_routes(world.repo, FIRST, "three routes")
        _converge(world, rev1)
        before = world.observed_hash()
        world.repo.write("desired/routes/all.yaml", loopkit.routes_yaml(FIRST)
                         + "  - from: rtt://edge/out/p3\n    to: rtt://nowhere/in/x\n")
        bad = world.repo.commit("a route to a symbol nobody offers")
        wait_for(lambda: world.status().get("judged_revision") == bad, what="rejected")
        time.sleep(1.2)  # resync passes do not retry it
        status = world.status()
        history = world.history()
    assert status["phase"] == "failed"
    assert "desired/routes/all.yaml:" in status["last_error"]
    assert "nowhere" in status["last_error"]
    assert world.observed_hash() == before
    assert [e.outcome for e in history].count("invalid") == 1
    assert status["applied_plan_id"] == next(
        e.plan_id for e in reversed(history) if e.outcome == "promoted")


def test_the_loop_follows_a_remote_by_fetching(world: World, tmp_path: Path) -> None:
    url = f"file://{world.repo.path}"
    with running(world, repo=url, resync_s=0.2):
        rev = loopkit.push_routes(world.repo, FIRST, "three routes")
        _converge(world, rev)
    assert (world.state / "source.git" / "HEAD").exists()


def test_a_burst_of_commits_is_coalesced(world: World) -> None:
    with running(world):
        _converge(world, loopkit.head(world.repo))
        for n in range(1, 6):
            loopkit.push_routes(world.repo, SECOND[:n], f"burst {n}")
        last = loopkit.head(world.repo)
        _converge(world, last)
    applied = [e for e in world.history() if e.outcome == "promoted"]
    assert applied[-1].revision == last
    assert len(applied) < 5  # the burst cost fewer applies than commits



def test_6b_a_node_restarted_without_its_state_is_healed(world: World) -> None:
    with running(world) as lp:
        rev = loopkit.push_routes(world.repo, FIRST, "three routes")
        _converge(world, rev)
        desired = world.observed_hash()
        loopkit.lose_state(world.daemons, "n1", WIDTH)
        assert world.observed_hash() != desired
        lp.wake.set()
        wait_for(lambda: world.observed_hash() == desired, what="healed\n" + loopkit.dump(world))
    assert "drift-healing" in [e.outcome for e in world.history()]
    assert len(world.daemons["n1"].graph()["links"]) == 1  # its end of the tcp route is back
