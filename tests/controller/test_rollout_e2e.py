"""Canary rollouts end to end: the real git CLI, two real node daemons, real publisher and
subscriber processes on the routes the canary adds, and the loop judging windows from the
fabric's flight pages.

One test per scenario: a merged pull request promoted step by step; a slow consumer breaching
its p99 budget and rolled back for good; too few samples and a silent route (inconclusive, never
a pass); a `git revert` on the fast path; a breaker tripped by bad frames.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from rtt_controller.reconcile import telemetry
from tests.controller import loopkit
from tests.controller.loopkit import World, converged_on, running, wait_for
from tests.fabric.conftest import spawn

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
WIDTH = 4
CANARY: dict[str, Any] = {"canary": True, "steps": (50, 100), "batch": 1, "window": 0.5}


@pytest.fixture
def world(tmp_path: Path, make_repo) -> Iterator[World]:
    repo = make_repo("repo")
    loopkit.seed(repo, width=WIDTH, routes=[], **CANARY)
    w = World(tmp_path, repo).start(WIDTH)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def traffic(world: World, tmp_path: Path) -> Iterator[Any]:
    """Start a publisher and a subscriber on route i (edge/out/pI -> edge/in/pI, on n0); they
    wait for the route, then send and drain. All are killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(i: int, *, pub: dict[str, Any] | None = None,
              sub: dict[str, Any] | None = None) -> None:
        n0 = world.daemons["n0"]
        procs.append(spawn(n0, "sub", tmp_path / f"sub{i}.json", service=f"sub{i}",
                           saddr=f"rtt://edge/in/p{i}", count=10**6, timeout=120,
                           **(sub or {})))
        procs.append(spawn(n0, "pub", tmp_path / f"pub{i}.json", service=f"pub{i}",
                           saddr=f"rtt://edge/out/p{i}", count=10**6, timeout=120,
                           **({"pace_us": 2000} | (pub or {}))))

    def attached(count: int) -> None:
        """Wait until `count` ends are attached on n0 (the services are up)."""
        def check() -> bool:
            with world.daemons["n0"].client() as c:
                return int(c.call("status")["attached"]) >= count
        wait_for(check, what=f"{count} ends attached")

    start.attached = attached  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def _judged(world: World, rev: str) -> dict[str, Any]:
    wait_for(lambda: world.status().get("judged_revision") == rev
             or converged_on(world, rev)(), timeout_s=60, what=f"{rev[:12]} judged\n"
             + loopkit.dump(world))
    return world.status()


def _entry(world: World, rev: str) -> Any:
    return next(e for e in reversed(world.history()) if e.revision == rev
                and e.outcome in ("promoted", "rolled-back"))


def test_1_a_merged_pull_request_is_promoted_step_by_step(world: World, traffic) -> None:
    traffic(0)
    traffic(1)
    repo = world.repo
    loopkit.git(repo.path, "checkout", "-q", "-b", "feature")
    loopkit.push_routes(repo, [(0, "shm"), (1, "shm")], "two routes, on a branch")
    loopkit.git(repo.path, "checkout", "-q", "main")
    reader = InMemoryMetricReader()
    with running(world, otel=telemetry.Telemetry(metric_readers=[reader])):
        wait_for(converged_on(world, loopkit.head(repo)), what="the seed")
        loopkit.git(repo.path, "merge", "-q", "--no-ff", "-m", "merge feature", "feature")
        merged = loopkit.head(repo)
        status = _judged(world, merged)
    assert status["phase"] == "converged", status["last_error"]
    entry = _entry(world, merged)
    assert entry.outcome == "promoted"
    assert [(s["percent"], s["batches"], s["outcome"]) for s in entry.canary] == [
        (50, 1, "passed"), (100, 2, "passed")]
    last = entry.canary[-1]["windows"][-1]
    assert last["verdict"] == "pass"
    assert world.observed_hash() == status["desired_graph_hash"]
    # The rollout's metrics: verdicts by verdict, the step judged, promotions.
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {m.name: m.data for rm in data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics}
    verdicts = {dict(p.attributes or {})["verdict"]: p.value
                for p in metrics["rtt.gate.verdicts"].data_points}
    assert verdicts.get("pass", 0) >= 2  # one per step at least
    assert metrics["rtt.promotions"].data_points[0].value == 1
    assert metrics["rtt.canary.step"].data_points[0].value == 100  # the last step judged


def test_2_a_slow_consumer_breaches_p99_and_the_revision_is_rolled_back_for_good(
        world: World, traffic) -> None:
    traffic(0, sub={"slow_ms": 25})  # drains every 25 ms: p99 well over the 10 ms budget
    with running(world):
        before = world.observed_hash()
        rev = loopkit.push_routes(world.repo, [(0, "shm")], "a route to a slow consumer")
        status = _judged(world, rev)
        time.sleep(1.5)  # three resyncs: the judged revision is not applied again
        applies = [e for e in world.history() if e.revision == rev
                   and e.outcome in ("promoted", "rolled-back")]
    assert status["phase"] == "rolled-back"
    assert "p99" in status["last_error"]
    assert "over the budget 10000 µs" in status["last_error"]
    assert len(applies) == 1
    assert world.observed_hash() == before
    verdicts = [w["verdict"] for step in applies[0].canary for w in step["windows"]]
    assert verdicts[-1] == "fail"


@pytest.mark.parametrize(("case", "expected"), [("few", "fewer than 100"),
                                                 ("silent", "silent: no end of it is attached")])
def test_3_too_few_samples_or_a_silent_route_are_inconclusive_never_a_pass(
        world: World, traffic, case: str, expected: str) -> None:
    loopkit.seed(world.repo, width=WIDTH, routes=[], **{**CANARY, "max_windows": 2})
    if case == "few":
        traffic(0, pub={"pace_us": 100_000})  # 10 frames a second: 5 per window, never 100
    with running(world):
        wait_for(converged_on(world, loopkit.head(world.repo)))
        rev = loopkit.push_routes(world.repo, [(0, "shm")], f"a route with {case} traffic")
        status = _judged(world, rev)
    assert status["phase"] == "rolled-back"
    assert "still inconclusive after 2 windows" in status["last_error"]
    entry = _entry(world, rev)
    windows = [w for step in entry.canary for w in step["windows"]]
    assert [w["verdict"] for w in windows] == ["inconclusive", "inconclusive"]
    assert all(expected in w["summary"] for w in windows)


def test_4_git_revert_of_a_promoted_change_takes_the_fast_path(world: World, traffic) -> None:
    loopkit.seed(world.repo, width=WIDTH, routes=[(0, "shm")], **{**CANARY, "fast_revert": True})
    traffic(0)
    traffic(1)
    traffic.attached(4)  # the first apply's canary needs route 0's services up
    with running(world):
        first = loopkit.head(world.repo)
        assert _judged(world, first)["phase"] == "converged"
        first_hash = world.observed_hash()
        second = loopkit.push_routes(world.repo, [(0, "shm"), (1, "uds")], "route 1")
        assert _judged(world, second)["phase"] == "converged"
        loopkit.git(world.repo.path, "revert", "--no-edit", "HEAD")
        reverted = loopkit.head(world.repo)
        status = _judged(world, reverted)
    assert status["phase"] == "converged"
    assert world.observed_hash() == first_hash
    entry = _entry(world, reverted)
    assert entry.outcome == "promoted"
    assert entry.canary == []  # no step judged: the graph was promoted before
    assert entry.desired_graph_hash == _entry(world, first).desired_graph_hash


def test_5_a_breaker_tripped_during_the_canary_rolls_back(world: World, traffic) -> None:
    # Only the breaker can fail this route: its error rate limit is off.
    loopkit.seed(world.repo, width=WIDTH, routes=[],
                 **{**CANARY, "breaker_errors": 5, "max_error_rate": 1.0})
    traffic(0, pub={"sizes": "64,70000"})  # every other frame is too large: an error
    with running(world):
        wait_for(converged_on(world, loopkit.head(world.repo)))
        rev = loopkit.push_routes(world.repo, [(0, "shm")], "a route that breaks")
        status = _judged(world, rev)
    assert status["phase"] == "rolled-back"
    assert "breaker open" in status["last_error"]
    assert world.daemons["n0"].graph()["links"] == []


def test_rtt_apply_canary_runs_the_rollout_on_a_verified_plan(world: World, traffic,
                                                              tmp_path: Path) -> None:
    repo = world.repo
    public = (world.root / "keys" / "controller.pub").read_text().strip()
    repo.write("policies/trust.yaml", "trust:\n  keys:\n    - key_id: controller\n"
               f"      public_key: {public}\n")
    loopkit.push_routes(repo, [(0, "shm"), (1, "shm")], "two routes and a trust policy")
    plans = tmp_path / "plans"
    rtt = [sys.executable, "-m", "rtt_controller.cli.main"]
    signed = subprocess.run([*rtt, "plan", "--repo", str(repo.path), "--out", f"{plans}/",
                             "--sign", "key", "--key", str(world.key), "--format", "json"],
                            capture_output=True, text=True, check=True)
    plan_file = plans / f"{json.loads(signed.stdout)['plan_id']}.json"
    nodes = [f"--node=n{i}={world.daemons[f'n{i}'].socket}" for i in range(2)]
    apply = [*rtt, "apply", str(plan_file), "--repo", str(repo.path), "--canary", "50",
             "--state", str(tmp_path / "by-hand"), *nodes, "--format", "json"]

    # Unsigned, it is refused before anything is sent.
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_bytes(plan_file.read_bytes())
    refused = subprocess.run([*apply[:4], str(unsigned), *apply[5:]], capture_output=True,
                             text=True, check=False)
    assert refused.returncode == 1
    assert "not a verified plan: plan-unsigned" in refused.stderr
    assert world.daemons["n0"].graph()["links"] == []

    traffic(0)
    traffic(1)
    traffic.attached(4)
    done = subprocess.run(apply, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["outcome"] == "promoted"
    history = json.loads(subprocess.run(
        [*rtt, "history", "--state", str(tmp_path / "by-hand"), "--format", "json"],
        capture_output=True, text=True, check=True).stdout)
    steps = history[-1]["canary"]
    assert [(s["percent"], s["outcome"]) for s in steps] == [(50, "passed"), (100, "passed")]
