"""The controller's status and history files: atomic status, append-only history, torn tails."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtt_controller.reconcile import applying, records


def entry(n: int) -> records.Entry:
    return records.Entry(revision=f"{n:040x}", plan_id=f"sha256-{n:064x}", outcome="promoted",
                         started_at="2026-11-27T00:00:00.000Z", duration_s=0.5, batches=n)


def test_status_merges_fields_and_history_keeps_order(tmp_path: Path) -> None:
    book = records.Records(tmp_path / "state")
    book.set_status(phase="applying", plan_id="p1")
    book.set_status(phase="converged", applied_plan_id="p1")
    assert book.status() == {"phase": "converged", "plan_id": "p1", "applied_plan_id": "p1"}
    assert not (tmp_path / "state" / "status.json.tmp").exists()
    for n in range(3):
        book.append(entry(n))
    assert [e.batches for e in records.Records(tmp_path / "state").history()] == [0, 1, 2]


def test_a_torn_last_history_line_is_skipped(tmp_path: Path) -> None:
    book = records.Records(tmp_path)
    book.append(entry(1))
    with open(tmp_path / records.HISTORY, "ab") as out:
        out.write(b'{"revision": "abc", "plan_')  # a crash in the middle of an append
    assert [e.batches for e in book.history()] == [1]
    book.append(entry(2))  # the next append ends the torn line first, so it is not lost
    assert [e.batches for e in book.history()] == [1, 2]


def test_utc_now_reads_the_given_clock() -> None:
    assert records.utc_now(lambda: 0.0) == "1970-01-01T00:00:00.000Z"


def test_one_controller_per_state_directory(tmp_path: Path) -> None:
    with applying.locked(tmp_path), pytest.raises(applying.Busy,
                                                  match="another controller is using"), \
            applying.locked(tmp_path):
        pass
    with applying.locked(tmp_path):  # released: the next one may take it
        pass
