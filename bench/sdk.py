"""SDK lane benchmark: what a service gets through `rtt_fabric.sdk`, per lane, process to process.

    python -m bench.sdk [--runs 5] [--sdk-count 200000] [--samples 20000] [--pace-us 50]

Run by `python -m bench.lanes` as one of its sections (so the raw ring and the peers are measured
in the same invocation), or alone. Per run:

1. a fresh node daemon, `python -m rtt_controller.cli.main fabric serve --node n0`, on a
   temporary state directory;
2. two services registered (`benchpub`, `benchsub`), one route per row below committed with
   prepare/commit: class p2p, `throughput_qps` 100,000,000 (the protocol's maximum, so admission
   never refuses), backpressure `buffer` (nothing is dropped, so every frame sent must arrive),
   `latency_budget_ms` --budget-ms (see below);
3. per row, a publisher process and a subscriber process, pinned to different cores, each with
   its own `sdk.connect`. The publisher calls `Publisher.send` once per message and flushes its
   buffer at the end; the subscriber calls `Subscriber.drain(1024)` until every frame is in, and
   checks that frame ids arrive consecutively.

Throughput: the publisher's clock before its first send to the subscriber's after its last frame.
One-way latency, paced (one message every --pace-us): two figures per message, both on
CLOCK_MONOTONIC. "SDK" is from just before `send` (a stamp in the payload) to `drain` returning
it; "flight" is the route's flight-page histogram (enqueue stamp in the frame header to dequeue in
the C core), read with the daemon's `flight` request before and after the phase. A flight
quantile is the middle of its log-linear bucket (exact below 64 ns, within 1/128 above).

The latency budget sizes the shm ring: the plan accounts two budgets of frames at the rated qps in
256-byte units (graph.ring_bytes), and the daemon cuts that memory into 4 KiB slots. The default
0.1 ms gives 8 MiB, 2,048 slots; 10 ms would need 512 MiB, more than the daemon's default shm
budget of 256 MiB. Payloads: 64 B, and 4,064 B rather than 4 KiB, since an SDK shm slot carries
at most 4,064 payload bytes (dataplane.SHM_SLOT_PAYLOAD); every lane uses the same sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import pair
from rtt_fabric import client, dataplane, flight, ring, sdk

NODE = "n0"
PUB_SERVICE, SUB_SERVICE = "benchpub", "benchsub"
SIZES = (64, dataplane.SHM_SLOT_PAYLOAD)
PLAN = "sha256-" + "be" * 32
QPS = 100_000_000
# (label, tag in the saddr, lane, subscriber busy-polls)
ROWS: tuple[tuple[str, str, str, bool], ...] = (
    ("SDK shm, busy-poll", "shm-busy", "shm", True),
    ("SDK shm, default wait", "shm-wait", "shm", False),
    ("SDK uds, busy-poll", "uds-busy", "uds", True),
    ("SDK tcp (loopback), busy-poll", "tcp-busy", "tcp", True),
)
Phase = tuple[int, int, bool]  # (payload size, messages, paced and timed)


def saddrs(tag: str) -> tuple[str, str]:
    return f"rtt://{PUB_SERVICE}/out/{tag}", f"rtt://{SUB_SERVICE}/in/{tag}"


def _symbols(index: int) -> list[dict[str, Any]]:
    return [{"saddr": saddrs(tag)[index], "type": "api", "versions": ["1.0.0"], "caps": ["c"],
             "lanes": ["shm", "uds", "tcp"]} for _, tag, _, _ in ROWS]


def _link(tag: str, lane: str, budget_ms: float) -> dict[str, Any]:
    src, dst = saddrs(tag)
    return {"from": src, "to": dst, "class": "p2p", "lane": lane, "from_node": NODE,
            "to_node": NODE, "version": "1.0.0", "caps": ["c"],
            "qos": {"latency_budget_ms": budget_ms, "throughput_qps": QPS,
                    "backpressure": "buffer"}}


@contextlib.contextmanager
def daemon(root: Path, *, budget_ms: float) -> Iterator[Path]:
    """A node daemon on `root`, both services registered and every row's route committed;
    yields its control socket."""
    sock, log = root / "fabric.sock", root / "daemon.log"
    argv = [sys.executable, "-m", "rtt_controller.cli.main", "fabric", "serve",
            "--state", str(root / "state"), "--socket", str(sock), "--node", NODE]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    try:
        _wait_ready(proc, sock, log)
        for index, service in enumerate((PUB_SERVICE, SUB_SERVICE)):
            with client.Client(sock) as c:  # a connection speaks for one service
                c.call("register", service=service, symbols=_symbols(index))
        with client.Client(sock) as c:
            steps = [{"op": "add", "link": _link(tag, lane, budget_ms)}
                     for _, tag, lane, _ in ROWS]
            vote = c.call("prepare", txid="bench-sdk", plan_id=PLAN, steps=steps)
            if vote.get("vote") != "ack":
                raise RuntimeError(f"prepare refused: {vote}")
            c.call("commit", txid="bench-sdk")
        yield sock
    finally:
        proc.terminate()
        proc.wait(20)


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError, ConnectionError), client.Client(sock, timeout_s=1) as c:
            c.call("status")
            return
        time.sleep(0.02)
    raise RuntimeError(f"daemon not ready:\n{log.read_text()}")


# ---------------------------------------------------------------- the two services


def _publisher(*, sock: Path, tag: str, phases: list[Phase], pace_ns: int, go: Any,
               out: Any) -> None:
    pair.pin(0)  # before connect, so the SDK's control thread shares the core
    with sdk.connect(sock, service=PUB_SERVICE, symbols=_symbols(0)) as conn:
        pub = conn.publisher(saddrs(tag)[0])
        deadline = time.monotonic() + 20
        while not pub.routes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no route for {tag}")
            time.sleep(0.005)
        starts, refused = [], 0
        for size, count, timed in phases:
            payload = bytes(size)
            go.wait()
            send, sent = pub.send, 0
            start = time.monotonic_ns()
            for _ in range(count):
                if timed:
                    sent = pair.paced(pace_ns, sent)
                    refused += 1 - send(pair.stamped(payload))
                else:
                    refused += 1 - send(payload)
            while pub.flush():
                pass
            starts.append(start)
        out.send((starts, refused))
        go.wait()  # the subscriber has everything: now the lanes may close


def _flight_sample(sock: Path, tag: str) -> flight.Histogram:
    src, dst = saddrs(tag)
    with client.Client(sock) as c:
        routes = c.call("flight")["routes"]
    (route,) = [r for r in routes if (r["from"], r["to"]) == (src, dst)]
    counts = [0] * flight.BUCKETS
    for index, n in route["buckets"]:
        counts[index] = n
    return flight.Histogram(tuple(counts))


def _receive(sub: Any, count: int, timed: bool, next_id: int) -> tuple[int, list[int], int, int]:
    """Drain `count` frames; (last-receive ns, SDK latencies, next frame id, frames out of
    order)."""
    drain, got, lat, skew = sub.drain, 0, list[int](), 0
    unpack, now = pair.STAMP.unpack_from, time.monotonic_ns
    while got < count:
        frames = drain(1024, timeout_s=10.0)
        if not frames:
            raise RuntimeError(f"no frame for 10 s after {got} of {count}")
        if timed:
            at = now()
            lat.extend(at - unpack(f.payload)[0] for f in frames)
        for frame in frames:
            skew += frame.frame_id != next_id
            next_id = frame.frame_id + 1
        got += len(frames)
    return now(), lat, next_id, skew


def _subscriber(*, sock: Path, tag: str, busy: bool, phases: list[Phase], go: Any,
                out: Any) -> None:
    pair.pin(1)
    policy = ring.WaitPolicy(busy_poll=True) if busy else ring.WaitPolicy()
    with sdk.connect(sock, service=SUB_SERVICE, symbols=_symbols(1)) as conn:
        sub = conn.subscriber(saddrs(tag)[1], wait=policy)
        results, next_id, skew = [], 0, 0
        for _size, count, timed in phases:
            before = _flight_sample(sock, tag) if timed else None
            go.wait()
            last, lat, next_id, bad = _receive(sub, count, timed, next_id)
            skew += bad
            hist = _flight_sample(sock, tag) - before if before is not None else None
            results.append((last, lat, hist))
        out.send((results, skew))
        go.wait()


def run_row(sock: Path, tag: str, busy: bool, phases: list[Phase],
            pace_ns: int) -> list[dict[str, float]]:
    """One publisher and one subscriber process through every phase; a figure dict per phase."""
    go = pair.FORK.Barrier(2)
    prx, ptx = pair.FORK.Pipe(duplex=False)
    crx, ctx = pair.FORK.Pipe(duplex=False)
    subp = pair.FORK.Process(target=_subscriber, kwargs={
        "sock": sock, "tag": tag, "busy": busy, "phases": phases, "go": go, "out": ctx})
    pubp = pair.FORK.Process(target=_publisher, kwargs={
        "sock": sock, "tag": tag, "phases": phases, "pace_ns": pace_ns, "go": go, "out": ptx})
    subp.start()
    pubp.start()
    starts, refused = prx.recv()
    results, skew = crx.recv()
    pubp.join()
    subp.join()
    if refused or skew:
        raise RuntimeError(f"{tag}: {refused} frames refused, {skew} out of order")
    figures = []
    for (_size, count, timed), start, (last, lat, hist) in zip(phases, starts, results,
                                                                strict=True):
        if not timed:
            figures.append({"tput": count / ((last - start) / 1e9)})
            continue
        figures.append({"p50": pair.pct(lat, 0.50), "p99": pair.pct(lat, 0.99),
                        "flight_p50": (hist.quantile(0.50) or 0) / 1000,
                        "flight_p99": (hist.quantile(0.99) or 0) / 1000})
    return figures


def measure(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, float]]:
    """Median over runs of every figure, for every (row, size)."""
    samples: dict[tuple[str, int], dict[str, list[float]]] = {}
    phases: list[Phase] = []
    for size in SIZES:
        count = args.sdk_count if size <= 64 else args.sdk_count // 2
        phases += [(size, count, False), (size, args.samples, True)]
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp, \
                daemon(Path(tmp), budget_ms=args.budget_ms) as sock:
            for label, tag, _lane, busy in ROWS:
                figures = run_row(sock, tag, busy, phases, args.pace_us * 1000)
                for (size, _, _), fig in zip(phases, figures, strict=True):
                    cell = samples.setdefault((label, size), {})
                    for key, value in fig.items():
                        cell.setdefault(key, []).append(value)
        print(f"sdk: run {run + 1}/{args.runs} done", file=sys.stderr)
    return {key: {k: statistics.median(v) for k, v in cell.items()}
            for key, cell in samples.items()}


def report(res: dict[tuple[str, int], dict[str, float]], args: argparse.Namespace, *,
           raw: dict[int, float] | None = None, zmq: dict[int, float] | None = None) -> None:
    """`raw` and `zmq`: msgs/s by size of the raw shm ring (busy-poll, single) and of pyzmq,
    measured in the same invocation, for the ratio columns."""
    big = SIZES[1]
    print(f"## SDK lanes (median of {args.runs} runs; daemon, publisher and subscriber are "
          f"three processes; qps {QPS:,}, backpressure buffer, budget {args.budget_ms} ms)\n")
    ratio = " x raw ring | x pyzmq |" if raw and zmq else ""
    print(f"| lane | 64 B msgs/s |{ratio} {big} B msgs/s |{ratio} 64 B p50 / p99 µs, SDK | "
          f"64 B p50 / p99 µs, flight | {big} B p50 / p99 µs, SDK | "
          f"{big} B p50 / p99 µs, flight |")
    cols = 7 + (4 if ratio else 0)
    print("|---|" + "---:|" * (cols - 1))
    for label, *_ in ROWS:
        row = [label]
        for size in SIZES:
            tput = res[(label, size)]["tput"]
            row.append(pair.fmt_rate(tput))
            if raw and zmq:
                ref = raw[size if size <= 64 else 4096]
                row += [f"{tput / ref:.2f}x", f"{tput / zmq[size if size <= 64 else 4096]:.2f}x"]
        for size in SIZES:
            cell = res[(label, size)]
            row += [f"{cell['p50']:.2f} / {cell['p99']:.2f}",
                    f"{cell['flight_p50']:.2f} / {cell['flight_p99']:.2f}"]
        print("| " + " | ".join(row) + " |")
    print(f"\nThroughput: {args.sdk_count} messages of 64 B, {args.sdk_count // 2} of {big} B, "
          f"one `send` each. Latency: {args.samples} messages paced every {args.pace_us} µs.")
    if ratio:
        print("Ratios are against the raw ring (busy-poll, single push/pop) and pyzmq of the same "
              f"invocation; the raw and peer rows used 4096 B where this uses {big} B.")
    print()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sdk-count", type=int, default=200_000,
                        help="64 B messages per SDK throughput phase (half that at 4 KiB)")
    parser.add_argument("--budget-ms", type=float, default=0.1,
                        help="the routes' latency_budget_ms (sizes the shm ring)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pace-us", type=int, default=50)
    parser.add_argument("--samples", type=int, default=20_000)
    add_arguments(parser)
    args = parser.parse_args(argv)
    report(measure(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
