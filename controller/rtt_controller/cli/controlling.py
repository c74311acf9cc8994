"""`rtt controller run` (the GitOps loop) and `rtt up` (the loop on the embedded default)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rtt_controller import solvers
from rtt_controller.cli import commands
from rtt_controller.cli.exits import INVALID, OK, UsageError
from rtt_controller.core import planner
from rtt_controller.reconcile import applying, embedded, loop, telemetry
from rtt_controller.reconcile import coordinator as coord
from rtt_controller.signing import keys
from rtt_fabric import cli as fabric_cli
from rtt_fabric.client import Client, ClientError

SETTLED = frozenset({loop.Outcome.CONVERGED, loop.Outcome.PROMOTED, loop.Outcome.ROLLED_BACK,
                     loop.Outcome.FAILED, loop.Outcome.INVALID, loop.Outcome.WAITING,
                     loop.Outcome.DRIFT_DETECTED})


def _loop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--branch", default="main", help="the branch to follow (default: main)")
    p.add_argument("--resync", type=fabric_cli.duration_arg, default=30.0, metavar="DURATION",
                   help="a pass at least this often, events or not (default: 30s)")
    p.add_argument("--solver", choices=solvers.BACKENDS, default="cbc")
    p.add_argument("--otel", choices=[e.value for e in telemetry.Exporter], default=None,
                   help=f"export traces and metrics (default: ${telemetry.ENV}, else off)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: one line per pass on stdout (NDJSON)")


def register_controller(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="controller_command", required=True, metavar="SUBCOMMAND")
    run = sub.add_parser("run", help="watch a branch and reconcile the fabric to it")
    run.add_argument("--repo", default=".",
                     help="a local repository (watched) or a URL (mirrored, fetched each pass)")
    run.add_argument("--fabric", action="append", default=[], required=True,
                     metavar="[NAME=]SOCKET",
                     help="a node daemon's control socket, one per node (the name is asked of "
                          "the daemon when not given)")
    run.add_argument("--state", type=Path, default=Path(".rtt/controller"),
                     help="WAL, plans, status and history (default: .rtt/controller)")
    run.add_argument("--sign-key", type=Path, metavar="ID.key",
                     help="sign every plan with this ed25519 key (rtt keys generate)")
    run.add_argument("--signatures", metavar="BRANCH",
                     help="use the plan signatures CI publishes on BRANCH (plans/<plan_id>."
                          "sigstore.json or .dsse.json), verified against the revision's trust "
                          "policy; without --sign-key, wait for them")
    run.add_argument("--once", action="store_true",
                     help="stop after the first settled pass; exit 0 if converged")
    _loop_args(run)


def _nodes(specs: Sequence[str]) -> dict[str, coord.Node]:
    nodes: dict[str, coord.Node] = {}
    for spec in specs:
        name, sep, path = spec.rpartition("=")
        if not sep:
            try:
                with Client(Path(path), timeout_s=5) as client:
                    name = str(client.call("status")["node"])
            except (OSError, ConnectionError, ClientError) as exc:
                raise UsageError(f"--fabric {path}: cannot ask the node its name ({exc}); "
                                 "give it as NAME=SOCKET") from None
        if name in nodes:
            raise UsageError(f"--fabric: node {name!r} given twice")
        nodes[name] = coord.SocketNode(name, Path(path))
    return nodes


def controller(args: argparse.Namespace) -> int:
    settings = loop.Settings(repo=args.repo, state=args.state, nodes=_nodes(args.fabric),
                             branch=args.branch, sign_key=args.sign_key, solver=args.solver,
                             resync_s=args.resync, signatures=args.signatures)
    return _run(settings, args, once=args.once)


def _run(settings: loop.Settings, args: argparse.Namespace, *, once: bool) -> int:
    try:
        exporter = telemetry.chosen(args.otel)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if settings.sign_key is not None:
        try:
            keys.load(settings.sign_key)
        except keys.KeyFileError as exc:
            raise UsageError(str(exc)) from None
    otel = telemetry.Telemetry(exporter)
    stop = threading.Event()
    passes: list[loop.Pass] = []

    def until(done: loop.Pass) -> bool:
        passes.append(done)
        if args.format == "json":
            print(json.dumps(dataclasses.asdict(done), sort_keys=True), flush=True)
        return once and done.outcome in SETTLED

    controller = loop.Loop(settings, say=_say, otel=otel)
    with _stopping_on_signals(stop, controller.wake):
        try:
            controller.run(stop, until=until)
        except applying.Busy as exc:
            raise UsageError(str(exc)) from None
        finally:
            otel.shutdown()
    last = passes[-1] if passes else None
    return OK if last is None or last.outcome in (loop.Outcome.CONVERGED,
                                                  loop.Outcome.PROMOTED) else INVALID


def _say(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


class _Stopping:
    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def __call__(self, signum: int, _: Any) -> None:
        _say(f"{signal.Signals(signum).name}: stopping after the current step")
        for event in self.events:  # the stop flag, and the loop's wake-up (it may be asleep)
            event.set()


@contextlib.contextmanager
def _stopping_on_signals(*events: threading.Event) -> Iterator[None]:
    handler = _Stopping(*events)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- rtt up -------------------------------------------------------------------------------------


def register_up(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", type=Path, default=Path("."),
                   help="the folder whose desired/ and policies/ seed the repository "
                        "(default: .)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the repository, the nodes and the controller live (default: a "
                        "new temporary folder, removed afterwards)")
    p.add_argument("--keep-running", action="store_true",
                   help="keep watching the repository after it converges, until Ctrl-C")
    _loop_args(p)


def up(args: argparse.Namespace) -> int:
    """The embedded default: a local repository, a local fabric, the loop; status; stop."""
    with tempfile.TemporaryDirectory(prefix="rtt-up-") as scratch:
        work = args.workdir or Path(scratch)
        if args.workdir is not None and work.exists() and any(work.iterdir()):
            raise UsageError(f"--workdir {work}: not empty; give a new folder")
        repo, state = work / "repo", work / "controller"
        try:
            head = embedded.make_repo(args.source, repo)
            desired = embedded.desired_state(repo, args.solver)
        except embedded.SetupError as exc:
            raise UsageError(str(exc)) from None
        except planner.Rejected:
            print(f"{args.source}: the desired state is invalid; `rtt validate --repo "
                  f"{args.source}` says why", file=sys.stderr)
            return INVALID
        _say(f"repository {repo} at {head[:12]}")
        names = [n.name for n in desired.state.policy.nodes]
        state.mkdir(parents=True)
        with embedded.fabric(work / "fabric", names, state / "coordinator.sock") as nodes:
            _say(f"fabric: {len(nodes)} node(s) ({', '.join(names)}) under {work / 'fabric'}")
            for name, services in embedded.manifests(desired).items():
                nodes[name].register(services)
            with embedded.sending(nodes, embedded.traffic(desired)):
                _say("example traffic: every route's source sends, every target drains")
                settings = loop.Settings(repo=str(repo), state=state,
                                         nodes=embedded.participants(nodes), branch="main",
                                         sign_key=embedded.controller_key(work / "keys"),
                                         solver=args.solver, resync_s=args.resync)
                code = _run(settings, args, once=not args.keep_running)
        status_args = argparse.Namespace(state=state, format=args.format)
        commands.status(status_args)
        return code


COMMANDS = {"controller": (register_controller, controller), "up": (register_up, up)}
HELP = {"controller": "run the GitOps loop: watch a branch, plan, sign, apply, verify, heal",
        "up": "the embedded default: a local repo and fabric, reconciled once, then stopped"}
