"""`rtt` entry point: parse arguments, dispatch to a subcommand, map failures to exit codes.

Exit codes: 0 ok, 1 invalid input, 2 usage error, 3 internal error (see README).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from collections.abc import Mapping, Sequence

from rtt_controller import __version__
from rtt_controller.cli import commands, controlling
from rtt_controller.cli.exits import INTERNAL, USAGE, UsageError

COMMANDS = {**commands.COMMANDS, **controlling.COMMANDS}
HELP = {**commands.HELP, **controlling.HELP}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtt", description="GitOps controller for RTT fabrics")
    parser.add_argument("--version", action="version", version=f"rtt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (register, _) in COMMANDS.items():
        register(sub.add_parser(name, help=HELP[name]))
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    _, run = COMMANDS[args.command]
    # Planning builds large, acyclic values; the cyclic GC's repeated full passes over a
    # 100k-route state cost more than the plan itself (bench/planner.py: about 21 s -> 12 s).
    # These commands run once and exit, so they pause it; a long-running caller freezes instead.
    paused = args.command in commands.ONE_SHOT and gc.isenabled()
    if paused:
        gc.disable()
    try:
        return run(args)
    except UsageError as exc:
        print(f"rtt {args.command}: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: never a raw traceback for users
        print(f"rtt {args.command}: internal error: {exc!r}", file=sys.stderr)
        if env.get("RTT_DEBUG"):
            traceback.print_exc()
        else:
            print("set RTT_DEBUG=1 to see the traceback, and please report it", file=sys.stderr)
        return INTERNAL
    finally:
        if paused:
            gc.enable()


if __name__ == "__main__":
    sys.exit(main())
