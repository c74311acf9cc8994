"""The example service of docs/sdk.md: a "metrics" publisher and a "dashboard" subscriber.

    python docs/examples/metrics_service.py metrics   --socket PATH [--count N] [--batch B]
    python docs/examples/metrics_service.py dashboard --socket PATH [--count N] [--asyncio]

Each role is a service of its own. It connects to the node daemon through the SDK, which
registers its manifest, attaches one end of its symbol, and runs until it has sent or received
`--count` samples. The dashboard checks every sample against what the metrics service sends for
that sequence number and prints one summary line; it exits 1 if any sample is missing, repeated,
out of order or altered. docs/examples/route.py commits the route between the two, and
tests/fabric/test_sdk_example.py runs the walk-through of docs/sdk.md end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from typing import Any

import rtt_fabric

METRICS_OUT = "rtt://metrics/out/cpu"  # the metrics service's symbol: it sends from here
DASHBOARD_IN = "rtt://dashboard/in/cpu"  # the dashboard's symbol: it receives here
VERSION = "1.0.0"


def manifest(saddr: str) -> list[dict[str, Any]]:
    """A one-symbol manifest: what the service offers, at which versions, over which lanes."""
    return [{"saddr": saddr, "type": "metric", "versions": [VERSION],
             "lanes": ["shm", "uds", "tcp"]}]


def sample(seq: int) -> bytes:
    """The seq-th CPU sample, as the metrics service sends it and the dashboard expects it."""
    load = 50 + 40 * math.sin(seq / 10)
    body = {"seq": seq, "host": "demo", "cpu_pct": round(load, 3)}
    return json.dumps(body, separators=(",", ":")).encode()


def connect(socket_path: str, *, service: str, saddr: str,
            timeout_s: float) -> rtt_fabric.Connection:
    """`rtt_fabric.connect`, retried while the daemon is not listening yet (it may be starting
    alongside this service)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return rtt_fabric.connect(socket_path, service=service, symbols=manifest(saddr))
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run_metrics(args: argparse.Namespace) -> int:
    with connect(args.socket, service="metrics", saddr=METRICS_OUT,
                 timeout_s=args.timeout) as conn:
        pub = conn.publisher(METRICS_OUT)
        deadline = time.monotonic() + args.timeout
        while not pub.routes:  # a send with no route goes nowhere: wait for the COMMIT
            if time.monotonic() > deadline:
                print("metrics: no route was committed", file=sys.stderr)
                return 1
            time.sleep(0.01)
        admitted = 0
        for first in range(0, args.count, args.batch):
            batch = range(first, min(first + args.batch, args.count))
            admitted += pub.send_many(sample(seq) for seq in batch)
        # Under the `buffer` policy some samples may still wait in this process; closing the
        # connection now would discard them, so push them out first.
        while pub.flush():
            if time.monotonic() > deadline:
                print(f"metrics: {pub.backlog()} samples still buffered", file=sys.stderr)
                return 1
            time.sleep(0.001)
        routes = len(pub.routes)
    print(f"metrics: sent {args.count} samples on {routes} route(s), {admitted} admitted")
    return 0


def collect(sub: rtt_fabric.Subscriber, count: int, timeout_s: float) -> list[rtt_fabric.Frame]:
    """Up to `count` frames, blocking in `drain` (spin, then sleep on the doorbell)."""
    frames: list[rtt_fabric.Frame] = []
    deadline = time.monotonic() + timeout_s
    while len(frames) < count and (left := deadline - time.monotonic()) > 0:
        frames += sub.drain(count - len(frames), timeout_s=left)
    return frames


async def collect_async(sub: rtt_fabric.Subscriber, count: int,
                        timeout_s: float) -> list[rtt_fabric.Frame]:
    """The same with `recv_async`, which sleeps in the event loop instead of the thread."""
    frames: list[rtt_fabric.Frame] = []

    async def receive() -> None:
        while len(frames) < count:
            frames.append(await sub.recv_async())

    with contextlib.suppress(TimeoutError):  # report what did arrive
        await asyncio.wait_for(receive(), timeout_s)
    return frames


def verdict(frames: list[rtt_fabric.Frame], count: int) -> list[str]:
    """What is wrong with the frames received, for a dashboard that expected `count`."""
    problems = [] if len(frames) == count else [f"received {len(frames)} of {count} samples"]
    for i, frame in enumerate(frames):
        if frame.sender != METRICS_OUT:
            problems.append(f"frame {i}: from {frame.sender}")
        if frame.frame_id != i:  # one publisher, every sample admitted: ids run 0, 1, 2, ...
            problems.append(f"frame {i}: frame id {frame.frame_id}")
        if frame.payload != sample(i):
            problems.append(f"frame {i}: payload altered or out of order")
        if frame.marked:
            problems.append(f"frame {i}: marked as sent over the route's rate")
    return problems


def run_dashboard(args: argparse.Namespace) -> int:
    with connect(args.socket, service="dashboard", saddr=DASHBOARD_IN,
                 timeout_s=args.timeout) as conn:
        sub = conn.subscriber(DASHBOARD_IN)
        if args.asyncio:
            frames = asyncio.run(collect_async(sub, args.count, args.timeout))
        else:
            frames = collect(sub, args.count, args.timeout)
    for frame in frames[::100]:
        print(f"dashboard: {frame.payload.decode()}")
    problems = verdict(frames, args.count)
    for problem in problems[:10]:
        print(f"dashboard: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"dashboard: {len(frames)} samples from {METRICS_OUT}, "
          f"frame ids 0..{len(frames) - 1} in order, all intact")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=("metrics", "dashboard"))
    parser.add_argument("--socket", required=True, help="the node daemon's control socket")
    parser.add_argument("--count", type=int, default=500, help="samples to send or receive")
    parser.add_argument("--batch", type=int, default=10, help="samples per send_many (metrics)")
    parser.add_argument("--asyncio", action="store_true",
                        help="receive with recv_async in an event loop (dashboard)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="give up after this long")
    args = parser.parse_args(argv)
    return run_metrics(args) if args.role == "metrics" else run_dashboard(args)


if __name__ == "__main__":
    sys.exit(main())
