"""`rtt fabric ...` (serve a node, show its status, verify its WAL) and `rtt tap`.

The `rtt` dispatcher (rtt_controller.cli) mounts these subcommands; each returns an exit code:
0 ok, 1 the daemon or the WAL says something is wrong, 2 usage error (e.g. no daemon listening).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from rtt_fabric import breaker, daemon, tap, tokens, trust, wal
from rtt_fabric.client import Client, ClientError

DEFAULT_STATE = Path(".rtt/fabric")
DEFAULT_SOCKET = Path(".rtt/sockets/fabric.sock")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fabric_command", required=True, metavar="COMMAND")
    serve_p = sub.add_parser("serve", help="run a node daemon in the foreground")
    serve_p.add_argument("--state", type=Path, default=DEFAULT_STATE)
    serve_p.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)
    serve_p.add_argument("--node", default="local", help="this node's name in plans")
    serve_p.add_argument("--shm-mb", type=int, default=256, help="ring memory budget")
    serve_p.add_argument("--coordinator", type=Path,
                         help="the coordinator's socket, asked about in-doubt transactions")
    serve_p.add_argument("--allow-uid", type=int, action="append", default=[],
                         help="another uid allowed on the control socket (repeatable)")
    serve_p.add_argument("--checkpoint-every", type=int, default=10_000,
                         help="WAL records between checkpoints")
    serve_p.add_argument("--in-doubt-after", type=float, default=5.0, metavar="SECONDS",
                         help="ask the coordinator about a PREPARE still undecided after this")
    serve_p.add_argument("--data-listen", type=_address_or_off, default=("127.0.0.1", 0),
                         metavar="HOST:PORT|off",
                         help="where tcp lanes from other nodes arrive (default 127.0.0.1:0)")
    serve_p.add_argument("--peer", type=_peer, action="append", default=[],
                         metavar="NODE=HOST:PORT", help="another node's data listener")
    serve_p.add_argument("--cluster-key", type=Path,
                         help="key file shared by the nodes, authenticating tcp lanes")
    serve_p.add_argument("--breaker-errors", type=int, default=100,
                         help="errors within the window that open a route's breaker")
    serve_p.add_argument("--breaker-window", type=float, default=10.0, metavar="SECONDS")
    serve_p.add_argument("--strict", action="store_true",
                         help="enforce the trust policy: signed plans, signed manifests, "
                              "capability tokens (needs --trust)")
    serve_p.add_argument("--trust", type=Path, metavar="FILE",
                         help="the trust policy for --strict: YAML or JSON, the `trust:` "
                              "section of policies/")
    serve_p.add_argument("--token-key", type=Path, action="append", default=[], metavar="FILE",
                         help="an ID.hmac token key (`rtt keys generate --kind hmac`): with "
                              "--strict, capability tokens MACed under it are accepted too "
                              "(repeatable)")
    status_p = sub.add_parser("status", help="the observed graph and its hash")
    status_p.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)
    status_p.add_argument("--format", choices=("text", "json"), default="text")
    wal_p = sub.add_parser("wal", help="inspect the write-ahead log")
    wal_sub = wal_p.add_subparsers(dest="wal_command", required=True, metavar="COMMAND")
    verify_p = wal_sub.add_parser("verify", help="check every segment, record and hash link")
    verify_p.add_argument("--state", type=Path, default=DEFAULT_STATE)
    verify_p.add_argument("--format", choices=("text", "json"), default="text")


def run(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    if args.fabric_command == "serve":
        if args.strict != (args.trust is not None):
            print("rtt fabric serve: --strict and --trust FILE go together", file=sys.stderr)
            return 2
        if args.token_key and not args.strict:
            print("rtt fabric serve: --token-key is for --strict nodes", file=sys.stderr)
            return 2
        try:
            policy = trust.load_policy(args.trust) if args.trust is not None else None
            token_keys = dict(tokens.load_key(path) for path in args.token_key)
        except ValueError as exc:  # a trust.PolicyError, or a bad token key file
            print(f"rtt fabric serve: {exc}", file=sys.stderr)
            return 2
        return daemon.serve(daemon.Config(
            state=args.state, socket=args.socket, node=args.node, shm_bytes=args.shm_mb << 20,
            coordinator=args.coordinator, allowed_uids=frozenset(args.allow_uid),
            checkpoint_every=args.checkpoint_every, in_doubt_after_s=args.in_doubt_after,
            data_listen=args.data_listen, peers=dict(args.peer), cluster_key=args.cluster_key,
            breakers=breaker.Config(errors=args.breaker_errors, window_s=args.breaker_window),
            trust_policy=policy, token_keys=token_keys), environ)
    if args.fabric_command == "status":
        return _status(args)
    return _verify(args)


def register_tap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flight", type=duration_arg, required=True, metavar="DURATION",
                        help="how long to tap, e.g. 5s: per-route windows as NDJSON")
    parser.add_argument("--interval", type=duration_arg, default=1.0, metavar="DURATION",
                        help="one window per route per interval (default 1s)")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)
    parser.add_argument("--format", choices=("ndjson", "text"), default="ndjson")


def run_tap(args: argparse.Namespace) -> int:
    out: tap.Sink = _TextLines(sys.stdout) if args.format == "text" else sys.stdout
    try:
        tap.run(args.socket, total_s=args.flight, interval_s=min(args.interval, args.flight),
                out=out)
    except (OSError, ConnectionError) as exc:
        print(f"rtt tap: no daemon at {args.socket} ({exc})", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"rtt tap: {exc}", file=sys.stderr)
        return 1
    return 0


class _TextLines:
    """Renders the tap's NDJSON lines as one readable line each."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, text: str) -> None:
        for raw in text.splitlines():
            w = orjson.loads(raw)
            us = "/".join("-" if w[q] is None else f"{w[q]:g}" for q in ("p50", "p95", "p99"))
            self._out.write(f"{w['ts']} #{w['route_id']} {w['from']} -> {w['to']} [{w['lane']}] "
                            f"frames {w['frames']} p50/p95/p99 {us} µs qdepth {w['qdepth']} "
                            f"drops {w['drops']} breaker {w['breaker_state']} "
                            f"syscalls {w['syscalls_delta']}\n")

    def flush(self) -> None:
        self._out.flush()


def duration_arg(text: str) -> float:
    """`tap.duration` as an argparse type: '5s', '500ms', '2m' or seconds."""
    try:
        return tap.duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def _address_or_off(text: str) -> tuple[str, int] | None:
    return None if text == "off" else _address(text)


def _peer(text: str) -> tuple[str, tuple[str, int]]:
    node, sep, address = text.partition("=")
    if not sep or not node:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NODE=HOST:PORT")
    return node, _address(address)


def _status(args: argparse.Namespace) -> int:
    try:
        with Client(args.socket, timeout_s=10) as client:
            status = client.call("status")
            graph = client.call("get_graph")["graph"]
    except (OSError, ConnectionError) as exc:
        print(f"rtt fabric status: no daemon at {args.socket} ({exc})", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"rtt fabric status: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        _print_json({**{k: v for k, v in status.items() if k not in ("id", "ok")},
                     "graph": graph})
        return 0
    print(f"node {status['node']}  epoch {status['epoch']}  graph_hash {status['graph_hash']}")
    print(f"{status['links']} links, {status['symbols']} symbols from "
          f"{len(status['services'])} services, shm {status['shm_used']}/{status['shm_bytes']} "
          f"bytes, WAL at seq {status['wal_last_seq']}")
    if status["in_doubt"]:
        print(f"in doubt: {', '.join(status['in_doubt'])}")
    for link in graph["links"]:
        print(f"  {link['from']} -> {link['to']} [{link['class']}, {link['lane']}]")
    return 0


def _verify(args: argparse.Namespace) -> int:
    directory = args.state / "wal"
    if not directory.is_dir():
        print(f"rtt fabric wal verify: no WAL at {directory}", file=sys.stderr)
        return 2
    report = wal.verify(directory)
    if args.format == "json":
        _print_json({**dataclasses.asdict(report), "ok": report.ok})
    else:
        span = f"seq {report.first_seq}..{report.last_seq}" if report.records else "empty"
        print(f"{directory}: {len(report.segments)} segments, {report.records} records ({span}), "
              f"{len(report.checkpoints)} checkpoints")
        for damage, what in ((report.torn_tail, "torn tail (recovery truncates it)"),
                             (report.corruption, "CORRUPT (the daemon refuses to start)")):
            if damage is not None:
                print(f"{damage.segment}:{damage.offset}: {what}: {damage.reason}")
    return 0 if report.ok else 1


def _print_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
                            + b"\n")
