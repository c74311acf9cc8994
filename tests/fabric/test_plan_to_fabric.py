"""A plan from `rtt plan`, applied batch by batch to a real daemon, yields an observed graph whose
hash is the plan's desired graph hash: both sides hash with rtt_fabric.graph."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import ROOT
from tests.fabric.conftest import Daemon


def test_the_observed_hash_equals_the_planned_hash(daemon: Daemon, tmp_path):
    case = ROOT / "tests" / "golden" / "capacity"  # one node, n0, as the daemon fixture
    plan_file = tmp_path / "plan.json"
    subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "plan", "--repo", str(case),
                    "--out", str(plan_file), "--format", "json"], check=True,
                   capture_output=True)
    plan = json.loads(plan_file.read_text())
    content = plan["content"]
    symbols = yaml.safe_load((case / "desired/symbols/s.yaml").read_text())["symbols"]
    with daemon.client() as c:
        c.call("register", service="feed", symbols=[
            {"saddr": s["saddr"], "type": s["type"],
             "versions": s["version"] if isinstance(s["version"], list) else [s["version"]],
             "caps": s["caps"]} for s in symbols])
        for n, batch in enumerate(content["batches"]):
            wire = []
            for step_id in batch:
                step = content["steps"][step_id]
                section, index = step["ref"].split("/")
                wire.append({"op": step["op"], "link": content[section][int(index)]})
            txid = f"{plan['plan_id'][:15]}.{n}"
            vote = c.call("prepare", txid=txid, plan_id=plan["plan_id"], steps=wire)
            assert vote["vote"] == "ack", vote
            c.call("commit", txid=txid)
        observed = c.call("status")["graph_hash"]
    assert observed == content["desired_graph_hash"]
