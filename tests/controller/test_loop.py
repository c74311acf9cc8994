"""The loop's parts and its command line: backoff, the exporter switch, traces and metrics,
transient failures, strict nodes, `rtt controller run` and `rtt up`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rtt_controller.reconcile import loop, telemetry
from rtt_controller.signing import keys
from tests.conftest import ROOT
from tests.controller import loopkit
from tests.controller.loopkit import World, converged_on, running, wait_for

ROUTES = [(0, "shm"), (1, "uds"), (2, "tcp")]


def test_backoff_doubles_with_full_jitter_up_to_its_cap_and_resets() -> None:
    b = loop.Backoff(0.1, 1.0, rng=random.Random(7))
    delays = [b.next() for _ in range(8)]
    ceilings = [min(1.0, 0.1 * 2 ** i) for i in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 1.0
    b.reset()
    assert b.next() <= 0.1


def test_the_exporter_is_off_unless_a_flag_or_the_environment_asks() -> None:
    assert telemetry.chosen(None, {}) is telemetry.Exporter.OFF
    assert telemetry.chosen(None, {"RTT_OTEL": "otlp"}) is telemetry.Exporter.OTLP
    assert telemetry.chosen("console", {"RTT_OTEL": "otlp"}) is telemetry.Exporter.CONSOLE
    with pytest.raises(ValueError, match="'zipkin': the exporter must be one of off"):
        telemetry.chosen("zipkin", {})


def test_the_otlp_exporter_can_be_built() -> None:
    otel = telemetry.Telemetry(telemetry.Exporter.OTLP)
    otel.shutdown()  # nothing listens on :4318; shutting down must not hang or raise


@pytest.fixture
def world(tmp_path: Path, make_repo) -> Iterator[World]:
    repo = make_repo("repo")
    loopkit.seed(repo, width=4, routes=ROUTES, batch=2)
    w = World(tmp_path, repo).start(4)
    try:
        yield w
    finally:
        w.stop()


@pytest.mark.e2e
def test_each_pass_is_traced_by_phase_and_counted(world: World) -> None:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    otel = telemetry.Telemetry(span_processors=[SimpleSpanProcessor(spans)],
                               metric_readers=[reader])
    lp = loop.Loop(world.settings(), otel=otel)
    stop = threading.Event()
    done = lp.run(stop, until=lambda p: p.outcome is loop.Outcome.PROMOTED)
    assert done is not None
    assert done.outcome is loop.Outcome.PROMOTED
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert {"reconcile", "plan", "sign", "apply"} <= finished.keys()
    root = finished["reconcile"]
    for phase in ("plan", "sign", "apply"):
        assert finished[phase].parent is not None
        assert finished[phase].parent.span_id == root.context.span_id
    assert root.attributes is not None
    assert root.attributes["rtt.outcome"] == "promoted"
    data = reader.get_metrics_data()
    assert data is not None
    values = {m.name: m.data for rm in data.resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics}
    assert values["rtt.batches"].data_points[0].value == 2  # three routes, two per batch
    assert values["rtt.apply.duration"].data_points[0].count == 1
    assert "rtt.rollbacks" not in values  # nothing rolled back, so the counter never moved
    otel.shutdown()


@pytest.mark.e2e
def test_an_unreachable_node_is_retried_with_backoff_until_it_returns(world: World) -> None:
    n1 = world.daemons["n1"]
    n1.stop()
    head = loopkit.head(world.repo)
    with running(world):
        wait_for(lambda: "n1" in str(world.status().get("last_error") or ""),
                 what="the unreachable node reported")
        assert world.status().get("phase") != "converged"
        n1.start()
        wait_for(converged_on(world, head), what="converged once n1 is back")
    assert world.observed_hash() == world.status()["desired_graph_hash"]


def strict_world(tmp_path: Path, repo) -> World:
    """A started world whose nodes run `--strict`, trusting the controller's key only."""
    w = World(tmp_path, repo)
    public = (tmp_path / "keys" / "controller.pub").read_text().strip()
    trust_file = tmp_path / "trust.yaml"
    trust_file.write_text("trust:\n  strict_manifests: false\n  keys:\n"
                          f"    - key_id: controller\n      public_key: {public}\n")
    for d in w.daemons.values():
        d.extra = ("--strict", "--trust", str(trust_file))
    return w.start(4)


@pytest.fixture
def strict(tmp_path: Path, make_repo) -> Iterator[World]:
    repo = make_repo("repo")
    loopkit.seed(repo, width=4, routes=ROUTES)
    w = strict_world(tmp_path, repo)
    try:
        yield w
    finally:
        w.stop()


@pytest.mark.e2e
def test_a_strict_fabric_takes_the_loops_signed_plans_and_refuses_unsigned_ones(
        strict: World) -> None:
    with running(strict, sign_key=None):
        wait_for(lambda: strict.status().get("phase") == "rolled-back", what="refused")
    assert "plan-unsigned" in strict.status()["last_error"]
    strict.repo.commit("the same desired state, a new revision")
    with running(strict):
        wait_for(converged_on(strict, loopkit.head(strict.repo)), what="converged, signed")
    assert strict.observed_hash() == strict.status()["desired_graph_hash"]


@pytest.mark.e2e
def test_a_strict_node_back_without_its_state_is_healed_under_a_signed_repair_plan(
        strict: World) -> None:
    with running(strict) as lp:
        wait_for(converged_on(strict, loopkit.head(strict.repo)), what="converged")
        desired = strict.observed_hash()
        loopkit.lose_state(strict.daemons, "n1", 4)  # n0 now holds the tcp route alone
        assert strict.observed_hash() != desired
        lp.wake.set()
        wait_for(lambda: strict.observed_hash() == desired,
                 what="healed\n" + loopkit.dump(strict))
    # n0 took the removal of its half only under the controller's signed repair plan.
    assert "drift-healing" in [e.outcome for e in strict.history()]
    assert "plan-unsigned" not in str(strict.status().get("last_error") or "")
    assert len(strict.daemons["n1"].graph()["links"]) == 1


@pytest.mark.e2e
def test_rtt_controller_run_once_converges_and_a_second_controller_is_refused(
        world: World) -> None:
    argv = [sys.executable, "-m", "rtt_controller.cli.main", "controller", "run",
            "--repo", str(world.repo.path), "--state", str(world.state), "--once",
            "--sign-key", str(world.key), "--format", "json",
            *[f"--fabric={d.socket}" for d in world.daemons.values()]]  # names asked of nodes
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    passes = [json.loads(line) for line in done.stdout.splitlines()]
    assert passes[-1]["outcome"] == "promoted"
    assert passes[-1]["revision"] == loopkit.head(world.repo)
    # While one controller holds the state directory, another is refused, saying why.
    with running(world):
        wait_for(converged_on(world, loopkit.head(world.repo)))
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 2
    assert "another controller is using this state directory" in second.stderr


@pytest.mark.e2e
def test_rtt_up_runs_the_shipped_example_to_convergence_and_stops(tmp_path: Path) -> None:
    """The README's first command (`make run` runs `rtt up`)."""
    work = tmp_path / "up"
    done = subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "up",
                           "--workdir", str(work), "--format", "json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    first_pass = json.loads(lines[0])
    status = json.loads("\n".join(lines[1:]))
    assert first_pass["outcome"] == "promoted"
    assert status["phase"] == "converged"
    assert status["observed_graph_hash"] == status["desired_graph_hash"]
    # Everything it started has stopped: no daemon holds its socket any more.
    for node in ("node-a", "node-b"):
        log = (work / "fabric" / node / "daemon.log").read_text()
        assert "serving on" in log
    leftovers = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True,
                               check=False)
    assert leftovers.stdout.strip() == ""


def _publish(repo_path: Path, files: list[Path], branch: str = "rtt-plans") -> None:
    """What the merge workflow does: commit signed plans to the signatures branch (here with
    git plumbing, so main's work tree is never touched)."""
    env_index = repo_path / ".git" / "rtt-plans-index"
    env = {"GIT_INDEX_FILE": str(env_index)}

    def run(*args: str, data: bytes | None = None) -> str:
        return subprocess.run(["git", "-C", str(repo_path), *args], input=data,
                              capture_output=True, check=True,
                              env={**os.environ, **env, "GIT_AUTHOR_NAME": "ci",
                                   "GIT_AUTHOR_EMAIL": "ci@example.invalid",
                                   "GIT_COMMITTER_NAME": "ci",
                                   "GIT_COMMITTER_EMAIL": "ci@example.invalid"}
                              ).stdout.decode().strip()

    parent = subprocess.run(["git", "-C", str(repo_path), "rev-parse", "-q", "--verify",
                             f"refs/heads/{branch}"], capture_output=True, text=True,
                            check=False).stdout.strip()
    if parent:
        run("read-tree", parent)
    else:
        run("read-tree", "--empty")
    for f in files:
        blob = run("hash-object", "-w", "--stdin", data=f.read_bytes())
        run("update-index", "--add", "--cacheinfo", f"100644,{blob},plans/{f.name}")
    tree = run("write-tree")
    commit = run("commit-tree", tree, *(["-p", parent] if parent else []), "-m", "signed plans")
    run("update-ref", f"refs/heads/{branch}", commit)


@pytest.mark.e2e
def test_plans_signed_by_ci_on_a_branch_are_verified_and_applied_by_strict_nodes(
        tmp_path: Path, make_repo) -> None:
    ci_key, ci_pub = keys.generate("ci", tmp_path / "ci")
    public = ci_pub.read_text().strip()
    repo = make_repo("repo")
    loopkit.seed(repo, width=4, routes=[])
    repo.write("policies/trust.yaml", "trust:\n  strict_manifests: false\n  keys:\n"
               f"    - key_id: ci\n      public_key: {public}\n")
    repo.commit("trust CI's key")
    w = World(tmp_path, repo)
    for d in w.daemons.values():  # the nodes trust CI's key, not the controller's
        d.extra = ("--strict", "--trust", str(repo.path / "policies" / "trust.yaml"))
    w.start(4)
    try:
        with running(w, sign_key=None, signatures="rtt-plans"):
            wait_for(converged_on(w, loopkit.head(repo)), what="the seed (nothing to sign)")
            merged = loopkit.push_routes(repo, ROUTES, "three routes")
            wait_for(lambda: "waiting for CI" in str(w.status().get("last_error")),
                     what="waiting for CI's signature")
            # CI plans the merge against the previous revision and signs it.
            out = tmp_path / "ci-plans"
            done = subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "plan",
                                   "--repo", str(repo.path), "--rev", merged, "--base",
                                   f"{merged}~1", "--out", f"{out}/", "--sign", "key",
                                   "--key", str(ci_key)], capture_output=True, text=True,
                                  check=False)
            assert done.returncode == 0, done.stderr
            _publish(repo.path, sorted(out.iterdir()))
            wait_for(converged_on(w, merged), what="converged on CI's plan\n" + loopkit.dump(w))
            status = w.status()
            plan = w.state / "plans" / f"{status['applied_plan_id']}.json"
            assert plan.with_name(plan.name.replace(".json", ".dsse.json")).exists()

            # A tampered signature is refused: the revision is judged, nothing applied.
            before = w.observed_hash()
            second = loopkit.push_routes(repo, ROUTES[:1], "one route")
            out2 = tmp_path / "ci-plans-2"
            subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "plan",
                            "--repo", str(repo.path), "--rev", second, "--base", f"{second}~1",
                            "--out", f"{out2}/", "--sign", "key", "--key", str(ci_key)],
                           capture_output=True, check=True)
            sig = next(out2.glob("*.dsse.json"))
            data = json.loads(sig.read_text())
            data["signatures"][0]["sig"] = data["signatures"][0]["sig"][:-4] + "AAA="
            sig.write_text(json.dumps(data))
            _publish(repo.path, sorted(out2.iterdir()))
            wait_for(lambda: w.status().get("judged_revision") == second, what="refused")
            assert "signature-invalid" in w.status()["last_error"]
            assert w.observed_hash() == before
    finally:
        w.stop()


@pytest.mark.e2e
def test_sigterm_stops_a_sleeping_controller_promptly(world: World) -> None:
    argv = [sys.executable, "-m", "rtt_controller.cli.main", "controller", "run",
            "--repo", str(world.repo.path), "--state", str(world.state), "--resync", "30s",
            "--sign-key", str(world.key), "--format", "json",
            *[f"--fabric={d.socket}" for d in world.daemons.values()]]
    log = world.root / "controller.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    try:
        wait_for(converged_on(world, loopkit.head(world.repo)), what="converged")
        time.sleep(0.5)  # now asleep until the next resync, 30 s away
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()
    assert took < 3.0
    assert "SIGTERM: stopping after the current step" in log.read_text()


@pytest.mark.e2e
def test_strict_nodes_take_the_rollback_of_a_signed_plan(tmp_path: Path, make_repo) -> None:
    """A signed plan vouches for its own undoing: when batch 2 is refused, strict n0 takes the
    inverse of batch 1 and the fabric ends exactly where it started."""
    repo = make_repo("repo")
    loopkit.seed(repo, width=4, routes=[], batch=1)
    w = strict_world(tmp_path, repo)
    try:
        with w.daemons["n1"].client() as c:  # route 1's far end is gone: n1 refuses batch 2
            c.call("unregister", service="core1")
        with running(w):
            wait_for(converged_on(w, loopkit.head(repo)), what="the seed")
            before = w.observed_hash()
            rev = loopkit.push_routes(repo, [(0, "shm"), (1, "tcp")], "two routes")
            wait_for(lambda: w.status().get("judged_revision") == rev, what="rolled back\n"
                     + loopkit.dump(w))
        status = w.status()
        assert status["phase"] == "rolled-back", status["last_error"]
        assert "batch 2 of 2" in status["last_error"]
        assert w.observed_hash() == before
        assert w.daemons["n0"].graph()["links"] == []
    finally:
        w.stop()


class Counting:
    """A node that records whether each PREPARE carried the signed plan, and can restart its
    daemon (forgetting the plans it held) before the nth PREPARE."""

    def __init__(self, node: Any, daemon: Any, restart_before: int = 0) -> None:
        self.name, self._node, self._daemon = node.name, node, daemon
        self.restart_before, self.prepares = restart_before, 0
        self.carried: list[tuple[bool, str]] = []

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        if op == "prepare":
            self.prepares += 1
            if self.prepares == self.restart_before:
                self._daemon.stop()
                self._daemon.start()
        reply = self._node.call(op, **fields)
        if op == "prepare":
            self.carried.append(("plan" in fields, str(reply.get("vote"))))
        return reply


@pytest.mark.e2e
def test_the_signed_plan_goes_with_a_nodes_first_prepare_only_and_again_if_forgotten(
        tmp_path: Path, make_repo) -> None:
    repo = make_repo("repo")
    loopkit.seed(repo, width=4, routes=[], batch=1)
    w = strict_world(tmp_path, repo)
    try:
        n0 = Counting(w.nodes()["n0"], w.daemons["n0"], restart_before=3)
        with running(w, nodes={"n0": n0, "n1": w.nodes()["n1"]}):
            wait_for(converged_on(w, loopkit.head(repo)), what="the seed")
            rev = loopkit.push_routes(repo, [(0, "shm"), (1, "uds"), (2, "shm")], "3 batches")
            wait_for(converged_on(w, rev), what="converged\n" + loopkit.dump(w))
        # Batch 1 carries the plan; batch 2 does not need to; n0 restarts before batch 3,
        # forgets the plan, refuses the bare PREPARE and takes it with the plan attached.
        assert n0.carried == [(True, "ack"), (False, "ack"), (False, "nack"), (True, "ack")]
        assert w.observed_hash() == w.status()["desired_graph_hash"]
    finally:
        w.stop()
