"""The SDK walk-through of docs/sdk.md, run as written: a real daemon and real service processes.

The test reads the shell block that docs/sdk.md marks as tested and runs its commands one by one,
as a shell would: `&` starts a background job, `kill %N` stops job N, anything else runs in the
foreground and must exit 0. `$RTT_DEMO` is a temporary directory, `rtt` and `python` are this
virtualenv's. It then holds the run to the output the document promises (every sample arrived
intact and in order) and to the route's flight page as the daemon counts it.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rtt_fabric.client import Client

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "sdk.md"
MARKER = "<!-- tests/fabric/test_sdk_example.py runs this block -->"
COUNT = 500

pytestmark = pytest.mark.e2e


def fenced_block(text: str, marker: str) -> list[str]:
    """The command lines of the fenced block that follows `marker`."""
    after = text.split(marker, 1)[1].lstrip().splitlines()
    assert after[0].startswith("```"), "the marker must sit right above a fenced block"
    end = after.index("```", 1)
    return [line for line in after[1:end] if line.strip() and not line.startswith("#")]


def expected_output(text: str) -> list[str]:
    """The lines of the block the document shows as the dashboard's output."""
    after = text.split("The dashboard prints:", 1)[1].lstrip().splitlines()
    return after[1:after.index("```", 1)]


def argv_of(line: str, demo: Path) -> list[str]:
    argv = [word.replace("$RTT_DEMO", str(demo)) for word in shlex.split(line)]
    programs = {"rtt": str(Path(sys.executable).with_name("rtt")), "python": sys.executable}
    return [programs.get(argv[0], argv[0]), *argv[1:]]


def flight(socket_path: Path) -> dict[str, int]:
    with Client(socket_path, timeout_s=5) as client:
        (route,) = client.call("flight")["routes"]
    counters: dict[str, int] = route["counters"]
    return counters


def test_the_documented_example_delivers_every_sample_intact(tmp_path: Path) -> None:
    text = DOC.read_text()
    lines = fenced_block(text, MARKER)
    jobs: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []

    def log() -> str:
        return "\n".join(f"--- {out.name}\n{out.read_text(errors='replace')}" for out in outputs)

    try:
        for number, line in enumerate(lines, 1):
            words = shlex.split(line)
            if words[0] == "kill":
                (job,) = (jobs[int(w.lstrip("%")) - 1] for w in words[1:])
                # The daemon still holds the route: check its count before stopping it.
                counters = flight(tmp_path / "fabric.sock")
                assert counters["rx_frames"] == COUNT, counters
                assert counters["crc_errors"] == counters["drops"] == 0, counters
                assert counters["oversize"] == counters["nacked"] == 0, counters
                job.send_signal(signal.SIGTERM)
                assert job.wait(10) == 0, log()
                continue
            background = words[-1] == "&"
            argv = argv_of(line.rstrip("& "), tmp_path)
            out = tmp_path / f"{number}.{Path(argv[1]).stem}.{argv[2]}.log"
            outputs.append(out)
            with out.open("wb") as sink:
                proc = subprocess.Popen(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
            if background:
                jobs.append(proc)
            else:
                assert proc.wait(20) == 0, log()
        for job in jobs:
            assert job.wait(10) == 0, log()
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.wait()

    (dashboard,) = [out for out in outputs if out.name.endswith(".dashboard.log")]
    (metrics,) = [out for out in outputs if out.name.endswith(".metrics.log")]
    got = dashboard.read_text().splitlines()
    promised = expected_output(text)
    assert got == promised, log()
    assert got[-1] == (f"dashboard: {COUNT} samples from rtt://metrics/out/cpu, "
                       f"frame ids 0..{COUNT - 1} in order, all intact")
    assert f"metrics: sent {COUNT} samples on 1 route(s), {COUNT} admitted" in metrics.read_text()
