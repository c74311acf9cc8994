"""The controller's durable record: the current status and the history of applies, in its state dir.

`history.jsonl` gets one line per finished apply (appended, then fsynced); `status.json` is
rewritten whole at each phase change (written to a temporary file, fsynced, renamed), so a crash
leaves the old status or the new one, never half of either. `rtt status` and `rtt history` read
them. Called by `rtt apply` and, next, by the reconcile loop.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

HISTORY = "history.jsonl"
STATUS = "status.json"


class Phase(enum.StrEnum):
    PLANNING = "planning"
    APPLYING = "applying"
    VERIFYING = "verifying"
    CANARY = "canary"  # a canary step's gate is judging windows
    PAUSED = "paused"  # inconclusive under on_inconclusive: pause; held at this step
    CONVERGED = "converged"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One finished apply."""

    revision: str | None  # the source commit, from the plan's provenance
    plan_id: str
    outcome: str
    started_at: str  # RFC 3339 UTC
    duration_s: float
    batches: int  # forward batches committed
    reason: str = ""
    desired_graph_hash: str = ""  # of the plan, so a revert to a promoted graph is known
    canary: tuple[dict[str, Any], ...] = ()  # each canary step and its windows' verdicts


def utc_now(clock: Callable[[], float]) -> str:
    stamp = datetime.datetime.fromtimestamp(clock(), datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Records:
    def __init__(self, state: Path) -> None:
        self.state = state
        state.mkdir(parents=True, exist_ok=True)

    def set_status(self, **fields: Any) -> None:
        """Merge `fields` into the status and write it atomically."""
        status = {**self.status(), **fields}
        write_atomic(self.state / STATUS,
                     orjson.dumps(status, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))

    def status(self) -> dict[str, Any]:
        path = self.state / STATUS
        if not path.exists():
            return {}
        data = orjson.loads(path.read_bytes())
        return data if isinstance(data, dict) else {}

    def append(self, entry: Entry) -> None:
        """Add one line; a line torn by an earlier crash is ended first, so it costs only
        itself."""
        path = self.state / HISTORY
        torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
        with open(path, "ab") as out:
            out.write((b"\n" if torn else b"") + orjson.dumps(dataclasses.asdict(entry)) + b"\n")
            out.flush()
            os.fsync(out.fileno())

    def history(self) -> Iterator[Entry]:
        """Every entry, oldest first. A torn last line (a crash mid-append) is skipped."""
        path = self.state / HISTORY
        if not path.exists():
            return
        for line in path.read_bytes().splitlines():
            try:
                yield Entry(**orjson.loads(line))
            except (orjson.JSONDecodeError, TypeError):
                continue


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file whole or not at all: a temporary file, fsynced, renamed over it, and the
    folder fsynced so the rename survives a crash."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _sync_dir(path.parent)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
