"""WAL benchmark: group-commit appends and replay time, against SQLite as the obvious peer.

    python -m bench.wal [--runs 5] [--batches 100] [--batch 100] [--replay 100000]

- append: --batches x --batch records of ~200 B, one durable commit per batch. RTT: `append` per
  record, `sync()` (one fsync) per batch. SQLite: WAL journal mode, synchronous=FULL, one INSERT
  per record and one transaction per batch.
- replay: --replay records already on disk (page cache warm). RTT: `Wal.open` (recovery checks
  every CRC and hash link) and a full `replay()`. SQLite: connect and `SELECT ... ORDER BY seq`.
  Both turn every row into the same `Record` value. SQLite has no hash chain to check.

Every figure is the median of --runs runs, each in a fresh directory. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rtt_fabric import wal

PAYLOAD_BYTES = 200
REPLAY_BAR_SECONDS = 1.0


def payloads(count: int) -> list[bytes]:
    # JSON-ish and distinct, like the participant's records; padded to the same size.
    return [f'{{"op":"route","id":{i},"lane":"{i % 7}"}}'.encode().ljust(PAYLOAD_BYTES, b" ")
            for i in range(count)]


def median_seconds(runs: int, setup: Callable[[Path], None], body: Callable[[Path], int]) -> float:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="rtt-bench-wal-") as root:
            setup(Path(root))
            start = time.perf_counter()
            body(Path(root))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def rtt_append(root: Path, batches: list[list[bytes]]) -> int:
    with wal.Wal.open(root / "wal") as log:
        for batch in batches:
            for payload in batch:
                log.append(1, payload)
            log.sync()
        return log.last_seq


def rtt_fill(root: Path, records: list[bytes]) -> None:
    with wal.Wal.open(root / "wal", fsync=False) as log:
        for payload in records:
            log.append(1, payload)
    with wal.Wal.open(root / "wal"):
        pass  # the fsync=True open makes the filled log durable, as a real one would be


def rtt_replay(root: Path) -> int:
    with wal.Wal.open(root / "wal") as log:
        return sum(1 for _record in log.replay())


def sqlite_connect(root: Path) -> sqlite3.Connection:
    db = sqlite3.connect(root / "log.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS log "
               "(seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL, payload BLOB NOT NULL)")
    return db


def sqlite_append(root: Path, batches: list[list[bytes]]) -> int:
    db, seq = sqlite_connect(root), 0
    for batch in batches:
        db.execute("BEGIN")
        for payload in batch:
            seq += 1
            db.execute("INSERT INTO log VALUES (?, ?, ?)", (seq, 1, payload))
        db.execute("COMMIT")
    db.close()
    return seq


def sqlite_fill(root: Path, records: list[bytes]) -> None:
    db = sqlite_connect(root)
    with db:
        db.execute("BEGIN")
        db.executemany("INSERT INTO log VALUES (?, ?, ?)",
                       ((seq, 1, p) for seq, p in enumerate(records, 1)))
    db.close()


def sqlite_replay(root: Path) -> int:
    db = sqlite3.connect(root / "log.sqlite")
    count = 0
    for seq, kind, payload in db.execute("SELECT seq, kind, payload FROM log ORDER BY seq"):
        wal.Record(seq, kind, payload, b"")  # the same value RTT's replay yields
        count += 1
    db.close()
    return count


def measure(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    data = payloads(args.batches * args.batch)
    batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
    many = payloads(args.replay)

    def nothing(_root: Path) -> None:
        pass

    return {
        "append": (median_seconds(args.runs, nothing, lambda r: rtt_append(r, batches)),
                   median_seconds(args.runs, nothing, lambda r: sqlite_append(r, batches))),
        "replay": (median_seconds(args.runs, lambda r: rtt_fill(r, many), rtt_replay),
                   median_seconds(args.runs, lambda r: sqlite_fill(r, many), sqlite_replay)),
    }


def table(args: argparse.Namespace, results: dict[str, tuple[float, float]]) -> str:
    labels = {
        "append": f"append {args.batches * args.batch:,} x {PAYLOAD_BYTES} B, "
                  f"{args.batches} batches, 1 fsync each",
        "replay": f"open + replay {args.replay:,} records",
    }
    lines = [
        f"cores: {os.cpu_count()}; Python {platform.python_version()}; {platform.system()} "
        f"{platform.release()}; median of {args.runs} runs",
        "",
        "| case | RTT WAL | SQLite (WAL mode, synchronous=FULL) | RTT / SQLite |",
        "|---|---:|---:|---:|",
    ]
    for key, (ours, peer) in results.items():
        lines.append(f"| {labels[key]} | {ours * 1e3:.1f} ms | {peer * 1e3:.1f} ms "
                     f"| {ours / peer:.2f}x |")
    replay = results["replay"][0]
    verdict = "meets" if replay <= REPLAY_BAR_SECONDS else "MISSES"
    lines += ["", f"replay {verdict} the {REPLAY_BAR_SECONDS:.0f} s bar ({replay:.3f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wal", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--replay", type=int, default=100_000)
    args = parser.parse_args(argv)
    print(table(args, measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
