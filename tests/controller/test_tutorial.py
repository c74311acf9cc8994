"""docs/tutorial.md, run as written: `rtt up --keep-running` on the embedded default, then the
tutorial's own git and rtt commands, read out of its shell blocks, with the outcome each section
promises (promoted by the canary, rolled back on a breach, converged after the revert)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.controller.loopkit import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
TUTORIAL = ROOT / "docs" / "tutorial.md"


def blocks() -> list[list[str]]:
    """The tutorial's ```sh blocks, as lists of commands."""
    found = re.findall(r"```sh\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), re.S)
    return [[line for line in block.splitlines() if line.strip()] for block in found]


def test_the_tutorial_works_on_the_embedded_default(tmp_path: Path) -> None:
    work = tmp_path / "rtt-demo"
    start, env_block, *steps = blocks()
    assert "rtt up --workdir /tmp/rtt-demo --keep-running" in start[0]
    assert any("PATH" in line for line in env_block)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "you", "GIT_AUTHOR_EMAIL": "you@example.invalid",
           "GIT_COMMITTER_NAME": "you", "GIT_COMMITTER_EMAIL": "you@example.invalid"}
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "rtt_controller.cli.main", "up",
                               "--workdir", str(work), "--keep-running"], cwd=ROOT,
                              stdout=out, stderr=out, env=env)
    state = work / "controller"

    def status() -> dict[str, object]:
        path = state / "status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def run(block: list[str]) -> str:
        script = "\n".join(line.replace("/tmp/rtt-demo", str(work)) for line in block)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work / "repo",
                              capture_output=True, text=True, env=env, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def settled(outcome: str) -> None:
        head = subprocess.run(["git", "-C", str(work / "repo"), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        wait_for(lambda: status().get("watched_revision") == head
                 and status().get("phase") == outcome, timeout_s=90,
                 what=f"{outcome} at {head[:12]}\n" + log.read_text(errors="replace"))

    try:
        wait_for(lambda: status().get("phase") == "converged", timeout_s=120,
                 what="the first converge\n" + log.read_text(errors="replace"))
        branch, merge, status_cmds, breach, revert = steps
        plan = run(branch)  # 2: a change on a branch, and its plan
        assert "#### Changed (1)" in plan
        assert "#### Canary (1 step" in plan
        run(merge)  # 3: merged, promoted by the canary
        settled("converged")
        history = run(status_cmds)
        assert "canary 100%: passed" in history
        run(breach)  # 4: a budget the services cannot meet: rolled back
        settled("rolled-back")
        assert "over the budget 100 µs" in str(status()["last_error"])
        time.sleep(2)
        assert status()["phase"] == "rolled-back"  # and not applied again
        run(revert)  # 5: back where the fabric already is
        settled("converged")
    finally:
        up.send_signal(signal.SIGINT)  # 6: Ctrl-C
        code = up.wait(60)
    assert code == 0, log.read_text(errors="replace")
    leftovers = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True,
                               check=False)
    assert leftovers.stdout.strip() == ""
