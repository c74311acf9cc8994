"""A scratch world for the GitOps loop's end-to-end tests: a git repository (the real git CLI),
two node daemons (real processes) that ask the controller's resolve socket about anything in
doubt, and the controller itself, in this process (`Loop`) or as `rtt controller run`.

The desired state is generated: `width` publisher symbols on n0 (rtt://edge/out/pN) and as many
subscriber symbols on n1 (rtt://core/in/pN) and on n0 (rtt://edge/in/pN), each route pinned to
nodes by its symbols' `node`. `routes(...)` picks which routes exist and on which lane.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rtt_controller.reconcile import coordinator as coord
from rtt_controller.reconcile import loop, records
from rtt_controller.signing import keys
from tests.conftest import Repo, git
from tests.fabric.conftest import Daemon

NODES = ("n0", "n1")


def symbols_yaml(width: int) -> str:
    lines = ["symbols:"]
    for i in range(width):
        for saddr, node in ((f"rtt://edge/out/p{i}", "n0"), (f"rtt://core/in/p{i}", "n1"),
                            (f"rtt://edge/in/p{i}", "n0")):
            lines += [f"  - saddr: {saddr}", "    type: api", "    version: 1.0.0",
                      "    caps: [c]", f"    node: {node}"]
    return "\n".join(lines) + "\n"


def routes_yaml(routes: Iterable[tuple[int, str]]) -> str:
    """(i, lane) pairs: lane "tcp" joins edge/out/pI to core/in/pI (n0 -> n1); "shm" or "uds"
    joins it to edge/in/pI (both on n0)."""
    routes = list(routes)
    if not routes:
        return "routes: []\n"
    lines = ["routes:"]
    for i, lane in routes:
        to = f"rtt://core/in/p{i}" if lane == "tcp" else f"rtt://edge/in/p{i}"
        lines += [f"  - from: rtt://edge/out/p{i}", f"    to: {to}", "    version: ^1",
                  f"    lane: {lane}"]
    return "\n".join(lines) + "\n"


POLICY = """\
acl:
  default: allow
qos_defaults: {throughput_qps: 100000, backpressure: buffer%(breaker)s}
nodes:
  - {name: n0, shm_mb: 256}
  - {name: n1, shm_mb: 256}
rollout:
  batch_size: %(batch)d
  canary: %(canary)s
  steps: %(steps)s
  window_s: %(window)s
  min_samples: %(min_samples)d
  on_inconclusive: %(on_inconclusive)s
  failure_threshold: %(failure_threshold)d
  max_windows: %(max_windows)d
  fast_revert: %(fast_revert)s
  max_error_rate: %(max_error_rate)s
  settle_s: %(settle)s
reconcile:
  drift: %(drift)s
routing:
  greedy_threshold: %(greedy)d
"""


def seed(repo: Repo, *, width: int, routes: Iterable[tuple[int, str]], batch: int = 16,
         drift: str = "heal", greedy: int = 1000, **rollout: Any) -> str:
    """Write the whole desired state and policy, and commit. The canary is off unless
    `canary=True` (then `steps`, `window`, `min_samples`, `on_inconclusive`,
    `failure_threshold`, `max_windows`, `fast_revert` may be given)."""
    repo.write("desired/symbols/all.yaml", symbols_yaml(width))
    repo.write("desired/routes/all.yaml", routes_yaml(routes))
    repo.write("policies/policy.yaml", policy(batch=batch, drift=drift, greedy=greedy, **rollout))
    return repo.commit("seed")


def policy(*, batch: int = 16, drift: str = "heal", greedy: int = 1000, canary: bool = False,
           steps: tuple[int, ...] = (10, 50, 100), window: float = 0.5, min_samples: int = 100,
           on_inconclusive: str = "wait", failure_threshold: int = 1, max_windows: int = 3,
           fast_revert: bool = False, max_error_rate: float = 0.01,
           breaker_errors: int | None = None, settle: float = 0.5) -> str:
    breaker = f", breaker: {{errors: {breaker_errors}, window_s: 10}}" if breaker_errors else ""
    return POLICY % {"batch": batch, "drift": drift, "greedy": greedy, "breaker": breaker,
                     "max_error_rate": max_error_rate, "settle": settle,
                     "canary": str(canary).lower(), "steps": list(steps), "window": window,
                     "min_samples": min_samples, "on_inconclusive": on_inconclusive,
                     "failure_threshold": failure_threshold, "max_windows": max_windows,
                     "fast_revert": str(fast_revert).lower()}


def push_routes(repo: Repo, routes: Iterable[tuple[int, str]], message: str = "routes") -> str:
    repo.write("desired/routes/all.yaml", routes_yaml(routes))
    return repo.commit(message)


def services(i: int) -> dict[str, tuple[str, str]]:
    """The services of route i: name -> (node, the one symbol it registers)."""
    return {f"pub{i}": ("n0", f"rtt://edge/out/p{i}"), f"sub{i}": ("n0", f"rtt://edge/in/p{i}"),
            f"core{i}": ("n1", f"rtt://core/in/p{i}")}


def register_all(daemons: dict[str, Daemon], width: int) -> None:
    """What the services do when they start: register their symbols on their node (one
    service per symbol, so a traffic process can re-register its own without touching
    another's)."""
    per_node: dict[str, list[tuple[str, str]]] = {}
    for i in range(width):
        for service, (node, saddr) in services(i).items():
            per_node.setdefault(node, []).append((service, saddr))
    for node, entries in per_node.items():
        if node not in daemons:
            continue
        with daemons[node].client() as c:
            for service, saddr in entries:
                c.call("register", service=service, symbols=[{
                    "saddr": saddr, "type": "api", "versions": ["1.0.0"], "caps": ["c"],
                    "lanes": ["shm", "uds", "tcp"]}])


def lose_state(daemons: dict[str, Daemon], node: str, width: int) -> None:
    """The node is lost with its disk: it comes back empty, and its services start again and
    register, while its peers still hold their ends of the links it shared."""
    daemon = daemons[node]
    daemon.kill()
    shutil.rmtree(daemon.state)
    daemon.start()
    register_all({node: daemon}, width)


class World:
    """The repository, the two daemons and the controller's state directory."""

    def __init__(self, root: Path, repo: Repo, *, in_doubt_after: float = 1.0) -> None:
        self.root, self.repo = root, repo
        self.state = root / "controller"
        self.state.mkdir()
        self.key = keys.generate("controller", root / "keys")[0]
        self.daemons: dict[str, Daemon] = {}
        for name in NODES:
            (root / name).mkdir()
            self.daemons[name] = Daemon(root / name, node=name, in_doubt_after=in_doubt_after,
                                        coordinator=self.state / "coordinator.sock",
                                        shm_mb=256)

    def start(self, width: int) -> World:
        """n1 first, so that n0 (the sending side of every tcp route) can be told where n1's
        data listener is."""
        n0, n1 = self.daemons["n0"], self.daemons["n1"]
        n1.start()
        with n1.client() as c:
            host, port = c.call("status")["data_address"]
        n0.extra = (*n0.extra, "--data-listen", "off", "--peer", f"n1={host}:{port}")
        n0.start()
        register_all(self.daemons, width)
        return self

    def stop(self) -> None:
        for d in self.daemons.values():
            if d.proc is not None and d.proc.poll() is None:
                d.stop()

    def nodes(self) -> dict[str, coord.Node]:
        return {n: coord.SocketNode(n, d.socket) for n, d in self.daemons.items()}

    def settings(self, **overrides: Any) -> loop.Settings:
        base: dict[str, Any] = {"repo": str(self.repo.path), "state": self.state,
                                "nodes": self.nodes(), "sign_key": self.key, "resync_s": 0.5,
                                "backoff_s": (0.05, 0.5)}
        return loop.Settings(**{**base, **overrides})

    def observed_hash(self) -> str:
        """The hash of the links whole on both nodes (as the controller observes them)."""
        return coord.survey(self.nodes()).observed.hash

    def status(self) -> dict[str, Any]:
        return records.Records(self.state).status()

    def history(self) -> list[records.Entry]:
        return list(records.Records(self.state).history())


@contextlib.contextmanager
def running(world: World, *, otel: Any = None, **overrides: Any) -> Iterator[loop.Loop]:
    """The loop in a thread of this process, stopped on the way out."""
    stop = threading.Event()
    lp = loop.Loop(world.settings(**overrides), otel=otel)
    failure: list[BaseException] = []

    def body() -> None:
        try:
            lp.run(stop)
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)

    thread = threading.Thread(target=body, name="rtt-loop", daemon=True)
    thread.start()
    try:
        yield lp
    finally:
        stop.set()
        lp.wake.set()
        thread.join(30)
        assert not thread.is_alive(), "the loop did not stop"
        if failure:
            raise failure[0]


def wait_for(predicate: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or predicate}")


def converged_on(world: World, revision: str) -> Callable[[], bool]:
    def check() -> bool:
        s = world.status()
        return s.get("phase") == "converged" and s.get("revision") == revision
    return check


def controller_process(world: World, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    """`rtt controller run` as its own process (for kill -9)."""
    argv = [sys.executable, "-m", "rtt_controller.cli.main", "controller", "run",
            "--repo", str(world.repo.path), "--state", str(world.state),
            "--sign-key", str(world.key), "--resync", "500ms", "--format", "json",
            *[f"--fabric={n}={d.socket}" for n, d in world.daemons.items()], *extra]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out, env={**os.environ})


def kill9(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def head(repo: Repo) -> str:
    return git(repo.path, "rev-parse", "HEAD")


def dump(world: World) -> str:
    """What to show when an assertion fails: status, history, daemon logs' tails."""
    parts = [json.dumps(world.status(), indent=1)]
    parts += [f"{e.outcome} {e.revision} {e.reason}" for e in world.history()]
    for name, d in world.daemons.items():
        parts.append(f"--- {name}\n" + d.log_text()[-3000:])
    return "\n".join(parts)
