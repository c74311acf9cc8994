"""The WAL's on-disk format: segment headers and hash-chained records, as pure functions on bytes.

`rtt_fabric.wal` is the only caller: it does the file I/O and decides what a damaged record means
(torn tail or corruption). Nothing here touches the filesystem, so every layout rule can be checked
on byte strings. fabric/WAL.md is the specification; keep the two in step.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CHECKPOINT",
    "GENESIS",
    "HEADER_SIZE",
    "MAX_KIND",
    "RECORD_OVERHEAD",
    "Fault",
    "Record",
    "SegmentHeader",
    "SegmentScan",
    "decode_header",
    "encode_header",
    "encode_record",
    "first_record_claim",
    "first_record_kind",
    "record_follows",
    "segment_name",
    "segment_seq",
]

GENESIS: Final = bytes(32)
CHECKPOINT: Final = 0
MAX_KIND: Final = 0xFFFF
MAGIC: Final = b"RTTWAL"
VERSION: Final = 1

# Segment header: magic, version, first seq, prev hash, then a CRC of the 48 bytes before it.
_HEADER: Final = struct.Struct("<6sHQ32sI")
HEADER_SIZE: Final = _HEADER.size
# Record: crc, payload length, seq, kind, flags, then the 32-byte hash and the payload.
_RECORD: Final = struct.Struct("<IIQHH")
_PREFIX: Final = struct.Struct("<IQHH")
_CRC: Final = struct.Struct("<I")
_HASHED_FROM: Final = 4
_HASH_AT: Final = _RECORD.size
RECORD_OVERHEAD: Final = _RECORD.size + 32
_SEQ_HIGH_AT: Final = 10  # offset of the upper six bytes of the little-endian seq in a record
_NAME: Final = re.compile(r"^(\d{20})\.seg$")


@dataclass(frozen=True, slots=True)
class Record:
    """One log entry. `hash` chains it to every record before it (see WAL.md)."""

    seq: int
    kind: int
    payload: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """What a segment file says about where it sits in the chain."""

    first_seq: int
    prev_hash: bytes


@dataclass(frozen=True, slots=True)
class Fault:
    """Where and why a scan stopped. `tearable`: damage a torn write could leave (short or CRC-bad
    record), as opposed to a well-formed record that does not belong (a seq gap, a chain break)."""

    offset: int
    reason: str
    tearable: bool


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def segment_seq(name: str) -> int | None:
    """The first seq a segment file name promises, or None if the name is not a segment's."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def encode_header(header: SegmentHeader) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, header.first_seq, header.prev_hash, 0)[:-4]
    return head + _CRC.pack(zlib.crc32(head))


def decode_header(image: bytes) -> SegmentHeader:
    """Parse the header at the start of a segment image; ValueError says what is wrong with it."""
    if len(image) < HEADER_SIZE:
        raise ValueError(f"segment header is {len(image)} bytes, expected {HEADER_SIZE}")
    magic, version, first_seq, prev_hash, crc = _HEADER.unpack_from(image)
    if magic != MAGIC:
        raise ValueError(f"bad segment magic {magic!r}")
    if version != VERSION:
        raise ValueError(f"unsupported segment format version {version}")
    if zlib.crc32(memoryview(image)[: HEADER_SIZE - 4]) != crc:
        raise ValueError("segment header CRC mismatch")
    return SegmentHeader(first_seq=first_seq, prev_hash=prev_hash)


def encode_record(seq: int, kind: int, payload: bytes, prev_hash: bytes) -> tuple[bytes, bytes]:
    """The record's bytes and its hash, sha256(prev_hash || length, seq, kind, flags || payload)."""
    prefix = _PREFIX.pack(len(payload), seq, kind, 0)
    digest = hashlib.sha256(prev_hash + prefix + payload).digest()
    body = prefix + digest + payload
    return _CRC.pack(zlib.crc32(body)) + body, digest


def first_record_claim(image: bytes) -> tuple[int, int] | None:
    """What the first record's header claims, unchecked: its kind and the offset where it ends."""
    if len(image) < HEADER_SIZE + RECORD_OVERHEAD:
        return None
    _crc, length, _seq, kind, _flags = _RECORD.unpack_from(image, HEADER_SIZE)
    return kind, HEADER_SIZE + RECORD_OVERHEAD + length


def first_record_kind(image: bytes) -> int | None:
    """The kind of the segment's first record if that record is whole and its CRC holds."""
    claim = first_record_claim(image)
    if claim is None or claim[1] > len(image):
        return None
    crc = _CRC.unpack_from(image, HEADER_SIZE)[0]
    return claim[0] if zlib.crc32(memoryview(image)[HEADER_SIZE + 4 : claim[1]]) == crc else None


class SegmentScan:
    """Walks the records of one segment image, checking CRC, seq and (if `chain`) hash links.

    Iterate it for the records, or call `check()` to walk without building them. Afterwards `end`,
    `seq` and `hash` describe the last valid record (or the header, if there is none) and `fault`
    says why the walk stopped early, if it did. Cost per record: one CRC-32, a copy of the payload
    and, with `chain`, one SHA-256; without it the stored hash is trusted (the CRC covers it).
    """

    def __init__(self, image: bytes, header: SegmentHeader, *, chain: bool = True) -> None:
        self.image = image
        self.chain = chain
        self.end = HEADER_SIZE
        self.seq = header.first_seq - 1
        self.hash = header.prev_hash
        self.fault: Fault | None = None

    def __iter__(self) -> Iterator[Record]:
        return self._walk(build=True)

    def check(self) -> None:
        for _ in self._walk(build=False):
            pass

    def _walk(self, *, build: bool) -> Iterator[Record]:
        image, view, size, chain = self.image, memoryview(self.image), len(self.image), self.chain
        off, seq, prev = self.end, self.seq, self.hash
        sha256, crc32, unpack = hashlib.sha256, zlib.crc32, _RECORD.unpack_from
        try:
            while off < size:
                if size - off < RECORD_OVERHEAD:
                    self.fault = Fault(off, f"partial record header ({size - off} bytes)", True)
                    return
                crc, length, rseq, kind, flags = unpack(image, off)
                end = off + RECORD_OVERHEAD + length
                if end > size or crc32(view[off + _HASHED_FROM : end]) != crc:
                    self.fault = _damage(off, end, size)
                    return
                if rseq != seq + 1 or flags:
                    self.fault = _misfit(off, rseq, seq, flags)
                    return
                payload = image[off + RECORD_OVERHEAD : end]
                stored = image[off + _HASH_AT : off + RECORD_OVERHEAD]
                if chain and stored != sha256(
                        prev + image[off + _HASHED_FROM : off + _HASH_AT] + payload).digest():
                    self.fault = _broken_link(off, rseq, seq)
                    return
                off, seq, prev = end, rseq, stored
                if build:
                    yield Record(seq, kind, payload, prev)
        finally:
            # Written once when the walk ends or the consumer stops: cheaper than per record.
            self.end, self.seq, self.hash = off, seq, prev


def _damage(off: int, end: int, size: int) -> Fault:
    if end > size:
        return Fault(off, f"record runs {end - size} bytes past the end of the segment", True)
    return Fault(off, "record CRC mismatch", True)


def _broken_link(off: int, rseq: int, seq: int) -> Fault:
    return Fault(off, f"record {rseq} does not chain from record {seq} (hash mismatch)", False)


def _misfit(off: int, rseq: int, seq: int, flags: int) -> Fault:
    if flags:
        return Fault(off, f"record {rseq} has unknown flags {flags:#06x}", False)
    return Fault(off, f"record seq {rseq} where {seq + 1} was expected", False)


def record_follows(image: bytes, offset: int, after_seq: int) -> bool:
    """Whether a whole, CRC-valid record with a seq above `after_seq` starts after `offset`.

    This tells a torn tail (nothing valid after the damage: the unsynced end of the log) from damage
    in the middle (valid records after it, so fsynced data that must not be cut off). Damage may
    hide where the next record starts, so candidates are found by searching for the upper six bytes
    of every seq the rest of the image could hold; one C-speed `find` per 65,536 seqs.
    """
    highest = after_seq + (len(image) - offset) // RECORD_OVERHEAD + 1
    for block in range((after_seq + 1) >> 16, (highest >> 16) + 1):
        needle = struct.pack("<Q", block << 16)[2:]
        hit = image.find(needle, offset + 1 + _SEQ_HIGH_AT)
        while hit != -1:
            if _valid_at(image, hit - _SEQ_HIGH_AT, after_seq):
                return True
            hit = image.find(needle, hit + 1)
    return False


def _valid_at(image: bytes, off: int, after_seq: int) -> bool:
    if len(image) - off < RECORD_OVERHEAD:
        return False
    crc, length, seq, _kind, _flags = _RECORD.unpack_from(image, off)
    end = off + RECORD_OVERHEAD + length
    if seq <= after_seq or end > len(image):
        return False
    return bool(zlib.crc32(memoryview(image)[off + _HASHED_FROM : end]) == crc)
