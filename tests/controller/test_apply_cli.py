"""`rtt apply PLAN`: a planned file applied by the coordinator to a real daemon, from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.fabric.conftest import Coordinator, Daemon

CASE = ROOT / "tests" / "golden" / "capacity"  # one node, n0, as the daemon fixture

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    stub = Coordinator(tmp_path / "stub.sock")  # the node's in-doubt seam; rtt apply has its own
    node = Daemon(tmp_path, coordinator=stub.path).start()
    yield node
    assert node.stop() == 0, node.log_text()
    stub.close()


def rtt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", *args],
                          capture_output=True, text=True, timeout=120)


def register_case(node: Daemon) -> None:
    symbols = yaml.safe_load((CASE / "desired/symbols/s.yaml").read_text())["symbols"]
    with node.client() as c:
        c.call("register", service="feed", symbols=[
            {"saddr": s["saddr"], "type": s["type"],
             "versions": s["version"] if isinstance(s["version"], list) else [s["version"]],
             "caps": s["caps"]} for s in symbols])


def test_a_plan_applies_then_reapplying_it_is_refused_and_rolled_back(daemon: Daemon,
                                                                      tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    assert rtt("plan", "--repo", str(CASE), "--out", str(plan_file)).returncode == 0
    desired = json.loads(plan_file.read_text())["content"]["desired_graph_hash"]
    register_case(daemon)
    node = f"n0={daemon.socket}"

    first = rtt("apply", str(plan_file), "--node", node, "--state", str(tmp_path / "c"),
                "--format", "json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["outcome"] == "promoted"
    assert report["observed_graph_hash"] == desired
    with daemon.client() as c:
        assert c.call("status")["graph_hash"] == desired

    # The same plan again: its first batch adds links that are there now, so the node NACKs it
    # and nothing changes.
    again = rtt("apply", str(plan_file), "--node", node, "--state", str(tmp_path / "c"))
    assert again.returncode == 1
    assert "rolled-back after 0 committed batch(es)" in again.stdout
    assert "link already present" in again.stdout
    with daemon.client() as c:
        assert c.call("status")["graph_hash"] == desired

    # Both applies are recorded durably; the status keeps the plan that converged.
    state = ["--state", str(tmp_path / "c"), "--format", "json"]
    status = json.loads(rtt("status", *state).stdout)
    assert status["phase"] == "rolled-back"
    assert status["applied_plan_id"] == report["plan_id"]
    assert "link already present" in status["last_error"]
    history = json.loads(rtt("history", *state).stdout)
    assert [h["outcome"] for h in history] == ["promoted", "rolled-back"]
    assert {h["plan_id"] for h in history} == {report["plan_id"]}
    assert history[0]["batches"] >= 1
    assert history[1]["batches"] == 0


def test_a_node_the_plan_names_but_the_command_does_not_is_a_usage_error(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    assert rtt("plan", "--repo", str(CASE), "--out", str(plan_file)).returncode == 0
    missing = rtt("apply", str(plan_file), "--node", f"elsewhere={tmp_path / 'x.sock'}",
                  "--state", str(tmp_path / "c"))
    assert missing.returncode == 2
    assert "n0" in missing.stderr
    bad = rtt("apply", str(plan_file), "--node", "no-equals-sign")
    assert bad.returncode == 2
    assert "NODE=SOCKET" in bad.stderr


def test_a_signed_plan_applies_to_a_strict_node_and_an_unsigned_one_does_not(
        tmp_path: Path) -> None:
    assert rtt("keys", "generate", "--key-id", "ops", "--out", str(tmp_path)).returncode == 0
    public = (tmp_path / "ops.pub").read_text().strip()
    trust = tmp_path / "trust.yaml"
    trust.write_text(yaml.safe_dump({"trust": {
        "keys": [{"key_id": "ops", "public_key": public}], "strict_manifests": False}}))
    signed, unsigned = tmp_path / "signed" / "plan.json", tmp_path / "unsigned" / "plan.json"
    for out in (signed, unsigned):
        out.parent.mkdir()
    assert rtt("plan", "--repo", str(CASE), "--out", str(signed), "--sign", "key", "--key",
               str(tmp_path / "ops.key")).returncode == 0
    assert rtt("plan", "--repo", str(CASE), "--out", str(unsigned)).returncode == 0
    stub = Coordinator(tmp_path / "stub.sock")
    node = Daemon(tmp_path, coordinator=stub.path, extra=("--strict", "--trust", str(trust)))
    node.start()
    try:
        register_case(node)
        refused = rtt("apply", str(unsigned), "--node", f"n0={node.socket}", "--state",
                      str(tmp_path / "c"))
        assert refused.returncode == 1
        assert "plan-unsigned" in refused.stdout
        applied = rtt("apply", str(signed), "--node", f"n0={node.socket}", "--state",
                      str(tmp_path / "c"), "--format", "json")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert json.loads(applied.stdout)["outcome"] == "promoted"
    finally:
        assert node.stop() == 0, node.log_text()
        stub.close()
