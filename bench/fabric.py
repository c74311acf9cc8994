"""Fabric benchmark: a real node daemon applying 10k routes, restarting, and answering calls.

    python -m bench.fabric [--runs 5] [--routes 10000] [--batch 256] [--calls 5000]

Every run starts fresh `rtt fabric serve` processes (fsync on, the default) in a new temporary
directory and talks to them through the blocking `rtt_fabric.client.Client`, as the coordinator
does. All routes sit on one node (from_node == to_node == the daemon's --node) with lanes mixed
shm/uds/tcp, shaped like bench/generate.py's (hooks -> api p2p, buses -> api), and --shm-mb is
sized so every shm ring fits.

- apply: register the symbols (one call per 4,096), then PREPARE + COMMIT --routes routes in
  batches of --batch (one fsync per PREPARE, one per COMMIT). Reports total wall time against the
  2 s bar, and time per batch: the median, the first and last few (growth with the graph), and
  the slowest.
- restart: daemon start until its first `status` reply, on an empty state and after the apply
  (a full WAL replay of the routes; no checkpoint is reached at these sizes).
- latency: p50/p99/p99.9 over --calls round trips on one connection: `status`, and a one-link
  PREPARE + COMMIT (alternately adding and deleting it). The same `status` on the node holding
  the applied routes, and `Daemon.handle` called in-process, split transport from handler time.
- peers, in the same run: a minimal asyncio Unix-socket server echoing the same JSON frame (the
  floor of this transport), and a Cap'n Proto RPC `status() -> (epoch, graphHash)` over a Unix
  socket (bench/capnp_peer; pycapnp is pinned in the dev lock as a peer, RTT does not use it).

WAL replay of 100k records is bench/wal.py's. Figures are medians over --runs runs (percentiles
are taken within a run, then the median across runs). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.metadata
import io
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rtt_fabric import daemon, graph, protocol
from rtt_fabric.client import Client

NODE = "n0"
APPLY_BAR_SECONDS = 2.0
REGISTER_CHUNK = 4096  # the protocol's limit on symbols per register call
WARMUP_CALLS = 200
EDGE_BATCHES = 5  # batches at each end of the apply whose median shows per-batch growth
LANES = (("shm", 5), ("uds", 3), ("tcp", 2))  # lane mix of the generated routes, by weight
SERVE = [sys.executable, "-m", "rtt_controller.cli.main", "fabric", "serve"]


# --- the workload -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    services: dict[str, list[dict[str, Any]]]  # service -> symbols, each under REGISTER_CHUNK
    links: list[dict[str, Any]]  # wire links, all on NODE
    shm_mb: int  # enough for every shm ring, with a megabyte to spare

    @property
    def symbols(self) -> int:
        return sum(len(s) for s in self.services.values())


def workload(routes: int, *, seed: int = 7) -> Workload:
    """bench/generate.py's layered graph, realized on one node with assigned lanes."""
    rng = random.Random(seed)
    n_api, n_bus_routes = max(4, routes // 4), routes // 5
    n_bus, n_hooks = max(1, n_bus_routes // 6), routes - n_bus_routes
    apis = [(f"rtt://svc{a // 20}/api/a{a}", f"1.{rng.randint(0, 3)}.0") for a in range(n_api)]
    senders = [f"rtt://app{h // 50}/hook/h{h}" for h in range(n_hooks)]
    buses = [f"rtt://bus{b // 20}/bus/b{b}" for b in range(n_bus)]
    decls = ([_symbol(s, "api", ("1.0.0", v)) for s, v in apis]
             + [_symbol(s, "bus", ("1.0.0",)) for s in buses]
             + [_symbol(s, "hook", ("1.0.0",)) for s in senders])
    links = [_link(rng, h, apis[rng.randrange(n_api)], "p2p") for h in senders]
    for b in range(n_bus_routes):
        links.append(_link(rng, buses[b % n_bus], apis[(b // n_bus) % n_api], "bus"))
    need = sum(graph.ring_bytes(lk["qos"]["throughput_qps"], lk["qos"]["latency_budget_ms"])
               for lk in links if lk["lane"] == "shm")
    services = {f"bench{k // REGISTER_CHUNK}": decls[k:k + REGISTER_CHUNK]
                for k in range(0, len(decls), REGISTER_CHUNK)}
    return Workload(services=services, links=links, shm_mb=math.ceil(need / 2**20) + 1)


def _symbol(saddr: str, kind: str, versions: tuple[str, ...]) -> dict[str, Any]:
    return {"saddr": saddr, "type": kind, "versions": sorted(set(versions)), "caps": ["data.rw"],
            "lanes": ["shm", "uds", "tcp"]}


def _link(rng: random.Random, src: str, dst: tuple[str, str], cls: str) -> dict[str, Any]:
    lane = rng.choices([lane for lane, _ in LANES], [w for _, w in LANES])[0]
    qos = {"latency_budget_ms": rng.choice([1, 2, 5, 10, 50]),
           "throughput_qps": rng.choice([100, 500, 1000, 5000, 20000, 50000]),
           "backpressure": "taildrop"}
    return {"from": src, "to": dst[0], "class": cls, "lane": lane, "from_node": NODE,
            "to_node": NODE, "version": dst[1], "caps": ["data.rw"], "qos": qos}


def plan_id(label: str) -> str:
    return "sha256-" + hashlib.sha256(label.encode()).hexdigest()


# --- processes --------------------------------------------------------------------------------


class Node:
    """One `rtt fabric serve` process on a state directory, as an operator would run it."""

    def __init__(self, root: Path, *, shm_mb: int) -> None:
        self.state, self.socket, self.log = root / "state", root / "fabric.sock", root / "log"
        self.shm_mb = shm_mb
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[float, dict[str, Any]]:
        """Start the daemon; return seconds until its first `status` reply, and that reply."""
        argv = [*SERVE, "--state", str(self.state), "--socket", str(self.socket),
                "--node", NODE, "--shm-mb", str(self.shm_mb)]
        with open(self.log, "ab") as log:
            start = time.perf_counter()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        while True:
            with contextlib.suppress(OSError, ConnectionError), Client(self.socket) as client:
                status = client.call("status")
                return time.perf_counter() - start, status
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')}")
            time.sleep(0.002)

    def client(self) -> Client:
        return Client(self.socket, timeout_s=60)

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; a clean stop exits 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(30) != 0:
            raise RuntimeError(f"daemon exited {self.proc.returncode} on SIGTERM")

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:  # a measurement failed midway
            self.proc.kill()
            self.proc.wait(30)


@contextlib.contextmanager
def server(argv: list[str], path: Path) -> Iterator[None]:
    """A peer server process, ready once its socket accepts a connection; killed on exit."""
    proc = subprocess.Popen([*argv, str(path)])
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, ConnectionError), Client(path):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv} did not start")
            time.sleep(0.01)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # The daemon's read loop minus the request handling: the floor of the transport.
    try:
        while True:
            header = await reader.readexactly(protocol.HEADER.size)
            body = await reader.readexactly(protocol.frame_length(header))
            writer.write(header + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


async def serve_echo(path: Path) -> None:
    async with await asyncio.start_unix_server(_echo, path=str(path)) as echo:
        await echo.serve_forever()


# --- measurements -----------------------------------------------------------------------------


def timed_calls(call: Callable[[int], object], calls: int) -> list[float]:
    """Seconds per call(i), after WARMUP_CALLS untimed ones."""
    for i in range(WARMUP_CALLS):
        call(i)
    seconds = []
    for i in range(WARMUP_CALLS, WARMUP_CALLS + calls):
        start = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - start)
    return seconds


def apply_run(root: Path, work: Workload, *, batch: int, calls: int) -> dict[str, Any]:
    with Node(root, shm_mb=work.shm_mb) as node:
        empty_start, _ = node.start()
        with node.client() as client:
            applied = apply_routes(client, work, batch=batch)
        node.stop()
        replay, status = node.start()
        if status["links"] != len(work.links):
            raise RuntimeError(f"replay gave {status['links']} links, not {len(work.links)}")
        with node.client() as client:
            loaded = timed_calls(lambda _: client.call("status"), loaded_calls(calls))
        node.stop()
    start = time.perf_counter()
    with in_process(node.state, shm_mb=work.shm_mb) as opened:
        open_replay = time.perf_counter() - start
        handle_loaded = timed_calls(status_handler(opened), loaded_calls(calls))
    return {**applied, "empty_start": empty_start, "replay": replay, "open_replay": open_replay,
            "status_loaded": loaded, "handle_loaded": handle_loaded}


def apply_routes(client: Client, work: Workload, *, batch: int) -> dict[str, float]:
    """Register the symbols, then PREPARE + COMMIT every link in batches: seconds spent."""
    chunks = [[{"op": "add", "link": lk} for lk in work.links[k:k + batch]]
              for k in range(0, len(work.links), batch)]
    start = time.perf_counter()
    for service, symbols in work.services.items():
        client.call("register", service=service, symbols=symbols)
    register = time.perf_counter() - start
    per_batch, start = [], time.perf_counter()
    for k, steps in enumerate(chunks):
        began = time.perf_counter()
        vote = client.call("prepare", txid=f"apply-{k}", plan_id=plan_id(f"apply-{k}"),
                           steps=steps)
        if vote["vote"] != "ack":
            raise RuntimeError(f"batch {k} refused: {vote['reason']}")
        client.call("commit", txid=f"apply-{k}")
        per_batch.append(time.perf_counter() - began)
    return {"register": register, "total": time.perf_counter() - start,
            "batch": statistics.median(per_batch), "slowest": max(per_batch),
            **batch_ends(per_batch, full=len(work.links) // batch)}


def batch_ends(per_batch: list[float], *, full: int) -> dict[str, float]:
    """Median of the first and of the last EDGE_BATCHES full batches.

    A median of a few, not one batch: the daemon's cyclic GC stops it for tens of milliseconds
    every few batches, and one batch would measure where that pause happened to land.
    """
    last = per_batch[:max(full, 1)][-EDGE_BATCHES:]
    return {"first": statistics.median(per_batch[:EDGE_BATCHES]),
            "last": statistics.median(last)}


def loaded_calls(calls: int) -> int:
    # A status call on a loaded node costs milliseconds: fewer calls keep a run short.
    return max(calls // 10, 100)


def latency_run(root: Path, calls: int) -> dict[str, list[float]]:
    a, b = "rtt://bench/api/a", "rtt://bench/hook/h"
    one = {"from": b, "to": a, "class": "p2p", "lane": "shm", "from_node": NODE,
           "to_node": NODE, "version": "1.0.0", "caps": ["c"],
           "qos": {"latency_budget_ms": 10, "throughput_qps": 1000, "backpressure": "taildrop"}}
    with Node(root, shm_mb=64) as node:
        node.start()
        with node.client() as client:
            client.call("register", service="bench", symbols=[_symbol(a, "api", ("1.0.0",)),
                                                              _symbol(b, "hook", ("1.0.0",))])

            def flip(i: int) -> None:
                txid = f"flip-{i}"
                steps = [{"op": "add" if i % 2 == 0 else "del", "link": one}]
                client.call("prepare", txid=txid, plan_id=plan_id(txid), steps=steps)
                client.call("commit", txid=txid)

            status = timed_calls(lambda _: client.call("status"), calls)
            flips = timed_calls(flip, calls)
        node.stop()
    with in_process(node.state, shm_mb=64) as opened:
        handle = timed_calls(status_handler(opened), calls)
    return {"status": status, "flip": flips, "handle": handle}


@contextlib.contextmanager
def in_process(state: Path, *, shm_mb: int) -> Iterator[daemon.Daemon]:
    """The daemon's own start-up (lock, WAL recovery, replay) on `state`, without serving."""
    node = daemon.Daemon(daemon.Config(state=state, socket=state / "unused.sock", node=NODE,
                                       shm_bytes=shm_mb << 20), environ={}, log=io.StringIO())
    node.open()
    try:
        yield node
    finally:
        node.close()


def status_handler(node: daemon.Daemon) -> Callable[[int], object]:
    """`Daemon.handle` of one status request body: the handler's share of a round trip."""
    return lambda i: node.handle(protocol.frame({"op": "status", "id": i})[protocol.HEADER.size:])


def echo_run(root: Path, calls: int) -> list[float]:
    path = root / "echo.sock"
    with server([sys.executable, "-m", "bench.fabric", "--serve-echo"], path), \
            Client(path) as client:

        def echo(i: int) -> None:
            client.send_raw(protocol.frame({"op": "status", "id": i}))
            client.receive()

        return timed_calls(echo, calls)


def capnp_run(root: Path, calls: int) -> list[float]:
    peer = importlib.import_module("bench.capnp_peer")
    path = root / "capnp.sock"
    with server([sys.executable, "-m", "bench.capnp_peer"], path):
        seconds: list[float] = peer.round_trips(path, warmup=WARMUP_CALLS, calls=calls)
        return seconds


def pycapnp_version() -> str | None:
    try:
        return importlib.metadata.version("pycapnp")
    except importlib.metadata.PackageNotFoundError:
        return None


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    work, runs = workload(args.routes), []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="rtt-bench-fabric-") as tmp:
            root = Path(tmp)
            (root / "apply").mkdir()
            (root / "latency").mkdir()
            run: dict[str, Any] = {
                **apply_run(root / "apply", work, batch=args.batch, calls=args.calls),
                **latency_run(root / "latency", args.calls), "echo": echo_run(root, args.calls)}
            if pycapnp_version() is not None:
                run["capnp"] = capnp_run(root, args.calls)
            runs.append(run)
    return runs


# --- the report -------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median_of(runs: list[dict[str, Any]], key: str, q: float | None = None) -> float:
    return statistics.median(r[key] if q is None else percentile(r[key], q) for r in runs)


def render(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    work = workload(args.routes)
    batches = math.ceil(args.routes / args.batch)
    capnp = pycapnp_version()
    lines = [
        f"cores: {os.cpu_count()}; Python {platform.python_version()}; {platform.system()} "
        f"{platform.release()}; median of {args.runs} runs; a fresh daemon per run, fsync on",
        f"peer: pycapnp {capnp} (a benchmark peer from the dev lock; RTT itself does not use it)"
        if capnp else "peer: pycapnp not installed: no Cap'n Proto row",
        "",
        f"| apply {args.routes:,} routes on one node, batch {args.batch} "
        f"({batches} batches, {2 * batches} fsyncs) | median |",
        "|---|---:|",
        f"| register {work.symbols:,} symbols (register calls: {len(work.services)}) "
        f"| {median_of(runs, 'register') * 1e3:.1f} ms |",
    ]
    full = args.routes // args.batch
    total = median_of(runs, "total")
    tail = (max(full - EDGE_BATCHES, 0) * args.batch, max(full - 1, 0) * args.batch)
    verdict = "meets" if total <= APPLY_BAR_SECONDS else "MISSES"
    lines += [
        f"| prepare + commit, total wall ({verdict} the {APPLY_BAR_SECONDS:.0f} s bar) "
        f"| {total:.3f} s |",
        f"| per batch (median) | {median_of(runs, 'batch') * 1e3:.1f} ms |",
        f"| first {EDGE_BATCHES} batches, median (from an empty graph) "
        f"| {median_of(runs, 'first') * 1e3:.1f} ms |",
        f"| last {EDGE_BATCHES} full batches, median ({tail[0]:,} to {tail[1]:,} links "
        "already committed) "
        f"| {median_of(runs, 'last') * 1e3:.1f} ms |",
        f"| slowest batch | {median_of(runs, 'slowest') * 1e3:.1f} ms |",
        f"| start to first status reply, empty state | {median_of(runs, 'empty_start'):.3f} s |",
        f"| start to first status reply, replaying {args.routes:,} routes "
        f"| {median_of(runs, 'replay'):.3f} s |",
        f"| of which `Daemon.open` (WAL recovery + replay), in-process "
        f"| {median_of(runs, 'open_replay'):.3f} s |",
        "",
        *latency_table(args, runs, capnp),
    ]
    return "\n".join(lines)


def latency_table(args: argparse.Namespace, runs: list[dict[str, Any]], capnp: str | None
                  ) -> list[str]:
    loaded = loaded_calls(args.calls)
    rows = [
        ("status", f"RTT daemon: `status` ({args.calls:,} calls)"),
        ("flip", f"RTT daemon: prepare + commit of one link, 2 round trips, 2 fsyncs "
                 f"({args.calls:,})"),
        ("status_loaded", f"RTT daemon: `status` with {args.routes:,} links loaded "
                          f"({loaded:,})"),
        ("handle", f"RTT `Daemon.handle(status)` in-process, no socket ({args.calls:,})"),
        ("handle_loaded", f"RTT `Daemon.handle(status)` in-process, {args.routes:,} links "
                          f"({loaded:,})"),
        ("echo", f"peer: asyncio Unix-socket echo of the same JSON frame ({args.calls:,})"),
    ]
    if capnp:
        rows.append(("capnp", f"peer: Cap'n Proto RPC `status()` over a Unix socket, pycapnp "
                              f"{capnp} ({args.calls:,})"))
    peers = ["echo", *(["capnp"] if capnp else [])]
    lines = ["| round trip, one connection, one call in flight | p50 | p99 | p99.9 | "
             + " | ".join(f"p50 / {p} | p99 / {p}" for p in peers) + " |",
             "|---|" + "---:|" * (3 + 2 * len(peers))]
    for key, label in rows:
        p50, p99, p999 = (median_of(runs, key, q) for q in (0.5, 0.99, 0.999))
        ratios = [f"{p50 / median_of(runs, p, 0.5):.2f}x | {p99 / median_of(runs, p, 0.99):.2f}x"
                  for p in peers]
        lines.append(f"| {label} | {p50 * 1e6:.0f} µs | {p99 * 1e6:.0f} µs | {p999 * 1e6:.0f} µs "
                     f"| {' | '.join(ratios)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fabric",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)  # the echo peer
    args = parser.parse_args(argv)
    if args.serve_echo is not None:
        asyncio.run(serve_echo(args.serve_echo))
        return 0
    print(render(args, measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
