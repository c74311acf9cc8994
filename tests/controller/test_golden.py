"""Golden plans: each folder under tests/golden holds an input and the plan it must give.

Regenerate after an intended planner change with `RTT_UPDATE_GOLDEN=1 pytest tests/controller/
test_golden.py`, then review the diff of expected.json like any other change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rtt_controller import solvers
from rtt_controller.core import inventory, planner
from rtt_controller.core.plan import Provenance
from rtt_controller.source import directory
from rtt_controller.source.snapshot import ParseCache
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden"
CASES = {"example": ROOT} | {p.name: p for p in sorted(GOLDEN.iterdir()) if p.is_dir()}
ORIGIN = Provenance(repo=None, commit=None, created_at=None, backend="")


def _summary(root: Path) -> dict:
    snap = directory.snapshot(root, ParseCache())
    result = planner.make_plan(snap.files, base=inventory.EMPTY, solve=solvers.solver("cbc"),
                               backend="cbc", origin=ORIGIN)
    c = result.plan.content
    return {
        "plan_id": result.plan.plan_id,
        "desired_graph_hash": c["desired_graph_hash"],
        "objective": c["objective"],
        "placement": dict(sorted(result.desired.assignment.placement.items())),
        "links": [f"{link['from']} -> {link['to']} {link['class']} {link['lane']}"
                  for link in c["routes_add"]],
        "batches": c["batches"],
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_plan(case):
    expected_file = GOLDEN / f"{case}.expected.json"
    actual = _summary(CASES[case])
    if os.environ.get("RTT_UPDATE_GOLDEN"):
        expected_file.write_text(json.dumps(actual, indent=2) + "\n", encoding="utf-8")
    assert actual == json.loads(expected_file.read_text(encoding="utf-8"))
