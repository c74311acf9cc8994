"""Commit-to-converged benchmark: the GitOps loop from a `git commit` to observed == desired.

    python -m bench.converge [--routes 1000,10000] [--pushes 50] [--warmup 2]
                             [--routing auto,greedy] [--breakdown 12] [--no-check]
                             [--solver cbc|highs] [--plain-nodes] [--format markdown|json]

For each route count a fresh world, in a new temporary directory:

- a git repository (the real git CLI) holding a generated desired state: route i joins
  rtt://edge/out/pI to rtt://edge/in/pI (shm or uds, both ends on n0) or to rtt://core/in/pI
  (tcp, n0 -> n1), lanes mixed 5:3:2 shm/uds/tcp by index; symbols and routes in files of 250
  routes each (as bench/generate.py writes them), so an edit re-reads one file; policy with
  acl default allow, qos_defaults, two nodes with --shm-mb of ring budget, the planner's
  default `routing.greedy_threshold` (1000: ILP up to 1,000 routes) unless --routing greedy,
  the default rollout batches (64 steps) and `rollout: {canary: false}`: a canary waits out SLO
  windows between steps (10 s each by default) and, with no traffic here, could only end
  inconclusive, so it measures the policy rather than the loop;
- two `rtt fabric serve` daemons n0 and n1 (n0 reaches n1's data listener with --peer), in
  strict mode with the controller's key as their trust policy, so every PREPARE carries the
  signed plan and the node verifies it (signing on, end to end); `--plain-nodes` drops strict
  mode. Every symbol is registered on its node first, one register call per service
  (a service per 4,096 symbols);
- `rtt controller run --sign-key KEY` as its own process (no GIL shared with this one), with its
  default resync (30 s) and solver (cbc), on a commit with every symbol and no route.

Then, timed from t0 = just before `git commit` starts (the ref update happens inside it) to the
first poll of the controller's status.json that shows phase "converged" at the new head (the
loop writes it after its own verify: the nodes' observed graph hashed equal to the plan's desired
graph):

- initial converge: one commit adding all --routes routes, from an empty fabric (reported once);
- --warmup untimed pushes, then --pushes pushes, each changing one route, in a cycle of four:
  remove route r, add r back, move route j between shm and uds, move it back (r and j drawn
  from a seeded RNG without repeats; the route count stays at or below --routes, so 1,000
  routes stay on the ILP).

Status is polled every --poll-ms (2 ms); the poll's own cost is measured and printed, and bounds
the resolution. `git commit`'s own wall time is reported separately. After each push this
process checks, untimed, that the nodes' graphs hash to the status's desired graph hash
(--no-check skips that).

Breakdown: the controller is then restarted with `--otel console` (state kept, so it starts
converged; its first pass, which reads and plans everything, is waited out) and --breakdown more
pushes are timed the same way; its OpenTelemetry spans
(reconcile, plan, sign, apply) split each pass, matched to the push by revision: wake-up (t0 to
the pass starting: git commit, the watcher, its debounce), observe (reading both nodes' graphs,
status writes), plan, sign (+ self-verify), store and status, apply (2PC batches + verify), and
from the apply's end to this process seeing "converged" (history line, status write, the poll).
Medians over those pushes; span times have microsecond resolution.

Prints the machine's core count and load, and Markdown tables (or one JSON document).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from rtt_controller.signing import keys
from rtt_fabric import graph
from rtt_fabric.client import Client

ROUTES_PER_FILE = 250  # bench/generate.py's team-sized file
REGISTER_CHUNK = 4096  # the protocol's limit on symbols per register call
BAR_P50_S, BAR_P99_S = 0.250, 1.0  # the bar, at 1,000 routes
QOS = {"throughput_qps": 1000, "latency_budget_ms": 10}  # 16 KiB of ring per shm route
RTT = [sys.executable, "-m", "rtt_controller.cli.main"]
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
KINDS = ("remove", "add", "lane", "lane back")
STOP_GRACE_S = 60.0


def lane_of(i: int) -> str:
    """shm, uds, tcp by 5:3:2 over the route index."""
    k = i % 10
    return "shm" if k < 5 else "uds" if k < 8 else "tcp"


# --- the desired state ------------------------------------------------------------------------


def symbols_yaml(first: int, last: int) -> str:
    lines = ["symbols:"]
    for i in range(first, last):
        for saddr, node in ((f"rtt://edge/out/p{i}", "n0"), (f"rtt://edge/in/p{i}", "n0"),
                            (f"rtt://core/in/p{i}", "n1")):
            lines += [f"  - saddr: {saddr}", "    type: api", "    version: 1.0.0",
                      "    caps: [c]", f"    node: {node}"]
    return "\n".join(lines) + "\n"


def routes_yaml(routes: dict[int, str], first: int, last: int) -> str:
    """Routes first..last-1 that exist, each with its lane (tcp goes to core/in on n1)."""
    lines = ["routes:"]
    for i in range(first, last):
        lane = routes.get(i)
        if lane is None:
            continue
        to = f"rtt://core/in/p{i}" if lane == "tcp" else f"rtt://edge/in/p{i}"
        lines += [f"  - from: rtt://edge/out/p{i}", f"    to: {to}", "    version: ^1",
                  f"    lane: {lane}"]
    return "\n".join(lines) + "\n" if len(lines) > 1 else "routes: []\n"


def policy_yaml(*, shm_mb: int, greedy: bool) -> str:
    routing = "routing:\n  greedy_threshold: 0\n" if greedy else ""
    return ("acl:\n  default: allow\n"
            f"qos_defaults: {{throughput_qps: {QOS['throughput_qps']}, "
            f"latency_budget_ms: {QOS['latency_budget_ms']}, backpressure: taildrop}}\n"
            f"nodes:\n  - {{name: n0, shm_mb: {shm_mb}}}\n  - {{name: n1, shm_mb: {shm_mb}}}\n"
            "rollout:\n  canary: false\n" + routing)


def chunks(width: int) -> Iterator[tuple[int, int, int]]:
    for k, first in enumerate(range(0, width, ROUTES_PER_FILE)):
        yield k, first, min(first + ROUTES_PER_FILE, width)


class Repo:
    """The desired state in a git repository, changed through files and the git CLI."""

    def __init__(self, path: Path, width: int) -> None:
        self.path, self.width = path, width
        path.mkdir()
        self.git("init", "-q", "-b", "main")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.path), *args], check=True,
                              capture_output=True, text=True, env={**os.environ, **GIT_ENV})
        return done.stdout.strip()

    def write(self, rel: str, text: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def seed(self, *, shm_mb: int, greedy: bool) -> str:
        for k, first, last in chunks(self.width):
            self.write(f"desired/symbols/s{k:04d}.yaml", symbols_yaml(first, last))
        self.write("policies/policy.yaml", policy_yaml(shm_mb=shm_mb, greedy=greedy))
        self.write_routes({}, range(self.width))
        return self.commit("symbols and policy, no route")[0]

    def write_routes(self, routes: dict[int, str], touched: Iterator[int] | range) -> None:
        for k in sorted({i // ROUTES_PER_FILE for i in touched}):
            first = k * ROUTES_PER_FILE
            self.write(f"desired/routes/r{k:04d}.yaml",
                       routes_yaml(routes, first, min(first + ROUTES_PER_FILE, self.width)))

    def commit(self, message: str) -> tuple[str, float, float]:
        """Stage, then `git commit`: the new head, t0 (perf_counter, just before the commit
        starts) and git's wall time."""
        self.git("add", "-A")
        t0 = time.perf_counter()
        self.git("commit", "-q", "-m", message)
        took = time.perf_counter() - t0
        return self.head(), t0, took

    def head(self) -> str:
        ref = self.path / ".git" / "refs" / "heads" / "main"
        try:
            return ref.read_text().strip()
        except FileNotFoundError:  # packed
            return self.git("rev-parse", "HEAD")


# --- processes --------------------------------------------------------------------------------


class Daemon:
    """One `rtt fabric serve` process."""

    def __init__(self, root: Path, node: str, *, shm_mb: int, coordinator: Path,
                 trust_file: Path | None) -> None:
        self.root, self.node = root, node
        root.mkdir()
        self.socket, self.log = root / "fabric.sock", root / "daemon.log"
        self.argv = [*RTT, "fabric", "serve", "--state", str(root / "state"), "--socket",
                     str(self.socket), "--node", node, "--shm-mb", str(shm_mb),
                     "--coordinator", str(coordinator)]
        if trust_file is not None:
            self.argv += ["--strict", "--trust", str(trust_file)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.argv, *extra], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ConnectionError), self.client() as client:
                client.call("status")
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"daemon {self.node} did not start:\n{tail(self.log)}")

    def client(self) -> Client:
        return Client(self.socket, timeout_s=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


class Controller:
    """`rtt controller run` as its own process; NDJSON passes (and spans) to a file."""

    def __init__(self, root: Path, repo: Repo, daemons: dict[str, Daemon], key: Path, *,
                 solver: str) -> None:
        self.root, self.state = root, root / "controller"
        self.argv = [*RTT, "controller", "run", "--repo", str(repo.path), "--state",
                     str(self.state), "--sign-key", str(key), "--format", "json",
                     "--solver", solver,
                     *[f"--fabric={n}={d.socket}" for n, d in daemons.items()]]
        self.proc: subprocess.Popen[bytes] | None = None
        self.out, self.err = root / "controller.out", root / "controller.err"

    def start(self, *extra: str, tag: str = "") -> None:
        self.out, self.err = (self.root / f"controller{tag}.out",
                              self.root / f"controller{tag}.err")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([*self.argv, *extra], stdout=out, stderr=err)

    def stop(self) -> None:
        """SIGTERM, as an operator stops it (the exporter flushes its last spans on the way
        out); SIGKILL only if it has not exited within STOP_GRACE_S."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def status(self) -> dict[str, Any]:
        try:
            data = orjson.loads((self.state / "status.json").read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def wait_converged(self, head: str, *, poll_s: float, timeout_s: float) -> tuple[float, int]:
        """perf_counter at the first poll that sees phase converged at `head`, and the number
        of polls it took."""
        deadline, polls = time.perf_counter() + timeout_s, 0
        while True:
            polls += 1
            status = self.status()
            now = time.perf_counter()
            if status.get("phase") == "converged" and status.get("revision") == head:
                return now, polls
            if status.get("judged_revision") == head or now > deadline or (
                    self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"no convergence on {head[:12]}: {status}\n"
                                   f"{tail(self.err)}")
            time.sleep(poll_s)

    def wait_first_pass(self, *, timeout_s: float) -> None:
        """Until the process has printed its first pass (a restarted controller's first pass
        reads and plans everything: no push is timed against it)."""
        deadline = time.monotonic() + timeout_s
        while not self.passes():
            if time.monotonic() > deadline or (self.proc is not None and
                                               self.proc.poll() is not None):
                raise RuntimeError(f"the controller made no pass:\n{tail(self.err)}")
            time.sleep(0.05)

    def passes(self) -> list[dict[str, Any]]:
        return [o for o in json_objects(self.out) if "outcome" in o]

    def spans(self) -> list[dict[str, Any]]:
        return [o for o in json_objects(self.out) if "context" in o and "start_time" in o]


def json_objects(path: Path) -> Iterator[dict[str, Any]]:
    """Every JSON object in a file of NDJSON lines and pretty-printed console-exporter spans."""
    text, decoder, at = path.read_text(errors="replace"), json.JSONDecoder(), 0
    while True:
        at = text.find("{", at)
        if at < 0:
            return
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at += 1
            continue
        if isinstance(value, dict):
            yield value


def tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


# --- one world --------------------------------------------------------------------------------


@dataclasses.dataclass
class Push:
    kind: str
    route: int
    git_s: float  # `git commit`'s wall time
    converged_s: float  # t0 to the first poll showing converged at the new head
    polls: int
    t0_ns: int  # wall clock at t0, to place the controller's spans
    head: str


class World:
    def __init__(self, root: Path, args: argparse.Namespace, routes: int, greedy: bool) -> None:
        self.root, self.args, self.n = root, args, routes
        self.repo = Repo(root / "repo", routes)
        key, _ = keys.generate("controller", root / "keys")
        _, private = keys.load(key)
        trust_file: Path | None = None
        if not args.plain_nodes:
            trust_file = root / "trust.yaml"
            trust_file.write_text(
                "trust:\n  strict_manifests: false\n  keys:\n    - key_id: controller\n"
                f"      public_key: {keys.public_key_text(private.public_key())}\n")
        coordinator = root / "controller" / "coordinator.sock"
        self.daemons = {n: Daemon(root / n, n, shm_mb=args.shm_mb, coordinator=coordinator,
                                  trust_file=trust_file) for n in ("n0", "n1")}
        self.controller = Controller(root, self.repo, self.daemons, key, solver=args.solver)
        self.greedy = greedy
        self.routes: dict[int, str] = {}
        # Routes are drawn without repeats: each cycle of four pushes returns to the same graph,
        # so every push is a plan not seen before in the run (a repeated plan id reused its 2PC
        # txids until ae37eb1, and is a case of its own, not the one measured here).
        self.draws = random.Random(11).sample(range(routes), routes)
        self._k = self._r = self._j = 0  # pushes made; the route removed; the route moved

    def start(self) -> None:
        n0, n1 = self.daemons["n0"], self.daemons["n1"]
        n1.start()
        with n1.client() as client:
            host, port = client.call("status")["data_address"]
        n0.start("--data-listen", "off", "--peer", f"n1={host}:{port}")
        self.register()
        seed = self.repo.seed(shm_mb=self.args.shm_mb, greedy=self.greedy)
        self.controller.start()
        self.controller.wait_converged(seed, poll_s=0.05, timeout_s=300)

    def register(self) -> None:
        per_node: dict[str, list[dict[str, Any]]] = {"n0": [], "n1": []}
        for i in range(self.n):
            for saddr, node in ((f"rtt://edge/out/p{i}", "n0"), (f"rtt://edge/in/p{i}", "n0"),
                                (f"rtt://core/in/p{i}", "n1")):
                per_node[node].append({"saddr": saddr, "type": "api", "versions": ["1.0.0"],
                                       "caps": ["c"], "lanes": ["shm", "uds", "tcp"]})
        for node, symbols in per_node.items():
            with self.daemons[node].client() as client:
                for k in range(0, len(symbols), REGISTER_CHUNK):
                    client.call("register", service=f"bench-{node}-{k // REGISTER_CHUNK}",
                                symbols=symbols[k:k + REGISTER_CHUNK])

    def stop(self) -> None:
        self.controller.stop()
        for d in self.daemons.values():
            d.stop()

    def push(self, kind: str, route: int, *, timeout_s: float) -> Push:
        self.repo.write_routes(self.routes, iter([route]))
        head, t0, git_s = self.repo.commit(f"{kind} route {route}")
        t0_ns = time.time_ns() - round((time.perf_counter() - t0) * 1e9)
        done, polls = self.controller.wait_converged(head, poll_s=self.args.poll_ms / 1e3,
                                                     timeout_s=timeout_s)
        return Push(kind, route, git_s, done - t0, polls, t0_ns, head)

    def initial(self) -> Push:
        self.routes = {i: lane_of(i) for i in range(self.n)}
        self.repo.write_routes(self.routes, range(self.n))
        head, t0, git_s = self.repo.commit(f"{self.n} routes")
        t0_ns = time.time_ns() - round((time.perf_counter() - t0) * 1e9)
        done, polls = self.controller.wait_converged(head, poll_s=self.args.poll_ms / 1e3,
                                                     timeout_s=3600)
        return Push("initial", -1, git_s, done - t0, polls, t0_ns, head)

    def one_change(self, k: int) -> tuple[str, int]:
        """Push k's change, applied to self.routes: a cycle of remove r, add r, lane j, back."""
        kind = KINDS[k % 4]
        if kind == "remove":
            self._r = self.draws.pop()
            del self.routes[self._r]
            return kind, self._r
        if kind == "add":
            self.routes[self._r] = lane_of(self._r)
            return kind, self._r
        if kind == "lane":
            self._j = self.draws.pop()
            while lane_of(self._j) == "tcp":
                self._j = self.draws.pop()
        self.routes[self._j] = ("uds" if self.routes[self._j] == "shm" else "shm")
        return kind, self._j

    def pushes(self, count: int, *, check: bool) -> list[Push]:
        done = []
        for _ in range(count):
            kind, route = self.one_change(self._k)
            self._k += 1
            pushed = self.push(kind, route, timeout_s=300)
            if check:
                self.check()
            done.append(pushed)
            time.sleep(self.args.gap_ms / 1e3)
        return done

    def check(self) -> None:
        """Untimed: the nodes' graphs (each link once) hash to the status's desired hash."""
        links: dict[graph.LinkKey, graph.Link] = {}
        for d in self.daemons.values():
            with d.client() as client:
                for item in client.call("get_graph")["graph"]["links"]:
                    link = graph.Link.from_json(item)
                    links[link.key] = link
        observed = graph.Graph.of(links.values())
        desired = self.controller.status().get("desired_graph_hash")
        if observed.hash != desired or len(links) != len(self.routes):
            raise RuntimeError(f"observed {observed.hash} ({len(links)} links) != desired "
                               f"{desired} ({len(self.routes)} routes)")


def poll_cost(controller: Controller, samples: int = 2000) -> float:
    """Seconds for one status.json read and parse, this process's side of a poll."""
    start = time.perf_counter()
    for _ in range(samples):
        controller.status()
    return (time.perf_counter() - start) / samples


def measure(args: argparse.Namespace, routes: int, greedy: bool) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rtt-bench-converge-") as tmp:
        world = World(Path(tmp), args, routes, greedy)
        try:
            began = time.perf_counter()
            world.start()
            setup_s = time.perf_counter() - began
            initial = world.initial()
            world.check()
            world.pushes(args.warmup, check=args.check)
            timed = world.pushes(args.pushes, check=args.check)
            passes = world.controller.passes()
            world.controller.stop()
            spans: list[dict[str, Any]] = []
            traced: list[Push] = []
            if args.breakdown:
                world.controller.start("--otel", "console", tag="-otel")
                world.controller.wait_first_pass(timeout_s=300)
                traced = world.pushes(args.breakdown, check=False)
                world.controller.stop()
                spans = world.controller.spans()
            poll_s = poll_cost(world.controller)
        finally:
            world.stop()
    outcomes: dict[str, int] = {}
    for p in passes:
        outcomes[p["outcome"]] = outcomes.get(p["outcome"], 0) + 1
    return {"routes": routes, "assigner": "greedy" if greedy else "auto",
            "algorithm": "greedy" if greedy or routes > 1000 else "ilp",
            "setup_s": setup_s, "initial": dataclasses.asdict(initial),
            "pushes": [dataclasses.asdict(p) for p in timed],
            "passes": outcomes, "poll_cost_s": poll_s,
            "breakdown": breakdown(traced, spans) if traced else {},
            "traced_converged_s": [p.converged_s for p in traced],
            "load_before": load_before, "load_after": os.getloadavg()}


# --- the breakdown from the controller's spans ------------------------------------------------


def _ns(stamp: str) -> int:
    when = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC)
    return round(when.timestamp() * 1e6) * 1000


PARTS = ("wake-up", "observe", "plan", "sign", "store, status", "apply + verify",
         "records, noticed")


def breakdown(pushes: list[Push], spans: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds of each part of the pass that converged each push."""
    by_trace: dict[str, dict[str, dict[str, Any]]] = {}
    for s in spans:
        by_trace.setdefault(s["context"]["trace_id"], {})[s["name"]] = s
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    for push in pushes:
        trace = next((t for t in by_trace.values() if "reconcile" in t and "apply" in t
                      and t["reconcile"]["attributes"].get("rtt.revision") == push.head), None)
        if trace is None:
            continue
        sign = trace.get("sign")
        t = {k: _ns(v["start_time"]) for k, v in trace.items()}
        e = {k: _ns(v["end_time"]) for k, v in trace.items()}
        sign_s = (e["sign"] - t["sign"]) / 1e9 if sign else 0.0
        end = push.t0_ns + round(push.converged_s * 1e9)
        parts["wake-up"].append((t["reconcile"] - push.t0_ns) / 1e9)
        parts["observe"].append((t["plan"] - t["reconcile"]) / 1e9)
        parts["plan"].append((e["plan"] - t["plan"]) / 1e9)
        parts["sign"].append(sign_s)
        parts["store, status"].append((t["apply"] - e["plan"]) / 1e9 - sign_s)
        parts["apply + verify"].append((e["apply"] - t["apply"]) / 1e9)
        parts["records, noticed"].append((end - e["apply"]) / 1e9)
    return {p: statistics.median(v) for p, v in parts.items() if v}


# --- the report -------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(result: dict[str, Any]) -> dict[str, float]:
    times = [p["converged_s"] for p in result["pushes"]]
    gits = [p["git_s"] for p in result["pushes"]]
    return {"p50": percentile(times, 0.5), "p90": percentile(times, 0.9),
            "p99": percentile(times, 0.99), "max": max(times), "min": min(times),
            "git_p50": percentile(gits, 0.5), "git_max": max(gits)}


def render(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    loads = [r["load_before"][0] for r in results] + [r["load_after"][0] for r in results]
    lines = [
        f"cores: {os.cpu_count()}; Python {platform.python_version()}; {platform.system()} "
        f"{platform.release()}; load (1 min) {min(loads):.2f} to {max(loads):.2f}; "
        f"{'plain' if args.plain_nodes else 'strict'} nodes; controller signs (ed25519); "
        f"{args.pushes} timed pushes after {args.warmup} untimed; poll every {args.poll_ms} ms",
        "",
        "| routes | assigner | initial converge | one-route push: p50 | p90 | p99 | max "
        "| min | `git commit` p50 | bar (1k: p50 ≤ 250 ms, p99 ≤ 1 s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s = summary(r)
        bar = ""
        if r["routes"] == 1000:
            ok = s["p50"] <= BAR_P50_S and s["p99"] <= BAR_P99_S
            bar = "met" if ok else "**not met**"
        lines.append(
            f"| {r['routes']:,} | {r['algorithm']} | {r['initial']['converged_s']:.2f} s "
            f"| {ms(s['p50'])} | {ms(s['p90'])} | {ms(s['p99'])} | {ms(s['max'])} "
            f"| {ms(s['min'])} | {ms(s['git_p50'])} | {bar} |")
    lines += ["", "| routes | assigner | push kind | p50 | max |", "|---:|---|---|---:|---:|"]
    for r in results:
        for kind in KINDS:
            times = [p["converged_s"] for p in r["pushes"] if p["kind"] == kind]
            if times:
                lines.append(f"| {r['routes']:,} | {r['algorithm']} | {kind} ({len(times)}) "
                             f"| {ms(percentile(times, 0.5))} | {ms(max(times))} |")
    if any(r["breakdown"] for r in results):
        shown = [r for r in results if r["breakdown"]]
        lines += ["", "Where a pass's time goes (medians over the --otel console pushes):", "",
                  "| part | " + " | ".join(f"{r['routes']:,} {r['algorithm']}" for r in shown)
                  + " |", "|---|" + "---:|" * len(shown)]
        for part in PARTS:
            lines.append(f"| {part} | " + " | ".join(ms(r["breakdown"].get(part, 0.0))
                                                     for r in shown) + " |")
        lines.append("| total, p50 of those pushes (otel on) | " + " | ".join(
            ms(percentile(r["traced_converged_s"], 0.5)) for r in shown) + " |")
    lines += ["", "Controller passes (NDJSON): " + "; ".join(
        f"{r['routes']:,} {r['algorithm']}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r["passes"].items())) for r in results),
        "Poll cost (status.json read + parse): " + ", ".join(
            f"{r['poll_cost_s'] * 1e6:.0f} µs" for r in results)
        + f"; resolution about {args.poll_ms} ms + that."]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.converge",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--routes", default="1000,10000",
                        help="route counts, comma-separated (default: 1000,10000)")
    parser.add_argument("--pushes", type=int, default=50, help="timed one-route pushes")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pushes first")
    parser.add_argument("--routing", default="auto,greedy",
                        help="auto (the policy's default greedy_threshold) and/or greedy "
                             "(greedy_threshold: 0), comma-separated; greedy is run only where "
                             "auto would pick the ILP (default: both)")
    parser.add_argument("--breakdown", type=int, default=12,
                        help="pushes under --otel console for the breakdown (0: none)")
    parser.add_argument("--solver", choices=("cbc", "highs"), default="cbc",
                        help="the controller's ILP backend (its default: cbc)")
    parser.add_argument("--poll-ms", type=float, default=2.0)
    parser.add_argument("--gap-ms", type=float, default=100.0,
                        help="idle time between a convergence and the next push")
    parser.add_argument("--shm-mb", type=int, default=4096)
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the untimed check of the nodes' graphs after each push")
    parser.add_argument("--plain-nodes", action="store_true",
                        help="nodes without --strict (PREPARE carries the signed plan unread)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args(argv)
    results = []
    for routes in (int(r) for r in args.routes.split(",")):
        for routing in args.routing.split(","):
            if routing == "greedy" and routes > 1000:
                continue
            results.append(measure(args, routes, greedy=routing == "greedy"))
            print(f"# {routes} routes, {routing}: done", file=sys.stderr, flush=True)
    if args.format == "json":
        print(json.dumps({"cores": os.cpu_count(), "args": vars(args), "results": results},
                         indent=1))
    else:
        print(render(args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
