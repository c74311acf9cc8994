"""Example traffic for the embedded default: the shipped example's services on one node.

    python -m rtt_fabric.demo SPEC.json

SPEC names the node's control socket, each service with the symbols it registers, the symbols
to publish from (with frames per second for each) and to subscribe on:

    {"socket": "...",
     "services": {"core": [{"saddr": "rtt://core/api/metrics", "type": "api", ...}], ...},
     "publish": ["rtt://core/api/metrics", ...], "rates": {"rtt://core/api/metrics": 200},
     "subscribe": ["rtt://cache/api/kv", ...]}

Each service is a connection of its own (`rtt_fabric.connect`), as separate service processes
would be; each subscriber drains on its own thread (the wait releases the GIL), and one thread
sends small frames from every publisher, each at its own rate. Frames only flow on routes the
fabric has committed, so what the controller applies is what carries traffic, and the canary
gates have real latency to judge. Runs until SIGTERM or SIGINT. Started by `rtt up`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rtt_fabric import endpoints, sdk


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rtt_fabric.demo SPEC.json", file=sys.stderr)
        return 2
    spec: dict[str, Any] = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    conns = {name: sdk.connect(spec["socket"], service=name, symbols=symbols)
             for name, symbols in sorted(spec["services"].items())}
    owner = {sym["saddr"]: name for name, symbols in spec["services"].items()
             for sym in symbols}
    try:
        pubs = [conns[owner[s]].publisher(s) for s in spec["publish"]]
        subs = [conns[owner[s]].subscriber(s) for s in spec["subscribe"]]
        threads = [threading.Thread(target=_drain, args=(sub, stop), daemon=True,
                                    name=f"demo-sub-{sub.saddr}") for sub in subs]
        for thread in threads:
            thread.start()
        rates = [float(spec.get("rates", {}).get(pub.saddr, 200)) for pub in pubs]
        _publish(pubs, rates, stop)
        for thread in threads:
            thread.join(2)
    finally:
        for conn in conns.values():
            with contextlib.suppress(OSError):
                conn.close()
    return 0


def _drain(sub: endpoints.Subscriber, stop: threading.Event) -> None:
    while not stop.is_set():
        sub.drain(1024, timeout_s=0.2)


def _publish(pubs: list[endpoints.Publisher], rates: list[float],
             stop: threading.Event) -> None:
    """Each publisher sends a frame once its own period has passed since its last one. A late
    tick never catches up with a burst: sends stay at least a period apart, so a route's token
    bucket (refilled at its qps, which the rate stays under) always has a token. A publisher
    without a route yet sends nothing; backpressure is the route's own policy at work."""
    payload = b"rtt-demo" * 8
    now = time.monotonic()
    due = [now] * len(pubs)
    while not stop.is_set():
        now = time.monotonic()
        for i, pub in enumerate(pubs):
            if now >= due[i]:
                with contextlib.suppress(endpoints.Backpressure):
                    pub.send(payload)
                due[i] = now + 1.0 / rates[i]
        stop.wait(max(0.0, min(due, default=now + 0.1) - time.monotonic()))


if __name__ == "__main__":
    sys.exit(main())
