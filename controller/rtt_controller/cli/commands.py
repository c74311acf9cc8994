"""The subcommands: validate, plan, show, diff, keys, verify, fabric. Each returns an exit code.

They wire the seams (git or directory source, solver) to the pure core and print the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from rtt_controller import solvers
from rtt_controller.cli import signatures
from rtt_controller.cli.exits import INVALID, OK, UsageError
from rtt_controller.core import inventory, loading, model, planner, render
from rtt_controller.core import plan as plan_mod
from rtt_controller.reconcile import applying, records, rollout
from rtt_controller.reconcile import coordinator as coord
from rtt_controller.source import directory, gitrepo
from rtt_controller.source.snapshot import ParseCache, Snapshot
from rtt_fabric import cli as fabric_cli

FORMATS = ("text", "json", "markdown")


def _source_args(p: argparse.ArgumentParser, *, rev: bool = True) -> None:
    p.add_argument("--repo", default=".", help="git repository or plain directory (default: .)")
    if rev:
        p.add_argument("--rev", default=None,
                       help="commit to read (default: HEAD; a plain directory has none)")


def _format_arg(p: argparse.ArgumentParser, choices: Sequence[str] = FORMATS,
                default: str = "text") -> None:
    p.add_argument("--format", choices=choices, default=default)


def _solver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", choices=solvers.BACKENDS, default="cbc",
                   help="MILP backend for the ILP assigner (default: cbc)")
    p.add_argument("--algorithm", choices=("auto", "ilp", "greedy"), default="auto",
                   help="auto uses the ILP up to routing.greedy_threshold routes")
    p.add_argument("--progress", action="store_true",
                   help="report each stage on stderr (the default when stderr is a terminal)")


# --- shared plumbing --------------------------------------------------------------------------


def _snapshot(repo: str, rev: str | None, cache: ParseCache) -> Snapshot:
    root = Path(repo)
    if not root.exists():
        raise UsageError(f"{repo}: no such directory")
    try:
        git = gitrepo.open_repo(root)
    except gitrepo.SourceError:
        if rev is not None:
            raise UsageError(f"{repo}: --rev needs a git repository") from None
        return directory.snapshot(root, cache)
    prefix = gitrepo.prefix_of(git, root)
    if rev is None and prefix and not gitrepo.tracked(git, prefix):
        return directory.snapshot(root, cache)  # a folder git does not know: read it from disk
    try:
        return gitrepo.snapshot(git, rev or "HEAD", cache, prefix=prefix)
    except gitrepo.SourceError as exc:
        raise UsageError(str(exc)) from None


def _report(findings: Sequence[loading.Finding], snap: Snapshot, fmt: str) -> int:
    diagnostics = loading.locate(findings, snap.raw(sorted({f.path for f in findings})))
    if fmt == "json":
        _print_json({"ok": False, "diagnostics": [d.to_json() for d in diagnostics]})
    for d in diagnostics:
        print(d.render(), file=sys.stderr)
    print(f"{len(diagnostics)} error(s)", file=sys.stderr)
    return INVALID


def _json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _print_json(value: Any) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(_json_bytes(value))
    sys.stdout.buffer.flush()


def _load_graph(path: str) -> inventory.Graph:
    try:
        graph = inventory.Graph.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        graph.hash  # noqa: B018 - hashing validates every value (finite numbers, encodable text)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # rfc8785 errors included
        raise UsageError(f"{path}: not a graph file as `rtt plan --graph-out` writes ({exc!r})"
                         ) from None
    return graph


def _plan(args: argparse.Namespace, cache: ParseCache, *, rev: str | None,
          base: inventory.Graph) -> planner.Result:
    progress = _progress(args)
    snap = _snapshot(args.repo, rev, cache)
    origin = plan_mod.Provenance(repo=snap.repo, commit=snap.commit,
                                 created_at=snap.created_at, backend="")
    try:
        return planner.make_plan(snap.files, base=base, solve=solvers.solver(args.solver),
                                 backend=args.solver, origin=origin, algorithm=args.algorithm,
                                 progress=progress)
    except planner.Rejected as exc:
        raise _Invalid(exc.findings, snap) from None
    except solvers.SolverUnavailable as exc:
        raise UsageError(str(exc)) from None


def _progress(args: argparse.Namespace) -> planner.Progress:
    """Stage-by-stage progress on stderr, for a person watching a terminal (or --progress)."""
    if not (args.progress or sys.stderr.isatty()):
        return lambda _: None
    start = time.monotonic()

    def report(message: str) -> None:
        print(f"[{time.monotonic() - start:6.2f}s] {message}", file=sys.stderr, flush=True)

    return report


class _Invalid(Exception):
    def __init__(self, findings: Sequence[loading.Finding], snap: Snapshot) -> None:
        super().__init__("invalid input")
        self.findings, self.snap = findings, snap


def _invalid_guard(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _Invalid as exc:
            return _report(exc.findings, exc.snap, getattr(args, "format", "text"))
    return guarded


# --- validate ---------------------------------------------------------------------------------


def _register_validate(p: argparse.ArgumentParser) -> None:
    _source_args(p)
    _format_arg(p, ("text", "json"))


def validate(args: argparse.Namespace) -> int:
    snap = _snapshot(args.repo, args.rev, ParseCache())
    try:
        desired = planner.validate(snap.files)
    except planner.Rejected as exc:
        return _report(exc.findings, snap, args.format)
    summary = {"ok": True, "symbols": len(desired.symbols), "routes": len(desired.routes),
               "policy_hash": desired.policy_hash, "commit": snap.commit}
    if args.format == "json":
        _print_json(summary)
    else:
        where = f" at {snap.commit[:12]}" if snap.commit else ""
        print(f"ok: {summary['symbols']} symbols, {summary['routes']} routes{where}")
    return OK


# --- plan -------------------------------------------------------------------------------------


def _register_plan(p: argparse.ArgumentParser) -> None:
    _source_args(p)
    base = p.add_mutually_exclusive_group()
    base.add_argument("--base", metavar="REV", help="plan against the desired state of REV")
    base.add_argument("--observed", metavar="FILE", help="plan against an observed graph JSON")
    p.add_argument("--out", metavar="FILE",
                   help="also write the plan JSON to FILE; a folder (ending in /) gets "
                        "<plan_id>.json")
    p.add_argument("--graph-out", metavar="FILE", help="also write the desired graph JSON")
    signatures.add_sign_args(p)
    _format_arg(p)
    _solver_args(p)


def _base(args: argparse.Namespace, cache: ParseCache) -> inventory.Graph:
    if args.observed:
        return _load_graph(args.observed)
    if args.base:
        return _plan(args, cache, rev=args.base, base=inventory.EMPTY).desired.graph
    return inventory.EMPTY


def plan(args: argparse.Namespace) -> int:
    signatures.check_sign_args(args)
    cache = ParseCache()
    result = _plan(args, cache, rev=args.rev, base=_base(args, cache))
    document = result.plan.to_json()
    if args.out:
        out = Path(args.out)
        if args.out.endswith("/") or out.is_dir():
            out = out / f"{result.plan.plan_id}.json"
        _write_json(str(out), document)
        if args.sign:
            sig_path, sig = signatures.signature(args.sign, result.plan, out, args.key)
            _write_json(str(sig_path), sig)
    if args.graph_out:
        _write_json(args.graph_out, result.desired.graph.to_json())
    _emit(result.plan, args.format)
    return OK


def _write_json(path: str, value: Any) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(_json_bytes(value))
        tmp.replace(target)  # atomic: a reader never sees half a plan
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _emit(built: plan_mod.Plan, fmt: str, *, title: str = "RTT plan") -> None:
    if fmt == "json":
        _print_json(built.to_json())
    elif fmt == "markdown":
        sys.stdout.write(render.markdown(built, title=title))
    else:
        sys.stdout.write(render.text(built))


# --- show -------------------------------------------------------------------------------------


def _register_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", metavar="PLAN", help="a plan JSON file written by `rtt plan --out`")
    _format_arg(p)


def show(args: argparse.Namespace) -> int:
    try:
        data = json.loads(Path(args.plan).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{args.plan}: {exc.strerror}") from None
    except ValueError as exc:
        print(f"{args.plan}:1: plan-format: not JSON ({exc})", file=sys.stderr)
        return INVALID
    try:
        loaded = plan_mod.load(data)
    except plan_mod.PlanFormatError as exc:
        print(f"{args.plan}:1: plan-format: {exc}", file=sys.stderr)
        return INVALID
    _emit(loaded, args.format)
    return OK


# --- diff -------------------------------------------------------------------------------------


def _register_diff(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=".", help="git repository (default: .)")
    p.add_argument("--base", required=True, metavar="REV")
    p.add_argument("--head", default="HEAD", metavar="REV")
    _format_arg(p, default="markdown")
    _solver_args(p)


def diff(args: argparse.Namespace) -> int:
    cache = ParseCache()
    base = _plan(args, cache, rev=args.base, base=inventory.EMPTY).desired.graph
    result = _plan(args, cache, rev=args.head, base=base)
    title = f"RTT plan: {args.base} → {args.head}"
    if args.format != "markdown":
        _emit(result.plan, args.format, title=title)
        return OK
    policy = result.desired.state.policy.rollout
    canary = [render.CanaryStep(*step) for step in rollout.preview(
        applying.batches(result.plan), policy.steps)] if policy.canary else None
    sys.stdout.write(render.markdown(result.plan, title=title, canary=canary,
                                     window_s=policy.window_s))
    return OK


# --- keys, verify -----------------------------------------------------------------------------


def verify(args: argparse.Namespace) -> int:
    return signatures.verify(args, read_snapshot=_snapshot)


# --- apply ------------------------------------------------------------------------------------


def _register_apply(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", type=Path, help="a plan file written by `rtt plan --out`")
    p.add_argument("--node", action="append", default=[], metavar="NAME=SOCKET", required=True,
                   help="a fabric node's control socket, one per node the plan touches")
    p.add_argument("--state", type=Path, default=Path(".rtt/controller"),
                   help="the coordinator's WAL and in-doubt socket (default: .rtt/controller)")
    p.add_argument("--canary", metavar="PCT[,PCT...]", type=_percents,
                   help="roll out in canary steps (e.g. 10 or 10,50,100; 100 is added), with "
                        "the SLO gate of the repository's rollout policy after each; the plan "
                        "must carry a signature its trust policy accepts")
    p.add_argument("--repo", type=Path, metavar="PATH",
                   help="whose policies/ give the gate and the trust policy (default: the "
                        "nearest folder above PLAN that has policies/)")
    _format_arg(p, ("text", "json"))


def _percents(text: str) -> tuple[int, ...]:
    try:
        values = sorted({int(v) for v in text.split(",")} | {100})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected percentages like 10,50") from None
    if values[0] <= 0 or values[-1] > 100:
        raise argparse.ArgumentTypeError(f"{text!r}: each step must be in 1..100")
    return tuple(values)


def _canary_policy(args: argparse.Namespace, data: Any) -> model.Rollout:
    """The rollout policy `rtt apply --canary` runs: the repository's, with the steps given;
    only for a plan whose signatures the repository's trust policy accepts."""
    why = signatures.refusal(args.plan, data, repo=args.repo, read_snapshot=_snapshot)
    if why:
        raise _Refused(f"{args.plan}: not a verified plan: {why}")
    root = args.repo or signatures.repo_of(args.plan)
    snap = _snapshot(str(root), None, ParseCache())
    try:
        policy = planner.validate(snap.files).policy
    except planner.Rejected as exc:
        raise _Invalid(exc.findings, snap) from None
    return policy.rollout.model_copy(update={"steps": args.canary, "canary": True})


class _Refused(Exception):
    pass


def apply(args: argparse.Namespace) -> int:
    """Apply a plan in 2PC batches; exit 0 when promoted (observed == desired), 1 when it was
    rolled back or failed."""
    try:
        nodes = applying.parse_nodes(args.node)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.plan.is_file():
        raise UsageError(f"{args.plan}: no such plan file")
    try:
        canary = _canary_policy(args, json.loads(args.plan.read_text(encoding="utf-8"))) \
            if args.canary else None
    except _Refused as exc:
        print(str(exc), file=sys.stderr)
        return INVALID
    except ValueError as exc:
        print(f"{args.plan}:1: plan-format: not JSON ({exc})", file=sys.stderr)
        return INVALID
    try:
        result = applying.apply_file(args.plan, nodes=nodes, state=args.state, canary=canary)
    except plan_mod.PlanFormatError as exc:
        print(f"{args.plan}: {exc}", file=sys.stderr)
        return INVALID
    except KeyError as exc:  # a node the plan names has no --node
        raise UsageError(str(exc.args[0])) from None
    except applying.Busy as exc:
        raise UsageError(str(exc)) from None
    report = {"plan_id": result.plan_id, "outcome": result.outcome.value,
              "committed_batches": result.committed, "observed_graph_hash": result.observed_hash,
              "reason": result.reason}
    if args.format == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"{result.plan_id}: {result.outcome.value} after {result.committed} committed "
              f"batch(es)" + (f": {result.reason}" if result.reason else ""))
    return OK if result.outcome is coord.Outcome.PROMOTED else INVALID


def _register_records(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", type=Path, default=Path(".rtt/controller"),
                   help="the controller's state directory (default: .rtt/controller)")
    _format_arg(p, ("text", "json"))


def status(args: argparse.Namespace) -> int:
    """The controller's status: phase, the revision and plan it is on, the last error."""
    current = records.Records(args.state).status() if args.state.is_dir() else {}
    if args.format == "json":
        print(json.dumps(current, indent=2, sort_keys=True))
    elif not current:
        print(f"{args.state}: no apply recorded yet")
    else:
        print(f"phase {current.get('phase')} since {current.get('since')}")
        for key in ("watched_revision", "revision", "plan_id", "applied_plan_id",
                    "observed_graph_hash", "last_error"):
            print(f"  {key}: {current.get(key)}")
        if current.get("drift"):
            drift = current["drift"]
            mode = "healing" if drift.get("healing") else "detect-only"
            print(f"  drift: observed {drift.get('observed_graph_hash')} since "
                  f"{drift.get('detected_at')} ({mode})")
        if current.get("canary") and current.get("phase") in ("canary", "paused"):
            c = current["canary"]
            print(f"  canary: step {c.get('step')}% ({c.get('routes')} routes), window "
                  f"{c.get('windows')}: {c.get('last') or 'first window running'}")
    return OK


def history(args: argparse.Namespace) -> int:
    """Every recorded apply, oldest first: revision, plan id, outcome, duration, reason."""
    entries = list(records.Records(args.state).history()) if args.state.is_dir() else []
    if args.format == "json":
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return OK
    for e in entries:
        print(f"{e.started_at}  {(e.revision or '-')[:12]:12}  {e.plan_id[:19] or '-':19}  "
              f"{e.outcome:11}  {e.duration_s:.3f}s  {e.batches} batch(es)"
              + (f"  {e.reason}" if e.reason else ""))
        for step in e.canary:  # the canary's verdicts, window by window
            verdicts = ", ".join(w["verdict"] for w in step["windows"]) or "-"
            print(f"    canary {step['percent']}%: {step['outcome'] or 'cut short'} "
                  f"({step['routes']} routes; windows: {verdicts})")
    return OK


# --- fabric -----------------------------------------------------------------------------------


def _register_fabric(p: argparse.ArgumentParser) -> None:
    fabric_cli.register(p)


def fabric(args: argparse.Namespace) -> int:
    return fabric_cli.run(args)


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "validate": (_register_validate, validate),
    "plan": (_register_plan, _invalid_guard(plan)),
    "show": (_register_show, show),
    "diff": (_register_diff, _invalid_guard(diff)),
    "keys": (signatures.register_keys, signatures.keys_command),
    "verify": (signatures.register_verify, verify),
    "apply": (_register_apply, _invalid_guard(apply)),
    "status": (_register_records, status),
    "history": (_register_records, history),
    "fabric": (_register_fabric, fabric),
    "tap": (fabric_cli.register_tap, fabric_cli.run_tap),
}
ONE_SHOT = frozenset({"validate", "plan", "show", "diff", "keys", "verify"})  # run once and exit
HELP = {
    "validate": "validate desired/ and policies/ at a revision",
    "plan": "compute the deterministic, content-addressed plan",
    "show": "print a plan file",
    "diff": "the plan between two revisions, as a pull-request comment",
    "keys": "ed25519 keys: generate, sign-manifest, sign-token",
    "verify": "check a plan's signatures against the trust policy",
    "apply": "apply a plan file to the fabric's nodes in 2PC batches, rolling back on failure",
    "status": "the controller's phase, revision, applied plan and last error",
    "history": "every recorded apply: revision, plan id, outcome, duration and reason",
    "fabric": "run and inspect a fabric node (serve, status, wal verify)",
    "tap": "per-route flight windows from a running node (--flight 5s), as NDJSON",
}
