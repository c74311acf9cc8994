"""Flight recorder cost: what a route's flight page adds to each frame on the shm ring.

    python -m bench.recorder [--runs 5] [--reps 8]

Run by `python -m bench.lanes` as one of its sections, or alone. Every measurement alternates a
ring without a flight page and the same geometry with one (attached at both ends, as the SDK
attaches it), rep by rep, so that drift on a shared machine falls on both alike:

- two processes, 64 B, busy-poll, one push / one pop per message (the lanes benchmark's "shm
  busy-poll, single" lane): throughput, and ns/frame added = 1e9/thr_with - 1e9/thr_without
  for each adjacent pair of reps; then a paced run of each for one-way p50/p99 (pop_timed, which
  reads the clock with or without a page, so only the recording differs);
- one process, one core: push then pop of one frame in a tight loop (64 B and 4 KiB), and
  send_many/drain of 64 frames, ns per frame with and without. No second core and no cache-line
  transfer, so the difference is the recorder's own work: the producer's two counter bumps,
  and the consumer's clock read, three counter bumps and a histogram bucket.

With a page, a plain `pop`/`drain` reads CLOCK_MONOTONIC per call to compute the latency it
records; without one it reads no clock. That read is part of the measured cost. Every figure is
the median over all reps of all runs. After each recorded run the page's rx_frames is checked
against the frames sent, so a page that silently records nothing cannot pass.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import pair
from rtt_fabric import _ring, flight, ring

ROUTE = 1
SIZE = 64
LOOP_SIZES = (64, 4096)
BATCH = 64
FLIGHT_BAR_NS = 50.0
ORDERS: tuple[Callable[[Any, Any], tuple[Any, Any]], ...] = (
    lambda a, b: (a, b), lambda a, b: (b, a))  # alternate which goes first, rep by rep


class Ends:
    """A ring with no page and a ring of the same geometry with one, both busy-poll only."""

    def __init__(self, *, slot_count: int, max_payload: int) -> None:
        self.plain = ring.create(slot_count=slot_count, max_payload=max_payload, doorbell=False)
        base = ring.create(slot_count=slot_count, max_payload=max_payload, doorbell=False)
        self.page_fd, self.page = flight.create(ROUTE)
        try:
            self.recorded = ring.attach(os.dup(base.fd), flight=self.page)
        finally:
            base.close()

    def rx_frames(self) -> int:
        return flight.read(self.page).counters["rx_frames"]

    def close(self) -> None:
        self.plain.close()
        self.recorded.close()
        self.page.close()
        os.close(self.page_fd)


# ---------------------------------------------------------------- two processes


def recv(end: ring.RingMap, count: int, timed: bool) -> tuple[int, list[int]]:
    r, lat = end.ring, list[int]()
    if timed:
        while len(lat) < count:
            item = r.pop_timed()
            if item is None:
                r.wait(0, 0)
            else:
                lat.append(item[3])
        return time.monotonic_ns(), lat
    got = 0
    while got < count:
        if r.pop() is None:
            r.wait(0, 0)
        else:
            got += 1
    return time.monotonic_ns(), lat


def _two_process(ends: Ends, *, count: int, samples: int, pace_ns: int,
                 order: Callable[[Any, Any], tuple[Any, Any]],
                 out: dict[str, list[float]]) -> None:
    """One rep: throughput and paced latency with and without the page, in `order`."""
    for label, end in order(("without", ends.plain), ("with", ends.recorded)):
        before = ends.rx_frames()
        rate, _ = pair.run_pair(pair.shm_send, recv, end, count=count, size=SIZE)
        _, lat = pair.run_pair(pair.shm_send, recv, end, count=samples, size=SIZE, pace_ns=pace_ns)
        if label == "with" and ends.rx_frames() - before != count + samples:
            raise AssertionError("the flight page did not record every frame")
        out[f"tput_{label}"].append(rate)
        out[f"p50_{label}"].append(pair.pct(lat, 0.50))
        out[f"p99_{label}"].append(pair.pct(lat, 0.99))
    out["added_ns"].append(1e9 / out["tput_with"][-1] - 1e9 / out["tput_without"][-1])


# ---------------------------------------------------------------- one process


def loop_single(r: _ring.Ring, count: int, payload: bytes) -> float:
    """ns per frame for push-then-pop of one frame, `count` times."""
    push, pop = r.push, r.pop
    start = time.perf_counter_ns()
    for frame in range(count):
        push(ROUTE, frame, payload)
        pop()
    return (time.perf_counter_ns() - start) / count


def loop_batch(r: _ring.Ring, count: int, payload: bytes) -> float:
    """ns per frame for send_many of BATCH frames then drain of them."""
    send_many, drain, batch = r.send_many, r.drain, [payload] * BATCH
    start = time.perf_counter_ns()
    for first in range(0, count, BATCH):
        send_many(ROUTE, first, batch)
        drain(BATCH)
    return (time.perf_counter_ns() - start) / (count // BATCH * BATCH)


def _one_process(*, count: int, reps: int, out: dict[str, list[float]]) -> None:
    pair.pin(0)
    for size in LOOP_SIZES:
        ends = Ends(slot_count=BATCH * 2, max_payload=size)
        payload = bytes(size)
        try:
            for rep in range(reps):
                for shape, loop in (("single", loop_single), ("batch", loop_batch)):
                    if rep % 2:
                        with_page = loop(ends.recorded.ring, count, payload)
                        without = loop(ends.plain.ring, count, payload)
                    else:
                        without = loop(ends.plain.ring, count, payload)
                        with_page = loop(ends.recorded.ring, count, payload)
                    out[f"{shape}_{size}_without"].append(without)
                    out[f"{shape}_{size}_with"].append(with_page)
                    out[f"{shape}_{size}_added"].append(with_page - without)
        finally:
            ends.close()


def _one_process_child(count: int, reps: int, conn: Any) -> None:
    out: dict[str, list[float]] = collections.defaultdict(list)
    _one_process(count=count, reps=reps, out=out)
    conn.send(dict(out))


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Median over every rep of every run, for each figure."""
    out: dict[str, list[float]] = collections.defaultdict(list)
    pace_ns = args.pace_us * 1000
    for run in range(args.runs):
        ends = Ends(slot_count=4096, max_payload=SIZE)
        try:
            for rep in range(args.reps):
                _two_process(ends, count=args.flight_count, samples=args.flight_samples,
                             pace_ns=pace_ns, order=ORDERS[rep % 2], out=out)
        finally:
            ends.close()
        # In a child, so pinning one core does not follow the caller into later sections.
        rx, tx = pair.FORK.Pipe(duplex=False)
        proc = pair.FORK.Process(target=_one_process_child, args=(args.loop_count, args.reps, tx))
        proc.start()
        for key, values in rx.recv().items():
            out[key].extend(values)
        proc.join()
        print(f"flight recorder: run {run + 1}/{args.runs} done", file=sys.stderr)
    res = {key: statistics.median(values) for key, values in out.items()}
    res["min_added_ns"] = 1e9 / max(out["tput_with"]) - 1e9 / max(out["tput_without"])
    for size in LOOP_SIZES:
        for shape in ("single", "batch"):
            key = f"{shape}_{size}"
            res[key + "_min_added"] = min(out[key + "_with"]) - min(out[key + "_without"])
    return res


def report(res: dict[str, float], args: argparse.Namespace) -> None:
    print(f"## Flight recorder cost (median of {args.runs} runs x {args.reps} alternating "
          "reps)\n")
    print("| measurement | without page | with page | added per frame, median | "
          "fastest with - fastest without |")
    print("|---|---:|---:|---:|---:|")
    print(f"| two processes, 64 B, busy-poll push/pop: msgs/s | "
          f"{pair.fmt_rate(res['tput_without'])} | {pair.fmt_rate(res['tput_with'])} | "
          f"{res['added_ns']:.1f} ns | {res['min_added_ns']:.1f} ns |")
    print(f"| two processes, 64 B, paced one-way p50 / p99 µs | "
          f"{res['p50_without']:.2f} / {res['p99_without']:.2f} | "
          f"{res['p50_with']:.2f} / {res['p99_with']:.2f} | | |")
    for size in LOOP_SIZES:
        for shape, what in (("single", "push + pop"), ("batch", f"send_many/drain x{BATCH}")):
            key = f"{shape}_{size}"
            print(f"| one process, {size} B, {what}: ns/frame | {res[key + '_without']:.1f} | "
                  f"{res[key + '_with']:.1f} | {res[key + '_added']:.1f} ns | "
                  f"{res[key + '_min_added']:.1f} ns |")
    print(f"\nTwo-process: {args.flight_count} frames per throughput rep, {args.flight_samples} "
          f"paced every {args.pace_us} µs per latency rep; one-process: {args.loop_count} "
          "frames per rep. \"Added\" is the median of per-rep differences; the last column "
          "compares each side's best rep (for msgs/s, the highest), which preemption by other "
          "load can only make worse.\n")


def bars(res: dict[str, float]) -> list[tuple[str, str, bool]]:
    single = res["single_64_added"]
    return [(f"flight recorder ≤ {FLIGHT_BAR_NS:.0f} ns/frame added (one process, 64 B push+pop)",
             f"{single:.1f} ns", single <= FLIGHT_BAR_NS),
            (f"flight recorder ≤ {FLIGHT_BAR_NS:.0f} ns/frame added (two processes, 64 B)",
             f"{res['added_ns']:.1f} ns", res["added_ns"] <= FLIGHT_BAR_NS)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=8, help="alternating reps per run")
    parser.add_argument("--flight-count", type=int, default=1_000_000,
                        help="frames per two-process throughput rep")
    parser.add_argument("--flight-samples", type=int, default=5_000,
                        help="paced frames per two-process latency rep")
    parser.add_argument("--loop-count", type=int, default=200_000,
                        help="frames per one-process rep")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recorder", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pace-us", type=int, default=50)
    add_arguments(parser)
    args = parser.parse_args(argv)
    res = measure(args)
    report(res, args)
    for bar, got, ok in bars(res):
        print(f"| {bar} | {got} | {'yes' if ok else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
