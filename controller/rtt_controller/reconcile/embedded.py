"""The embedded default: a local fabric and a local git repository, for `rtt up`.

`rtt up` copies the shipped desired/ and policies/ into a new git repository (the real git CLI),
starts one node daemon per policy node (real processes on Unix sockets, asking the controller's
resolve socket about anything in doubt), registers the services that desired/symbols names on
their nodes (what the services themselves do when they start), and runs the loop with a key of
its own until the fabric converges. It then prints the status and stops everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rtt_controller import solvers
from rtt_controller.core import inventory, planner, versions
from rtt_controller.reconcile import coordinator as coord
from rtt_controller.signing import keys
from rtt_controller.source import directory
from rtt_controller.source.snapshot import ParseCache
from rtt_fabric.client import Client

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "rtt up", "GIT_AUTHOR_EMAIL": "rtt-up@localhost",
                "GIT_COMMITTER_NAME": "rtt up", "GIT_COMMITTER_EMAIL": "rtt-up@localhost"}


class SetupError(Exception):
    """The embedded fabric could not be set up (the message says which step and why)."""


def git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                              text=True, env={**os.environ, **GIT_IDENTITY}, timeout=60)
    except subprocess.CalledProcessError as exc:
        raise SetupError(f"git {' '.join(args)}: {exc.stderr.strip()}") from None
    return done.stdout.strip()


def make_repo(source: Path, repo: Path) -> str:
    """A new repository at `repo` holding `source`'s desired/ and policies/, committed on
    main. Returns the commit id."""
    for part in ("desired", "policies"):
        if not (source / part).is_dir():
            raise SetupError(f"{source}: no {part}/ folder to start from")
    repo.mkdir(parents=True)
    git(repo, "init", "--quiet", "--initial-branch=main")
    for part in ("desired", "policies"):
        shutil.copytree(source / part, repo / part)
    git(repo, "add", "desired", "policies")
    git(repo, "commit", "--quiet", "-m", "desired state from the shipped example")
    return git(repo, "rev-parse", "HEAD")


def desired_state(repo: Path, solver: str) -> planner.Desired:
    """The validated desired state of `repo`'s working tree with its placement chosen
    (planner.Rejected if invalid)."""
    return planner.desired_graph(directory.snapshot(repo, ParseCache()).files,
                                 base=inventory.EMPTY, solve=solvers.solver(solver),
                                 backend=solver)


def manifests(desired: planner.Desired) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """node -> service -> the symbols it registers there: each symbol on the node the plan
    places it (a pinned `node`, else the planner's choice; the first policy node for a symbol
    no route uses). The service is the saddr's first segment (rtt://<service>/...)."""
    first = desired.state.policy.nodes[0].name
    placed = desired.assignment.placement
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for entry in desired.state.symbols.values():
        sym = entry.value
        service = sym.saddr.split("/")[2]
        node = placed.get(sym.saddr) or sym.node or first
        out.setdefault(node, {}).setdefault(service, []).append({
            "saddr": sym.saddr, "type": sym.type,
            "versions": [versions.render(v) for v in sym.offered()], "caps": list(sym.caps),
            "lanes": [str(lane) for lane in sym.lanes]})
    return out


def traffic(desired: planner.Desired) -> dict[str, dict[str, Any]]:
    """node -> what its example traffic process publishes and subscribes (rtt_fabric.demo):
    every route's source sends, at most 200 frames a second and at most 70% of the slowest
    route it feeds (so admission never has to drop), and every route's target drains."""
    rates: dict[str, float] = {}
    sinks: set[str] = set()
    for demand in desired.demands:
        src, dst, _ = demand.key
        rates[src] = min(rates.get(src, 200.0), 0.7 * demand.throughput_qps)
        sinks.add(dst)
    out: dict[str, dict[str, Any]] = {}
    for node, services in manifests(desired).items():
        mine = {sym["saddr"] for symbols in services.values() for sym in symbols}
        out[node] = {"services": services,
                     "publish": sorted(s for s in mine if s in rates),
                     "rates": {s: rates[s] for s in sorted(mine) if s in rates},
                     "subscribe": sorted(s for s in mine if s in sinks)}
    return out


class Traffic:
    """One `python -m rtt_fabric.demo` process: a node's example services, sending."""

    def __init__(self, node: Node, spec: Mapping[str, Any]) -> None:
        path = node.root / "traffic.json"
        path.write_text(json.dumps({"socket": str(node.socket), **spec}), encoding="utf-8")
        self.log = node.root / "traffic.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "rtt_fabric.demo", str(path)],
                                         stdout=log, stderr=log)

    def stop(self) -> int:
        return _stop(self.proc)


@contextlib.contextmanager
def sending(nodes: Mapping[str, Node], specs: Mapping[str, Mapping[str, Any]]
            ) -> Iterator[list[Traffic]]:
    """Example traffic on every node while the context is open."""
    started: list[Traffic] = []
    try:
        for name, spec in sorted(specs.items()):
            started.append(Traffic(nodes[name], spec))
        yield started
    finally:
        for t in started:
            t.stop()


class Node:
    """One `rtt fabric serve` process of the embedded fabric."""

    def __init__(self, name: str, root: Path, coordinator: Path, *, data: tuple[str, int],
                 peers: Mapping[str, tuple[str, int]], cluster_key: Path) -> None:
        self.name, self.root = name, root
        self.socket = root / "fabric.sock"
        root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "rtt_controller.cli.main", "fabric", "serve",
                "--state", str(root / "state"), "--socket", str(self.socket), "--node", name,
                "--coordinator", str(coordinator), "--data-listen", f"{data[0]}:{data[1]}",
                "--cluster-key", str(cluster_key), "--in-doubt-after", "1",
                *[f"--peer={peer}={host}:{port}" for peer, (host, port) in sorted(peers.items())]]
        self.log = root / "daemon.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"node {self.name} exited ({self.proc.returncode}); "
                                 f"see {self.log}")
            with contextlib.suppress(OSError, ConnectionError), \
                    Client(self.socket, timeout_s=1) as client:
                client.call("status")
                return
            time.sleep(0.05)
        raise SetupError(f"node {self.name} not ready after {timeout_s:.0f} s; see {self.log}")

    def register(self, services: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        with Client(self.socket, timeout_s=10) as client:
            for service, symbols in sorted(services.items()):
                client.call("register", service=service, symbols=list(symbols))

    def stop(self) -> int:
        return _stop(self.proc)


@contextlib.contextmanager
def fabric(root: Path, names: Sequence[str], coordinator: Path) -> Iterator[dict[str, Node]]:
    """Start a node daemon per name; stop them all on the way out, whatever happened."""
    nodes: dict[str, Node] = {}
    root.mkdir(parents=True, exist_ok=True)
    key = root / "cluster.key"  # tcp lanes between the nodes prove they share it
    key.write_text(secrets.token_hex(32), encoding="ascii")
    key.chmod(0o600)
    data = {name: ("127.0.0.1", _free_port()) for name in names}
    try:
        for name in names:
            nodes[name] = Node(name, root / name, coordinator, data=data[name],
                               peers={p: a for p, a in data.items() if p != name},
                               cluster_key=key)
        for node in nodes.values():
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, 20 s to finish cleanly, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def _free_port() -> int:
    """A loopback port free right now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def participants(nodes: Mapping[str, Node]) -> dict[str, coord.Node]:
    return {name: coord.SocketNode(name, node.socket) for name, node in nodes.items()}


def controller_key(folder: Path) -> Path:
    """The embedded controller's signing key, made on first use."""
    key = folder / "controller.key"
    if not key.exists():
        keys.generate("controller", folder)
    return key
