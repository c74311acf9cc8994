"""The fabric WAL on real files: round trips, checkpoints, torn tails, corruption, power loss."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtt_fabric import wal, walformat

HEADER = walformat.HEADER_SIZE
OVERHEAD = walformat.RECORD_OVERHEAD


def open_wal(directory: Path, warnings: list[str] | None = None, **options: Any) -> wal.Wal:
    sink = warnings if warnings is not None else []
    return wal.Wal.open(directory, warn=sink.append, environ=options.pop("environ", {}), **options)


def write_log(directory: Path, payloads: list[bytes], **options: Any) -> list[Path]:
    with open_wal(directory, **options) as log:
        for index, payload in enumerate(payloads):
            log.append(1 + index % 3, payload)
        log.sync()
    return segments(directory)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def offsets(payloads: list[bytes]) -> list[int]:
    """Byte offset of each record in a single segment holding these payloads."""
    at, out = HEADER, []
    for payload in payloads:
        out.append(at)
        at += OVERHEAD + len(payload)
    return out


def replayed(directory: Path, warnings: list[str] | None = None) -> list[tuple[int, int, bytes]]:
    with open_wal(directory, warnings) as log:
        return [(r.seq, r.kind, r.payload) for r in log.replay()]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


PAYLOADS = [f"record-{i:03d}-".encode() * 3 for i in range(10)]


# Round trips ---------------------------------------------------------------------------------

def test_round_trip_across_segment_rolls(tmp_path):
    payloads = [bytes([i]) * (40 + i) for i in range(60)]
    with open_wal(tmp_path, segment_bytes=1024) as log:
        seqs = [log.append(7, p) for p in payloads]
        log.sync()
        last = (log.last_seq, log.last_hash)
    assert seqs == list(range(1, 61))
    files = segments(tmp_path)
    assert len(files) > 3
    assert all(f.stat().st_size <= 1024 for f in files)
    assert max(f.stat().st_size for f in files) > 1024 - walformat.RECORD_OVERHEAD - 100
    assert [walformat.segment_seq(f.name) for f in files] == sorted(
        walformat.segment_seq(f.name) or 0 for f in files)
    with open_wal(tmp_path, segment_bytes=1024) as log:
        records = list(log.replay())
        assert (log.last_seq, log.last_hash) == last
        assert log.append(7, b"next") == 61
    assert [r.payload for r in records] == payloads
    assert [r.seq for r in records] == list(range(1, 61))
    assert {r.kind for r in records} == {7}
    assert records[-1].hash == last[1]


def test_a_new_log_starts_at_genesis_in_a_new_directory(tmp_path):
    target = tmp_path / "state" / "wal"
    with open_wal(target) as log:
        assert (log.last_seq, log.last_hash) == (0, walformat.GENESIS)
        assert list(log.replay()) == []
    assert [f.name for f in segments(target)] == ["00000000000000000001.seg"]


def test_hash_is_sha256_of_prev_hash_and_record_bytes(tmp_path):
    with open_wal(tmp_path) as log:
        log.append(5, b"abc")
        first = log.last_hash
        log.append(6, b"")
        second = log.last_hash
    prefix = struct.pack("<IQHH", 3, 1, 5, 0)
    assert first == hashlib.sha256(bytes(32) + prefix + b"abc").digest()
    assert second == hashlib.sha256(first + struct.pack("<IQHH", 0, 2, 6, 0)).digest()


def test_kinds_outside_the_callers_range_are_refused(tmp_path):
    with open_wal(tmp_path) as log:
        for kind in (wal.CHECKPOINT, -1, 0x10000):
            with pytest.raises(ValueError, match="record kind"):
                log.append(kind, b"x")
        assert log.last_seq == 0


def test_a_closed_log_refuses_appends(tmp_path):
    log = open_wal(tmp_path)
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append(1, b"x")


def test_stale_temporary_segments_are_removed(tmp_path):
    write_log(tmp_path, PAYLOADS[:2])
    stale = tmp_path / "00000000000000000003.seg.tmp"
    stale.write_bytes(b"half a header")
    assert len(replayed(tmp_path)) == 2
    assert not stale.exists()


# Checkpoints ---------------------------------------------------------------------------------

def test_checkpoint_bounds_replay_and_old_segments_can_go(tmp_path):
    with open_wal(tmp_path, segment_bytes=1024) as log:
        for payload in PAYLOADS * 3:
            log.append(1, payload)
        cut = log.checkpoint(b'{"graph": 1}')
        log.append(2, b"after-1")
        log.append(2, b"after-2")
        log.sync()
        before = [(r.seq, r.kind, r.payload) for r in log.replay()]
    assert cut == 31
    assert before == [(31, wal.CHECKPOINT, b'{"graph": 1}'), (32, 2, b"after-1"),
                      (33, 2, b"after-2")]
    assert replayed(tmp_path) == before
    with open_wal(tmp_path, segment_bytes=1024) as log:
        gone = log.prune()
        assert gone
        assert all(not p.exists() for p in gone)
        assert all((walformat.segment_seq(p.name) or cut) < cut for p in gone)
        assert [(r.seq, r.payload) for r in log.replay()] == [(s, p) for s, _k, p in before]
    assert replayed(tmp_path) == before
    report = wal.verify(tmp_path)
    assert report.ok
    assert (report.first_seq, report.last_seq, report.checkpoints) == (31, 33, (31,))


def test_the_newest_checkpoint_wins(tmp_path):
    with open_wal(tmp_path) as log:
        log.append(1, b"a")
        log.checkpoint(b"one")
        log.append(1, b"b")
        log.checkpoint(b"two")
        log.append(1, b"c")
        log.sync()
    assert replayed(tmp_path) == [(4, 0, b"two"), (5, 1, b"c")]
    assert wal.verify(tmp_path).checkpoints == (2, 4)


def test_a_torn_checkpoint_falls_back_to_the_one_before(tmp_path):
    with open_wal(tmp_path) as log:
        log.checkpoint(b"one")
        log.append(1, b"a")
        log.checkpoint(b"two-" * 20)
    last = segments(tmp_path)[-1]
    os.truncate(last, HEADER + OVERHEAD + 10)
    warnings: list[str] = []
    assert replayed(tmp_path, warnings) == [(1, 0, b"one"), (2, 1, b"a")]
    assert len(warnings) == 1
    assert last.stat().st_size == HEADER


def test_a_pruned_log_without_its_checkpoint_refuses_to_start(tmp_path):
    with open_wal(tmp_path) as log:
        log.append(1, b"a")
        log.checkpoint(b"snap")
        log.append(1, b"b")
        log.sync()
        log.prune()
    flip(segments(tmp_path)[0], HEADER + OVERHEAD + 1)
    with pytest.raises(wal.WalCorrupt, match="without a checkpoint"):
        open_wal(tmp_path)


# Torn tails ----------------------------------------------------------------------------------

def test_a_torn_tail_is_truncated_at_every_cut(tmp_path):
    source = tmp_path / "source"
    write_log(source, PAYLOADS[:5])
    start = offsets(PAYLOADS[:5])[-1]
    end = start + OVERHEAD + len(PAYLOADS[4])
    name = segments(source)[0].name
    for cut in range(start, end):
        case = tmp_path / f"cut-{cut}"
        shutil.copytree(source, case)
        os.truncate(case / name, cut)
        warnings: list[str] = []
        records = replayed(case, warnings)
        assert [r[2] for r in records] == PAYLOADS[:4]
        if cut == start:
            assert warnings == []
        else:
            assert len(warnings) == 1
            assert f"{name}: byte {start}: torn tail" in warnings[0]
        assert (case / name).stat().st_size == start
        with open_wal(case) as log:
            assert log.append(1, b"again") == 5
        shutil.rmtree(case)


@pytest.mark.parametrize("tail", [bytes(100), b"\xff" * 7, b"garbage that is not a record" * 3])
def test_trailing_junk_is_a_torn_tail(tmp_path, tail):
    path = write_log(tmp_path, PAYLOADS[:3])[0]
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(tail)
    warnings: list[str] = []
    assert [r[2] for r in replayed(tmp_path, warnings)] == PAYLOADS[:3]
    assert len(warnings) == 1
    assert path.stat().st_size == size


def test_a_crc_bad_last_record_is_a_torn_tail(tmp_path):
    path = write_log(tmp_path, PAYLOADS[:4])[0]
    last = offsets(PAYLOADS[:4])[-1]
    flip(path, last + OVERHEAD + 3)
    warnings: list[str] = []
    assert [r[2] for r in replayed(tmp_path, warnings)] == PAYLOADS[:3]
    assert f"byte {last}" in warnings[0]


# Corruption before the tail ------------------------------------------------------------------

def test_a_flipped_payload_byte_mid_segment_refuses_to_start(tmp_path):
    path = write_log(tmp_path, PAYLOADS)[0]
    bad = offsets(PAYLOADS)[3]
    flip(path, bad + OVERHEAD + 5)
    with pytest.raises(wal.WalCorrupt) as caught:
        open_wal(tmp_path)
    assert (caught.value.segment, caught.value.offset) == (path, bad)
    assert "CRC" in caught.value.reason
    assert f"{path}: byte {bad}: " in str(caught.value)
    report = wal.verify(tmp_path)
    assert not report.ok
    assert report.corruption == wal.Damage(path.name, bad, caught.value.reason)
    assert report.torn_tail is None
    assert report.records == 3
    assert path.stat().st_size == offsets(PAYLOADS)[-1] + OVERHEAD + len(PAYLOADS[-1])


def test_a_bad_length_field_mid_segment_is_not_taken_for_a_tear(tmp_path):
    path = write_log(tmp_path, PAYLOADS)[0]
    bad = offsets(PAYLOADS)[6]
    data = bytearray(path.read_bytes())
    data[bad + 4 : bad + 8] = struct.pack("<I", 1 << 30)
    path.write_bytes(bytes(data))
    with pytest.raises(wal.WalCorrupt) as caught:
        open_wal(tmp_path)
    assert caught.value.offset == bad
    assert "past the end" in caught.value.reason


def test_damage_at_the_end_of_a_non_last_segment_refuses_to_start(tmp_path):
    files = write_log(tmp_path, PAYLOADS * 4, segment_bytes=512)
    first = files[0]
    image = first.read_bytes()
    count = next(n for n in range(1, 40) if offsets(PAYLOADS * 4)[n] >= len(image))
    last = offsets(PAYLOADS * 4)[count - 1]
    flip(first, last + OVERHEAD + 1)
    with pytest.raises(wal.WalCorrupt) as caught:
        open_wal(tmp_path, segment_bytes=512)
    assert (caught.value.segment, caught.value.offset) == (first, last)
    assert wal.verify(tmp_path).corruption == wal.Damage(first.name, last, caught.value.reason)


def test_a_missing_middle_segment_refuses_to_start(tmp_path):
    files = write_log(tmp_path, PAYLOADS * 4, segment_bytes=512)
    assert len(files) >= 3
    files[1].unlink()
    with pytest.raises(wal.WalCorrupt, match="expected") as caught:
        open_wal(tmp_path, segment_bytes=512)
    assert (caught.value.segment, caught.value.offset) == (files[2], 0)


def test_a_damaged_segment_header_refuses_to_start(tmp_path):
    files = write_log(tmp_path, PAYLOADS * 4, segment_bytes=512)
    flip(files[-1], 20)
    with pytest.raises(wal.WalCorrupt, match="header CRC") as caught:
        open_wal(tmp_path, segment_bytes=512)
    assert caught.value.offset == 0


# Hash-chain breaks ---------------------------------------------------------------------------

def _splice(path: Path, payloads: list[bytes], order: list[int]) -> None:
    image = path.read_bytes()
    starts = offsets(payloads)
    spans = [image[s : s + OVERHEAD + len(p)] for s, p in zip(starts, payloads, strict=True)]
    path.write_bytes(image[:HEADER] + b"".join(spans[i] for i in order))


@pytest.mark.parametrize(("order", "position", "reason"), [
    ([0, 1, 2, 4, 5, 6, 7, 8, 9], 3, "seq 5 where 4 was expected"),
    ([0, 1, 3, 2, 4, 5, 6, 7, 8, 9], 2, "seq 4 where 3 was expected"),
])
def test_a_removed_or_swapped_record_breaks_the_chain(tmp_path, order, position, reason):
    path = write_log(tmp_path, PAYLOADS)[0]
    _splice(path, PAYLOADS, order)
    with pytest.raises(wal.WalCorrupt, match=reason) as caught:
        open_wal(tmp_path)
    assert caught.value.offset == offsets(PAYLOADS)[position]  # all PAYLOADS are one length
    assert wal.verify(tmp_path).corruption == wal.Damage(path.name, caught.value.offset,
                                                          caught.value.reason)


@pytest.mark.parametrize("index", [2, 9])
def test_a_rewritten_record_with_a_fresh_crc_breaks_the_chain(tmp_path, index):
    path = write_log(tmp_path, PAYLOADS)[0]
    at = offsets(PAYLOADS)[index]
    data = bytearray(path.read_bytes())
    end = at + OVERHEAD + len(PAYLOADS[index])
    data[at + OVERHEAD] ^= 0x01
    data[at : at + 4] = struct.pack("<I", zlib.crc32(bytes(data[at + 4 : end])))
    path.write_bytes(bytes(data))
    with pytest.raises(wal.WalCorrupt, match="does not chain") as caught:
        open_wal(tmp_path)
    assert (caught.value.segment, caught.value.offset) == (path, at)
    assert wal.verify(tmp_path).corruption == wal.Damage(path.name, at, caught.value.reason)


# Power loss (the RTT_WAL_DURABLE_LOG test seam) ----------------------------------------------

def test_power_loss_drops_only_unsynced_records(tmp_path):
    directory, sidecar = tmp_path / "wal", tmp_path / "durable.log"
    log = open_wal(directory, environ={wal.DURABLE_LOG_ENV: str(sidecar)})
    for payload in PAYLOADS[:6]:
        log.append(1, payload)
    log.sync()
    for payload in PAYLOADS[6:]:
        log.append(1, payload)
    log.close()
    assert [r[2] for r in replayed(directory)] == PAYLOADS  # a process crash loses nothing
    wal.simulate_power_loss(directory, sidecar)
    assert [r[2] for r in replayed(directory)] == PAYLOADS[:6]
    assert sidecar.read_text().splitlines()[-1].startswith("00000000000000000001.seg ")


def test_power_loss_across_rolls_keeps_every_sync(tmp_path):
    directory, sidecar = tmp_path / "wal", tmp_path / "durable.log"
    env = {wal.DURABLE_LOG_ENV: str(sidecar)}
    log = open_wal(directory, segment_bytes=512, environ=env)
    written = PAYLOADS * 3
    for index, payload in enumerate(written):
        log.append(1, payload)
        if index == 11:
            log.sync()
    log.close()
    wal.simulate_power_loss(directory, sidecar)
    kept = [r[2] for r in replayed(directory)]
    assert written[:12] == kept[:12]
    assert kept == written[: len(kept)]
    assert len(kept) < len(written)


def test_power_loss_after_a_sigkill(tmp_path):
    directory, sidecar = tmp_path / "wal", tmp_path / "durable.log"
    script = f"""
import os, signal
from pathlib import Path
from rtt_fabric import wal
log = wal.Wal.open(Path({str(directory)!r}))
for i in range(20):
    log.append(1, b"synced-%d" % i)
log.sync()
for i in range(5):
    log.append(1, b"lost-%d" % i)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script],
                          env={**os.environ, wal.DURABLE_LOG_ENV: str(sidecar)})
    assert done.returncode == -signal.SIGKILL
    assert len(replayed(directory)) == 25
    wal.simulate_power_loss(directory, sidecar)
    assert [r[2] for r in replayed(directory)] == [b"synced-%d" % i for i in range(20)]


# verify() ------------------------------------------------------------------------------------

def test_verify_reports_a_healthy_log(tmp_path):
    with open_wal(tmp_path, segment_bytes=512) as log:
        for payload in PAYLOADS * 2:
            log.append(1, payload)
        log.checkpoint(b"state")
        log.append(2, b"x")
        log.sync()
    report = wal.verify(tmp_path)
    assert report.ok
    assert (report.records, report.first_seq, report.last_seq) == (22, 1, 22)
    assert report.checkpoints == (21,)
    assert (report.torn_tail, report.corruption) == (None, None)
    assert [s.name for s in report.segments] == [p.name for p in segments(tmp_path)]
    assert sum(s.records for s in report.segments) == 22
    assert [s.bytes for s in report.segments] == [p.stat().st_size for p in segments(tmp_path)]
    assert report.segments[-1].first_seq == 21


def test_verify_reports_a_torn_tail_and_leaves_it_alone(tmp_path):
    path = write_log(tmp_path, PAYLOADS[:3])[0]
    size = path.stat().st_size
    os.truncate(path, size - 5)
    report = wal.verify(tmp_path)
    assert report.ok
    assert report.torn_tail == wal.Damage(path.name, offsets(PAYLOADS[:3])[2],
                                          "record runs 5 bytes past the end of the segment")
    assert (report.records, report.last_seq) == (2, 2)
    assert path.stat().st_size == size - 5


def test_verify_of_an_empty_directory(tmp_path):
    report = wal.verify(tmp_path)
    assert report.ok
    assert (report.records, report.first_seq, report.last_seq) == (0, None, None)
    assert report.segments == ()


def test_the_public_api_resolves():
    for module in (wal, walformat):
        for name in module.__all__:
            assert hasattr(module, name)


# Property: any mix of operations replays what the model says -------------------------------

OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 3), st.binary(max_size=120)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("checkpoint"), st.binary(max_size=80)),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("tear"), st.binary(min_size=1, max_size=60)),
    st.tuples(st.just("power_loss")),
), max_size=30)


class Model:
    """What the log must replay: every record written, the durable prefix, the checkpoints."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes]] = []
        self.durable = 0
        self.checkpoint = 0

    def expected(self) -> list[tuple[int, int, bytes]]:
        start = max(self.checkpoint, 1)
        return [(s, k, p) for s, (k, p) in enumerate(self.records, 1) if s >= start]


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_any_history_replays_as_modelled(operations):
    with tempfile.TemporaryDirectory() as root:
        directory, sidecar = Path(root) / "wal", Path(root) / "durable.log"
        options: dict[str, Any] = {"segment_bytes": 512, "fsync": False,
                   "environ": {wal.DURABLE_LOG_ENV: str(sidecar)}}
        model, log = Model(), open_wal(directory, **dict(options))
        for op in operations:
            log = _apply(op, log, model, directory, sidecar, options)
        log.close()
        with open_wal(directory, **dict(options)) as log:
            assert [(r.seq, r.kind, r.payload) for r in log.replay()] == model.expected()
            assert log.last_seq == len(model.records)
        report = wal.verify(directory)
        assert report.ok
        assert report.torn_tail is None


def _apply(op, log, model, directory, sidecar, options):
    name = op[0]
    if name == "append":
        model.records.append((op[1], op[2]))
        assert log.append(op[1], op[2]) == len(model.records)
    elif name == "sync":
        log.sync()
        model.durable = len(model.records)
    elif name == "checkpoint":
        model.records.append((wal.CHECKPOINT, op[1]))
        model.checkpoint = model.durable = log.checkpoint(op[1])
        assert model.checkpoint == len(model.records)
    else:
        log.close()
        if name == "tear":
            with segments(directory)[-1].open("ab") as file:
                file.write(op[1])
        elif name == "power_loss":
            wal.simulate_power_loss(directory, sidecar)
        warnings: list[str] = []
        log = open_wal(directory, warnings, **dict(options))
        assert len(warnings) == (name == "tear")
        assert model.durable <= log.last_seq <= len(model.records)
        del model.records[log.last_seq :]
        model.durable = log.last_seq  # open() syncs what it recovered
        assert [(r.seq, r.kind, r.payload) for r in log.replay()] == model.expected()
    return log
