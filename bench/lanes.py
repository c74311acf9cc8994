"""Lane benchmark: the shm ring against the usual ways to move messages between two processes.

    python -m bench.lanes [--runs 3] [--pace-us 50] [--samples 20000] [--skip recorder,sdk]

Three sections, in one invocation so that every ratio compares figures from the same sitting:
this module's raw lanes (below), the flight recorder's cost per frame (bench.recorder) and the
lanes as a service gets them through the SDK and a node daemon (bench.sdk). Each prints its own
Markdown table; the last table holds issue 5's bars.

Two forked processes, pinned to different cores when there are two or more, exchange 64 B and
4 KiB messages over:

- shm busy-poll: rtt_fabric.ring, consumer spinning. "single" is one `push` / one `pop` per
  message; "batch" is `send_many` of 64 KiB worth of frames (1024 x 64 B, 16 x 4 KiB) and
  `drain` of four such batches, labelled separately.
- shm doorbell: the default wait policy (spin 50 µs, then block on the eventfd), one message
  per call. Also the consumer's CPU time while idle for 1 s.
- multiprocessing.Queue (put/get), an AF_UNIX socketpair with a u32 length prefix (one sendall
  per message; the reader parses a 256 KiB buffer), and pyzmq PUSH/PULL over ipc://.

Throughput: the producer stamps CLOCK_MONOTONIC before its first send, the consumer after its
last receive; msgs/s = count / (last - first). One-way latency: a separate paced run, one message
every --pace-us, --samples messages; the shm lanes use the frame's enqueue stamp (taken in C at
push), the peers a time.monotonic_ns() written into the first 8 payload bytes before sending. Both
processes read the same CLOCK_MONOTONIC. Every figure is the median of --runs runs (percentiles
within a run, then the median across runs). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import struct
import sys
import tempfile
import time
from typing import Any

import zmq

from bench import pair, recorder, sdk
from rtt_fabric import _ring, ring

SIZES = (64, 4096)
ROUTE = 1
BATCH_BYTES = 64 * 1024  # send_many batches of 64 B x 1024 or 4 KiB x 16; drains take 4 batches
COUNTS = {"shm": 2_000_000, "peer": 300_000}  # per throughput run, 64 B; 4 KiB uses a quarter
LEN = struct.Struct("<I")
STAMP, FORK = pair.STAMP, pair.FORK


def _batch(size: int) -> int:
    """Frames per send_many. Draining 256 x 4 KiB frames per call measured 0.5M msgs/s against
    2.4M for 64 per call here, so batches are sized in bytes, not frames."""
    return max(1, BATCH_BYTES // max(size, 64))


# ---------------------------------------------------------------- shm ring


def shm_send_batch(end: ring.RingMap, count: int, payload: bytes, pace_ns: int) -> int:
    send_many, batch, frame = end.ring.send_many, [payload] * _batch(len(payload)), 0
    start = time.monotonic_ns()
    while frame < count:
        frame += send_many(ROUTE, frame, batch if count - frame >= len(batch)
                           else batch[:count - frame])
    return start


BUSY, BELL = ring.WaitPolicy(busy_poll=True), ring.WaitPolicy()


def _wait(r: _ring.Ring, policy: ring.WaitPolicy) -> None:
    """What ring.recv does between empty polls: spin with `pause`, then maybe sleep."""
    r.wait(policy.spin_ns, 0 if policy.busy_poll else policy.backstop_ms)


def _shm_recv(end: ring.RingMap, count: int, timed: bool,
              policy: ring.WaitPolicy) -> tuple[int, list[int]]:
    r, got, in_order, lat = end.ring, 0, 0, list[int]()
    if timed:
        while len(lat) < count:
            item = r.pop_timed()
            if item is None:
                _wait(r, policy)
            else:
                lat.append(item[3])
        return time.monotonic_ns(), lat
    while got < count:
        frame = r.pop()
        if frame is None:
            _wait(r, policy)
        else:
            in_order += frame[1] == got
            got += 1
    assert in_order == count, "frames out of order"
    return time.monotonic_ns(), lat


def shm_recv_single(end: ring.RingMap, count: int, timed: bool) -> tuple[int, list[int]]:
    return _shm_recv(end, count, timed, BUSY)


def shm_recv_doorbell(end: ring.RingMap, count: int, timed: bool) -> tuple[int, list[int]]:
    return _shm_recv(end, count, timed, BELL)


def shm_recv_batch(end: ring.RingMap, count: int, timed: bool) -> tuple[int, list[int]]:
    drain, got, most = end.ring.drain, 0, _batch(end.ring.max_payload) * 4
    while got < count:
        n = len(drain(most))
        if n:
            got += n
        else:
            _wait(end.ring, BUSY)
    return time.monotonic_ns(), []


# ---------------------------------------------------------------- peers


def queue_send(q: Any, count: int, payload: bytes, pace_ns: int) -> int:
    start, sent = time.monotonic_ns(), 0
    for _ in range(count):
        if pace_ns:
            sent = pair.paced(pace_ns, sent)
            q.put(pair.stamped(payload))
        else:
            q.put(payload)
    return start


def queue_recv(q: Any, count: int, timed: bool) -> tuple[int, list[int]]:
    lat = []
    for _ in range(count):
        msg = q.get()
        if timed:
            lat.append(time.monotonic_ns() - STAMP.unpack_from(msg)[0])
    return time.monotonic_ns(), lat


def sock_send(socks: tuple[socket.socket, socket.socket], count: int, payload: bytes,
              pace_ns: int) -> int:
    sock, prefix, sent = socks[0], LEN.pack(len(payload)), 0
    start = time.monotonic_ns()
    for _ in range(count):
        if pace_ns:
            sent = pair.paced(pace_ns, sent)
            sock.sendall(prefix + pair.stamped(payload))
        else:
            sock.sendall(prefix + payload)
    return start


def sock_recv(socks: tuple[socket.socket, socket.socket], count: int,
              timed: bool) -> tuple[int, list[int]]:
    sock, buf, got, lat = socks[1], b"", 0, []
    while got < count:
        buf += sock.recv(1 << 18)
        at = 0
        while len(buf) - at >= LEN.size:
            (n,) = LEN.unpack_from(buf, at)
            if len(buf) - at - LEN.size < n:
                break
            msg = buf[at + LEN.size:at + LEN.size + n]
            if timed:
                lat.append(time.monotonic_ns() - STAMP.unpack_from(msg)[0])
            at += LEN.size + n
            got += 1
        buf = buf[at:]
    return time.monotonic_ns(), lat


def zmq_send(addr: str, count: int, payload: bytes, pace_ns: int) -> int:
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
        push.connect(addr)
        time.sleep(0.05)  # let the connection settle so the first message is not the slow one
        start, sent = time.monotonic_ns(), 0
        for _ in range(count):
            if pace_ns:
                sent = pair.paced(pace_ns, sent)
                push.send(pair.stamped(payload))
            else:
                push.send(payload)
        push.setsockopt(zmq.LINGER, -1)
        return start


def zmq_recv(addr: str, count: int, timed: bool) -> tuple[int, list[int]]:
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as pull:
        pull.bind(addr)
        lat = []
        for _ in range(count):
            msg = pull.recv()
            if timed:
                lat.append(time.monotonic_ns() - STAMP.unpack_from(msg)[0])
        return time.monotonic_ns(), lat


# ---------------------------------------------------------------- harness


def _idle_cpu(end: ring.RingMap, out: Any) -> None:
    cpu = time.process_time()
    ring.recv(end, ring.WaitPolicy(), timeout_s=1.0)
    out.send(time.process_time() - cpu)


def idle_cpu_seconds() -> float:
    """Consumer CPU time while it waits 1 s on an empty ring with the default policy."""
    with ring.create(slot_count=64, max_payload=64) as end:
        rx, tx = FORK.Pipe(duplex=False)
        proc = FORK.Process(target=_idle_cpu, args=(end, tx))
        proc.start()
        spent: float = rx.recv()
        proc.join()
        return spent


LANES: list[tuple[str, pair.Producer, pair.Consumer, str]] = [
    ("shm busy-poll, single", pair.shm_send, shm_recv_single, "shm"),
    ("shm busy-poll, batch", shm_send_batch, shm_recv_batch, "shm"),
    ("shm doorbell, single", pair.shm_send, shm_recv_doorbell, "shm-bell"),
    ("multiprocessing.Queue", queue_send, queue_recv, "queue"),
    ("AF_UNIX socketpair", sock_send, sock_recv, "sock"),
    ("pyzmq PUSH/PULL ipc://", zmq_send, zmq_recv, "zmq"),
]


def _make_end(kind: str, size: int, tmp: str) -> Any:
    if kind in ("shm", "shm-bell"):
        return ring.create(slot_count=4096 if size <= 64 else 1024, max_payload=size,
                           doorbell=kind == "shm-bell")
    if kind == "queue":
        return FORK.Queue(maxsize=10_000)
    if kind == "sock":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return f"ipc://{tmp}/lane-{size}.ipc"


def _close_end(end: Any) -> None:
    if isinstance(end, ring.RingMap):
        end.close()
    elif isinstance(end, tuple):
        for sock in end:
            sock.close()
    elif not isinstance(end, str):
        end.close()
        end.join_thread()


def measure(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, float]]:
    """Median over runs of throughput, p50 and p99 for every (lane, size)."""
    samples: dict[tuple[str, int], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, producer, consumer, kind in LANES:
                for size in SIZES:
                    base = COUNTS["shm" if kind.startswith("shm") else "peer"]
                    count = base if size <= 64 else base // 4
                    cell = samples.setdefault((name, size), {"tput": [], "p50": [], "p99": []})
                    end = _make_end(kind, size, tmp)
                    try:
                        rate, _ = pair.run_pair(producer, consumer, end, count=count, size=size)
                        cell["tput"].append(rate)
                        if "batch" not in name:
                            _, lat = pair.run_pair(producer, consumer, end,
                                                   count=args.samples, size=size,
                                                   pace_ns=args.pace_us * 1000)
                            cell["p50"].append(pair.pct(lat, 0.50))
                            cell["p99"].append(pair.pct(lat, 0.99))
                    finally:
                        _close_end(end)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    return {key: {k: statistics.median(v) if v else float("nan") for k, v in cell.items()}
            for key, cell in samples.items()}


def report(res: dict[tuple[str, int], dict[str, float]], idle_cpu: float,
           args: argparse.Namespace) -> None:
    """The raw lanes' table (issue 5's bars come separately, from `bars`)."""
    zmq_name = LANES[-1][0]
    print(f"## Lane benchmark ({platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, pyzmq {zmq.pyzmq_version()} / "
          f"libzmq {zmq.zmq_version()}; median of {args.runs} runs)\n")
    print("| lane | 64 B msgs/s | x pyzmq | 4 KiB msgs/s | x pyzmq | 64 B p50 / p99 µs | "
          "4 KiB p50 / p99 µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, *_ in LANES:
        row = [name]
        for size in SIZES:
            cell, ref = res[(name, size)], res[(zmq_name, size)]["tput"]
            row += [pair.fmt_rate(cell["tput"]), f"{cell['tput'] / ref:.1f}x"]
        for size in SIZES:
            cell = res[(name, size)]
            row.append("—" if cell["p50"] != cell["p50"]
                       else f"{cell['p50']:.2f} / {cell['p99']:.2f}")
        print("| " + " | ".join(row) + " |")
    print(f"\nLatency: {args.samples} messages paced every {args.pace_us} µs. Shm doorbell "
          f"consumer CPU while idle for 1 s: {idle_cpu * 1000:.1f} ms.\n")


def bars(res: dict[tuple[str, int], dict[str, float]],
         idle_cpu: float) -> list[tuple[str, str, bool]]:
    """Issue 5's bars for the raw shm lane: (bar, measured, met)."""
    single, batch = res[("shm busy-poll, single", 64)], res[("shm busy-poll, batch", 64)]
    best64 = max(single["tput"], batch["tput"])
    best4k = max(res[("shm busy-poll, single", 4096)]["tput"],
                 res[("shm busy-poll, batch", 4096)]["tput"])
    zmq64 = res[("pyzmq PUSH/PULL ipc://", 64)]["tput"]
    bell = res[("shm doorbell, single", 64)]
    return [
        ("64 B ≥ 5M msgs/s (single / batch)", f"{pair.fmt_rate(single['tput'])} / "
         f"{pair.fmt_rate(batch['tput'])}", best64 >= 5e6),
        ("64 B one-way p50 ≤ 1 µs", f"{single['p50']:.2f} µs", single["p50"] <= 1),
        ("64 B one-way p99 ≤ 3 µs", f"{single['p99']:.2f} µs", single["p99"] <= 3),
        ("≥ 10x pyzmq (64 B, best shm)", f"{best64 / zmq64:.1f}x", best64 >= 10 * zmq64),
        ("4 KiB ≥ 1.5M msgs/s (best shm)", pair.fmt_rate(best4k), best4k >= 1.5e6),
        ("doorbell p50 ≤ 5 µs (64 B)", f"{bell['p50']:.2f} µs", bell["p50"] <= 5),
        ("doorbell idle CPU near zero (1 s)", f"{idle_cpu * 1000:.1f} ms", idle_cpu < 0.01),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lanes", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pace-us", type=int, default=50)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out: "
                        "recorder, sdk")
    recorder.add_arguments(parser)
    sdk.add_arguments(parser)
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    res = measure(args)
    idle_cpu = statistics.median(idle_cpu_seconds() for _ in range(args.runs))
    met = bars(res, idle_cpu)
    flight = None if "recorder" in skip else recorder.measure(args)
    done = None if "sdk" in skip else sdk.measure(args)
    report(res, idle_cpu, args)
    if flight is not None:
        recorder.report(flight, args)
        met += recorder.bars(flight)
    if done is not None:
        sdk.report(done, args, raw={s: res[("shm busy-poll, single", s)]["tput"] for s in SIZES},
                   zmq={s: res[("pyzmq PUSH/PULL ipc://", s)]["tput"] for s in SIZES})
    print("| issue 5 bar | measured | met |")
    print("|---|---:|:---:|")
    for bar, got, ok in met:
        print(f"| {bar} | {got} | {'yes' if ok else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
