"""End to end through the installed `rtt` script and the real git CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import git

pytestmark = pytest.mark.e2e
# The script installed beside this interpreter, so the test runs what `pip install` put there.
RTT = shutil.which("rtt", path=str(Path(sys.executable).parent))


def rtt(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    assert RTT, "the rtt console script is not installed in this environment"
    return subprocess.run([RTT, *args], capture_output=True, text=True, cwd=cwd)


def test_plan_writes_a_plan_that_show_reads_back(example_repo, tmp_path):
    out = tmp_path / "plans" / "p.json"
    done = rtt("plan", "--repo", str(example_repo.path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    plan = json.loads(out.read_text())
    assert plan["plan_id"].startswith("sha256-")
    assert plan["sign"] is None
    assert plan["provenance"]["created_at"] == "2026-01-02T03:04:05Z"
    shown = rtt("show", str(out), "--format", "json")
    assert json.loads(shown.stdout)["plan_id"] == plan["plan_id"]
    text = rtt("show", str(out)).stdout
    assert text.startswith(f"plan {plan['plan_id']}")
    assert "+ rtt://ui/hook/refresh -> rtt://core/api/metrics [p2p, shm]" in text


def test_out_into_a_folder_names_the_file_by_plan_id(example_repo, tmp_path):
    done = rtt("plan", "--repo", str(example_repo.path), "--out", f"{tmp_path}/plans/",
               "--format", "json")
    plan_id = json.loads(done.stdout)["plan_id"]
    assert json.loads((tmp_path / "plans" / f"{plan_id}.json").read_text())["plan_id"] == plan_id


def test_show_rejects_a_tampered_plan(example_repo, tmp_path):
    out = tmp_path / "p.json"
    rtt("plan", "--repo", str(example_repo.path), "--out", str(out))
    plan = json.loads(out.read_text())
    first = plan["content"]["routes_add"][0]
    first["lane"] = "uds" if first["lane"] == "tcp" else "tcp"
    out.write_text(json.dumps(plan))
    done = rtt("show", str(out))
    assert done.returncode == 1
    assert "plan_id does not match" in done.stderr


def test_diff_renders_a_pull_request_comment(example_repo):
    base = git(example_repo.path, "rev-parse", "HEAD")
    routes = example_repo.path / "desired/routes/backend.yaml"
    text = routes.read_text()
    text = text.replace("throughput_qps: 1000, backpressure: nack}",
                        "throughput_qps: 1500, backpressure: nack}")
    text = text.replace("""  - from: rtt://ingest/hook/reindex
    to: rtt://search/connector/index
    version: ^4
    qos: {latency_budget_ms: 1000, throughput_qps: 10, backpressure: buffer}
""", "")
    routes.write_text(text)
    example_repo.write("desired/routes/new.yaml",
                       "routes:\n  - {from: rtt://core/api/session, to: rtt://auth/api/token}\n")
    example_repo.write("desired/routes/core.yaml",
                       (example_repo.path / "desired/routes/core.yaml").read_text().replace(
                           """  - from: rtt://core/api/session
    to: rtt://cache/api/kv
    version: ^5
    qos: {latency_budget_ms: 5, throughput_qps: 40000}
""", ""))
    example_repo.commit("move session, drop reindex, bump recommend")
    done = rtt("diff", "--repo", str(example_repo.path), "--base", base, "--head", "HEAD",
               "--format", "markdown")
    assert done.returncode == 0, done.stderr
    body = done.stdout
    assert body.startswith(f"### RTT plan: {base} → HEAD")
    for fragment in ("#### Added (1)", "rtt://core/api/session -> rtt://auth/api/token",
                     "#### Removed (2)", "rtt://ingest/hook/reindex",
                     "#### Changed (1)", "throughput_qps': 1000", "#### Batches",
                     "#### Canary (", "judged over 6 s windows", "| 100% |",
                     "**Plan** `sha256-"):
        assert fragment in body


def test_plan_against_an_observed_graph_file(example_repo, tmp_path):
    graph = tmp_path / "graph.json"
    first = rtt("plan", "--repo", str(example_repo.path), "--graph-out", str(graph))
    assert first.returncode == 0
    again = rtt("plan", "--repo", str(example_repo.path), "--observed", str(graph),
                "--format", "json")
    plan = json.loads(again.stdout)
    assert plan["content"]["order"] == []
    assert plan["content"]["base_graph_hash"] == plan["content"]["desired_graph_hash"]
    assert json.loads(graph.read_text())["graph_hash"] == plan["content"]["desired_graph_hash"]


def test_plan_base_rev_equal_to_head_is_empty(example_repo):
    done = rtt("plan", "--repo", str(example_repo.path), "--base", "HEAD")
    assert done.returncode == 0
    assert "no changes" in done.stdout


def test_validate_a_plain_directory(tmp_path, example_repo):
    plain = tmp_path / "plain"
    shutil.copytree(example_repo.path / "desired", plain / "desired")
    shutil.copytree(example_repo.path / "policies", plain / "policies")
    done = rtt("validate", "--repo", str(plain), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["commit"] is None


def test_markdown_plan_of_the_example(example_repo):
    done = rtt("plan", "--repo", str(example_repo.path), "--format", "markdown")
    assert done.returncode == 0
    assert "#### Added (26)" in done.stdout


@pytest.mark.parametrize("content", ["[]", '{"kind": "rtt.graph/v1", "links": [{"from": 1}]}',
                                     "not json"])
def test_a_bad_observed_file_is_a_usage_error(example_repo, tmp_path, content):
    observed = tmp_path / "observed.json"
    observed.write_text(content)
    done = rtt("plan", "--repo", str(example_repo.path), "--observed", str(observed))
    assert done.returncode == 2, done.stderr
    assert "not a graph file" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unwritable_out_path_is_a_usage_error(example_repo, tmp_path):
    (tmp_path / "file").write_text("")
    done = rtt("plan", "--repo", str(example_repo.path), "--out", str(tmp_path / "file" / "p.json"))
    assert done.returncode == 2, done.stderr
    assert "cannot write" in done.stderr


def test_an_untracked_folder_inside_a_repository_is_read_from_disk(example_repo):
    shutil.copytree(example_repo.path / "desired", example_repo.path / "draft" / "desired")
    shutil.copytree(example_repo.path / "policies", example_repo.path / "draft" / "policies")
    done = rtt("validate", "--repo", str(example_repo.path / "draft"), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["commit"] is None
