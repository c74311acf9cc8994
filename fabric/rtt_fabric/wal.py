"""The fabric's write-ahead log: append-only, hash-chained, checkpointed records on local disk.

The node daemon opens one `Wal` on its state directory at start-up (`Wal.open` runs recovery and
raises `WalCorrupt` if the daemon must refuse to start); the 2PC participant appends its records
and calls `sync()` once per batch at COMMIT; `rtt fabric wal verify` calls `verify()`. The byte
layout lives in `walformat`; the rules are specified in fabric/WAL.md. One writer per directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from rtt_fabric import walformat
from rtt_fabric.walformat import CHECKPOINT, Record

__all__ = [
    "CHECKPOINT",
    "DURABLE_LOG_ENV",
    "Damage",
    "Record",
    "SegmentSummary",
    "VerifyReport",
    "Wal",
    "WalCorrupt",
    "simulate_power_loss",
    "verify",
]

DURABLE_LOG_ENV: Final = "RTT_WAL_DURABLE_LOG"
_PEEK: Final = walformat.HEADER_SIZE + walformat.RECORD_OVERHEAD


class WalCorrupt(Exception):
    """The log is damaged before its tail: fsynced history is missing or altered."""

    def __init__(self, segment: Path, offset: int, reason: str) -> None:
        super().__init__(f"{segment}: byte {offset}: {reason}")
        self.segment = segment
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class Damage:
    segment: str
    offset: int
    reason: str


@dataclass(frozen=True)
class SegmentSummary:
    name: str
    first_seq: int
    records: int
    bytes: int


@dataclass(frozen=True)
class VerifyReport:
    """Everything `verify` found. A torn tail is what `Wal.open` would cut off; corruption is what
    would make it refuse. The walk stops at the first problem, so counts cover the log before it."""

    segments: tuple[SegmentSummary, ...]
    records: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: tuple[int, ...]
    torn_tail: Damage | None
    corruption: Damage | None

    @property
    def ok(self) -> bool:
        return self.corruption is None


@dataclass(frozen=True)
class _Segment:
    path: Path
    header: walformat.SegmentHeader


@dataclass(frozen=True)
class _Recovered:
    segments: list[_Segment]
    start: int  # index of the segment replay starts from
    last_seq: int
    last_hash: bytes
    size: int  # valid length of the last segment


def _ignore(_message: str) -> None:
    pass


class Wal:
    """An open log. Build it with `Wal.open`; not thread-safe (the daemon's loop owns it)."""

    def __init__(self, directory: Path, state: _Recovered, *, segment_bytes: int, fsync: bool,
                 durable_log: Path | None) -> None:
        self._dir = directory
        self._segments = [s.path for s in state.segments]
        self._start = state.start
        self._last_seq, self._last_hash, self._size = state.last_seq, state.last_hash, state.size
        self._records_here = state.last_seq - state.segments[-1].header.first_seq + 1
        self._segment_bytes, self._fsync = segment_bytes, fsync
        self._fd = _open_append(self._segments[-1])
        self._log_fd = -1 if durable_log is None else _open_append(durable_log)

    @classmethod
    def open(cls, directory: Path, *, segment_bytes: int = 64 << 20, fsync: bool = True,
             warn: Callable[[str], None] = _ignore,
             environ: Mapping[str, str] = os.environ) -> Wal:
        """Open (creating if needed) the log in `directory`, recover it and make it durable.

        Recovery reads the segments from the newest checkpoint on: a torn tail of the last segment
        is truncated (reported through `warn`); any other damage raises `WalCorrupt`.
        `fsync=False` skips every fsync: for benchmarks and property tests only, never in the
        daemon. `environ[RTT_WAL_DURABLE_LOG]`, if set, names the power-loss test seam's sidecar.
        """
        if segment_bytes < 4 * _PEEK:
            raise ValueError(f"segment_bytes must be at least {4 * _PEEK}")
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.seg.tmp"):
            stale.unlink()  # a segment that never got its name was never part of the log
        state = _recover(directory, warn=warn, fsync=fsync)
        log = environ.get(DURABLE_LOG_ENV)
        wal = cls(directory, state, segment_bytes=segment_bytes, fsync=fsync,
                  durable_log=Path(log) if log else None)
        wal.sync()  # what survived a crash in the page cache becomes durable before anyone prunes
        return wal

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def last_hash(self) -> bytes:
        return self._last_hash

    def append(self, kind: int, payload: bytes) -> int:
        """Write one record (os.write, no fsync) and return its seq. Kind 0 is CHECKPOINT's."""
        if not 0 < kind <= walformat.MAX_KIND:
            raise ValueError(f"record kind must be in 1..{walformat.MAX_KIND}, got {kind}")
        if self._records_here and (self._size + walformat.RECORD_OVERHEAD + len(payload)
                                   > self._segment_bytes):
            self._roll()
        return self._write(kind, payload)

    def sync(self) -> None:
        """Make every appended record durable: one fsync (group commit, once per batch)."""
        self._check_open()
        if self._fsync:
            os.fsync(self._fd)
        self._note_durable(self._segments[-1], self._size)

    def checkpoint(self, state: bytes) -> int:
        """Start a segment with a durable snapshot; replay starts at the newest one. Returns seq."""
        self._check_open()
        if self._records_here:
            self._roll()
        seq = self._write(CHECKPOINT, state)
        self.sync()
        self._start = len(self._segments) - 1
        return seq

    def prune(self) -> tuple[Path, ...]:
        """Delete the segments wholly before the newest checkpoint; returns what was removed."""
        gone, self._segments = self._segments[: self._start], self._segments[self._start :]
        self._start = 0
        for path in gone:
            path.unlink()
        if gone:
            _sync_dir(self._dir, self._fsync)
        return tuple(gone)

    def replay(self) -> Iterator[Record]:
        """The newest checkpoint (if any), then every record after it, in seq order.

        CRCs are re-checked as records are read; hash links are not, because `open` proved the
        chain and this process wrote every record since.
        """
        for path in self._segments[self._start :]:
            image = path.read_bytes()
            scan = walformat.SegmentScan(image, walformat.decode_header(image), chain=False)
            yield from scan
            if scan.fault is not None:
                raise WalCorrupt(path, scan.fault.offset, scan.fault.reason)

    def close(self) -> None:
        """Release the files. Does not sync: only what `sync` or `checkpoint` covered is durable."""
        for fd in (self._fd, self._log_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._log_fd = -1

    def __enter__(self) -> Wal:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _write(self, kind: int, payload: bytes) -> int:
        self._check_open()
        seq = self._last_seq + 1
        data, digest = walformat.encode_record(seq, kind, payload, self._last_hash)
        _write_all(self._fd, data, rollback_to=self._size)
        self._last_seq, self._last_hash = seq, digest
        self._size += len(data)
        self._records_here += 1
        return seq

    def _roll(self) -> None:
        # The old segment is made durable first: a newer segment must never outlive its tail.
        self.sync()
        os.close(self._fd)
        self._fd = -1
        header = walformat.SegmentHeader(self._last_seq + 1, self._last_hash)
        path = _create_segment(self._dir, header, fsync=self._fsync)
        self._segments.append(path)
        self._fd = _open_append(path)
        self._size, self._records_here = walformat.HEADER_SIZE, 0
        self._note_durable(path, self._size)

    def _note_durable(self, path: Path, length: int) -> None:
        # Test seam (power loss): a harness truncates each segment to its last line here.
        if self._log_fd >= 0:
            os.write(self._log_fd, f"{path.name} {length}\n".encode())

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError("the WAL is closed")


def verify(directory: Path) -> VerifyReport:
    """Check every segment in `directory`, read-only: counts, seq range, checkpoints, damage."""
    walk = _Walk()
    segments = _list_segments(directory)
    for index, path in enumerate(segments):
        if not walk.segment(path, last=index == len(segments) - 1):
            break
    return walk.report()


class _Walk:
    """The state of `verify` as it goes from segment to segment."""

    def __init__(self) -> None:
        self.summaries: list[SegmentSummary] = []
        self.checkpoints: list[int] = []
        self.first_seq: int | None = None
        self.seq, self.hash = 0, walformat.GENESIS
        self.torn: Damage | None = None
        self.corrupt: Damage | None = None

    def segment(self, path: Path, *, last: bool) -> bool:
        image = path.read_bytes()
        try:
            header = _check_header(path, image, self.seq, self.hash, first=not self.summaries)
        except WalCorrupt as error:
            self.corrupt = Damage(path.name, error.offset, error.reason)
            return False
        scan = walformat.SegmentScan(image, header)
        records = 0
        for record in scan:
            records += 1
            if record.kind == CHECKPOINT:
                self.checkpoints.append(record.seq)
        self.first_seq = header.first_seq if self.first_seq is None else self.first_seq
        self.seq, self.hash = scan.seq, scan.hash
        self.summaries.append(SegmentSummary(path.name, header.first_seq, records, scan.end))
        if scan.fault is not None:
            damage = Damage(path.name, scan.fault.offset, scan.fault.reason)
            if last and _is_torn(image, scan.fault, scan.seq):
                self.torn = damage
            else:
                self.corrupt = damage
        return scan.fault is None

    def report(self) -> VerifyReport:
        total = sum(s.records for s in self.summaries)
        return VerifyReport(
            segments=tuple(self.summaries), records=total,
            first_seq=self.first_seq if total else None, last_seq=self.seq if total else None,
            checkpoints=tuple(self.checkpoints), torn_tail=self.torn, corruption=self.corrupt)


def simulate_power_loss(directory: Path, durable_log: Path) -> None:
    """Test seam: cut every segment back to its last durable length in `durable_log`, as a power
    cut would, and drop segments that were never durably created. Call only while no `Wal` is open.
    """
    durable: dict[str, int] = {}
    for line in durable_log.read_text().splitlines():
        name, length = line.split()
        durable[name] = int(length)
    for path in _list_segments(directory):
        if path.name not in durable:
            path.unlink()
        elif path.stat().st_size > durable[path.name]:
            os.truncate(path, durable[path.name])


def _recover(directory: Path, *, warn: Callable[[str], None], fsync: bool) -> _Recovered:
    paths = _list_segments(directory)
    if not paths:
        first = walformat.SegmentHeader(1, walformat.GENESIS)
        created = _Segment(_create_segment(directory, first, fsync=fsync), first)
        return _Recovered([created], 0, 0, walformat.GENESIS, walformat.HEADER_SIZE)
    heads = [_peek(path) for path in paths]
    start = _newest_checkpoint(heads)
    segments = [_Segment(path, head[0]) for path, head in zip(paths, heads, strict=True)]
    # Replay's first segment is checked as the log's first: a checkpoint there vouches for history.
    seq, digest = 0, walformat.GENESIS
    size = walformat.HEADER_SIZE
    for index in range(start, len(segments)):
        seq, digest, size = _recover_segment(segments[index].path, seq, digest, warn=warn,
                                             first=index == start,
                                             last=index == len(segments) - 1)
    return _Recovered(segments, start, seq, digest, size)


def _peek(path: Path) -> tuple[walformat.SegmentHeader, int | None]:
    """A segment's header and CHECKPOINT if its first record is a whole, CRC-valid checkpoint.

    Reads the header and one record header, plus the checkpoint's payload only when there is one.
    """
    with path.open("rb") as file:
        image = file.read(_PEEK)
        try:
            header = walformat.decode_header(image)
        except ValueError as error:
            raise WalCorrupt(path, 0, str(error)) from None
        claim = walformat.first_record_claim(image)
        if claim is None or claim[0] != CHECKPOINT:
            return header, None
        image += file.read(claim[1] - len(image))
    return header, walformat.first_record_kind(image)


def _newest_checkpoint(heads: list[tuple[walformat.SegmentHeader, int | None]]) -> int:
    starts = [i for i, (_header, kind) in enumerate(heads) if kind == CHECKPOINT]
    return starts[-1] if starts else 0


def _recover_segment(path: Path, seq: int, digest: bytes, *, first: bool, last: bool,
                     warn: Callable[[str], None]) -> tuple[int, bytes, int]:
    """Check one segment against the chain so far; returns the chain's new end and valid length."""
    image = path.read_bytes()
    scan = walformat.SegmentScan(image, _check_header(path, image, seq, digest, first=first))
    scan.check()
    fault = scan.fault
    if fault is None:
        return scan.seq, scan.hash, scan.end
    if not (last and _is_torn(image, fault, scan.seq)):
        raise WalCorrupt(path, fault.offset, fault.reason)
    warn(f"{path}: byte {fault.offset}: torn tail ({fault.reason}); "
         f"truncating {len(image) - fault.offset} bytes after record {scan.seq}")
    os.truncate(path, fault.offset)
    return scan.seq, scan.hash, scan.end


def _check_header(path: Path, image: bytes, seq: int, digest: bytes, *,
                  first: bool) -> walformat.SegmentHeader:
    """The segment's header, if it continues the chain ending at (seq, digest)."""
    try:
        header = walformat.decode_header(image)
    except ValueError as error:
        raise WalCorrupt(path, 0, str(error)) from None
    if walformat.segment_seq(path.name) != header.first_seq:
        raise WalCorrupt(path, 0, f"file name disagrees with header first seq {header.first_seq}")
    if first and header.first_seq != 1:
        if walformat.first_record_kind(image) == CHECKPOINT:
            return header  # earlier segments were pruned behind this checkpoint
        raise WalCorrupt(path, 0, f"log begins at seq {header.first_seq} without a checkpoint")
    if header.first_seq != seq + 1:
        raise WalCorrupt(path, 0, f"segment starts at seq {header.first_seq}, expected {seq + 1}")
    if header.prev_hash != digest:
        raise WalCorrupt(path, 0, f"segment does not chain from record {seq}")
    return header


def _is_torn(image: bytes, fault: walformat.Fault, seq: int) -> bool:
    return fault.tearable and not walformat.record_follows(image, fault.offset, seq)


def _list_segments(directory: Path) -> list[Path]:
    named = [(walformat.segment_seq(p.name), p) for p in directory.iterdir()]
    return [path for seq, path in sorted((s, p) for s, p in named if s is not None)]


def _create_segment(directory: Path, header: walformat.SegmentHeader, *, fsync: bool) -> Path:
    # Written under a temporary name and renamed, so a segment file never has a torn header.
    path = directory / walformat.segment_name(header.first_seq)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, walformat.encode_header(header), rollback_to=0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    temp.rename(path)
    _sync_dir(directory, fsync)
    return path


def _sync_dir(directory: Path, fsync: bool) -> None:
    if not fsync:
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, data: bytes, *, rollback_to: int) -> None:
    view, done = memoryview(data), 0
    try:
        while done < len(data):
            done += os.write(fd, view[done:])
    except OSError:
        # A half-written record must not sit in front of the next one (e.g. after ENOSPC).
        os.ftruncate(fd, rollback_to)
        raise
