"""A test service: a real process that attaches to the node daemon through the SDK.

    python -m tests.fabric.service pub|sub --socket S --service NAME --saddr SADDR [options]

`pub` sends frames whose payload is self-checking (a sequence number, then bytes derived from
it), `sub` receives and checks them. Each writes a JSON report to --out when done. Used by the
end-to-end fabric tests; it touches only the SDK's public surface, except where a test asks it
to inject a fault (--corrupt-at), which reaches into the lane it owns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

from rtt_fabric import _ring, endpoints, lanes, sdk

SEQ = struct.Struct("<Q")


def payload(seq: int, size: int) -> bytes:
    """`size` bytes (at least 8) that say which frame they are and can be checked."""
    head = SEQ.pack(seq)
    seed = hashlib.blake2b(head, digest_size=64).digest()
    body = (seed * (size // 64 + 1))[:max(0, size - len(head))]
    return head + body


def check(data: bytes) -> int | None:
    """The sequence number of an intact payload, or None if it is not one `payload` made."""
    if len(data) < SEQ.size:
        return None
    (seq,) = SEQ.unpack_from(data)
    return seq if payload(seq, len(data)) == data else None


def symbol(saddr: str) -> dict[str, Any]:
    return {"saddr": saddr, "type": "api", "versions": ["1.0.0"], "caps": ["c"],
            "lanes": ["shm", "uds", "tcp"]}


def _wait_routed(pub: endpoints.Publisher, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not pub.routes:
        if time.monotonic() > deadline:
            raise SystemExit("no route for the publisher")
        time.sleep(0.01)


def run_pub(args: argparse.Namespace, conn: sdk.Connection) -> dict[str, Any]:
    pub = conn.publisher(args.saddr)
    _wait_routed(pub, args.timeout)
    sizes = [int(s) for s in args.sizes.split(",")]
    admitted, oversize, refused, sent = 0, 0, 0, 0
    for seq in range(args.count):
        if args.until and Path(args.until).exists():
            break
        if args.corrupt_at == seq:
            while pub.flush():
                time.sleep(0.001)
            _inject_corrupt(pub, args.count)
        data = payload(seq, sizes[seq % len(sizes)])
        try:
            admitted += pub.send(data)
        except ValueError:
            oversize += 1
        except endpoints.Backpressure:
            refused += 1
        sent += 1
        if args.pace_us:
            time.sleep(args.pace_us / 1e6)
    while pub.flush():
        time.sleep(0.001)
    _await_generations(pub, args.until)
    if args.ready_after_send:
        Path(args.ready_after_send).write_text("sent")
    if args.linger:
        time.sleep(args.linger)
    return {"admitted": admitted, "oversize": oversize, "refused": refused, "sent": sent,
            "generations": pub.generations}


def _await_generations(handle: endpoints.Publisher | endpoints.Subscriber,
                       until: str | None) -> None:
    """An --until file may name how many lane sets the test pushed: under load they can lag
    the commits, so wait (up to a minute) until they have all been installed."""
    text = Path(until).read_text().split() if until and Path(until).exists() else []
    deadline = time.monotonic() + 60
    while len(text) > 1 and handle.generations < int(text[1]) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"service: {handle.saddr} installed {handle.generations} lane sets", file=sys.stderr)


def _inject_corrupt(pub: endpoints.Publisher, seq: int) -> None:
    """Send one frame whose crc32c does not match, straight onto the lane (a fault injection)."""
    out = next(iter(pub._routes.values()))
    lane, data = out.lane, payload(seq, 64)
    if isinstance(lane, lanes.ShmOut):
        assert lane.write(lane.route.route_id, out.next_id, data, 0)
        # The frame just written sits at head - 1 (FRAME.md); flip one payload byte in its slot.
        mapping, ring = lane.end.mapping, lane.end.ring
        head = int.from_bytes(mapping[64:72], "little") - 1
        mapping[256 + (head % ring.slot_count) * ring.slot_size + 40] ^= 0xFF
    else:
        frame = bytearray(_ring.encode(lane.route.route_id, out.next_id, [data], 0,
                                       lane.route.max_payload))
        frame[40] ^= 0xFF
        lane.sock.setblocking(True)
        lane.sock.sendall(frame)
    out.next_id += 1


class _Tally:
    """What a subscriber received: sequence numbers, frame ids, senders, damaged payloads."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.ids: list[int] = []
        self.senders: set[str] = set()
        self.bad = 0

    def add(self, frames: list[endpoints.Frame]) -> None:
        for frame in frames:
            seq = check(frame.payload)
            if seq is None:
                self.bad += 1
                continue
            self.seqs.append(seq)
            self.ids.append(frame.frame_id)
            self.senders.add(frame.sender)


def run_sub(args: argparse.Namespace, conn: sdk.Connection) -> dict[str, Any]:
    sub = conn.subscriber(args.saddr)
    if args.ready:
        Path(args.ready).write_text("ready")
    while args.go and not Path(args.go).exists():
        time.sleep(0.01)
    tally = _Tally()
    deadline = time.monotonic() + args.timeout
    quiet_since = None
    while len(tally.seqs) + tally.bad < args.count and time.monotonic() < deadline:
        frames = sub.drain(1024, timeout_s=0.2)
        if args.until and Path(args.until).exists():
            quiet_since = time.monotonic() if frames or quiet_since is None else quiet_since
            if time.monotonic() - quiet_since > 1.0:
                break
        tally.add(frames)
        if args.slow_ms:
            time.sleep(args.slow_ms / 1000)
    _await_generations(sub, args.until)
    while frames := sub.drain(1024, timeout_s=0.2):  # what arrived while waiting
        tally.add(frames)
    return {"seqs": tally.seqs, "frame_ids": tally.ids, "bad": tally.bad,
            "senders": sorted(tally.senders), "generations": sub.generations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("pub", "sub"))
    parser.add_argument("--socket", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--saddr", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--sizes", default="64")
    parser.add_argument("--pace-us", type=float, default=0)
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--linger", type=float, default=0)
    parser.add_argument("--slow-ms", type=float, default=0)
    parser.add_argument("--corrupt-at", type=int, default=-1,
                        help="before this frame, inject one whose crc32c is wrong")
    parser.add_argument("--also", action="append", default=[],
                        help="another symbol of the service to register (repeatable)")
    parser.add_argument("--ready", help="file to write once attached")
    parser.add_argument("--until", help="file whose existence ends the run")
    parser.add_argument("--ready-after-send", help="file to write once every frame is out")
    parser.add_argument("--go", help="file whose existence starts the receiving")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    symbols = [symbol(s) for s in (args.saddr, *args.also)]
    with sdk.connect(args.socket, service=args.service, symbols=symbols) as conn:
        report = run_pub(args, conn) if args.role == "pub" else run_sub(args, conn)
    Path(args.out).write_text(json.dumps({**report, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
