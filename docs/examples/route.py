"""The driver of docs/sdk.md: commits the route from the metrics service to the dashboard.

    python docs/examples/route.py --socket PATH [--lane shm|uds|tcp] [--node NAME]

It stands in for the controller. It waits until both example services (metrics_service.py) have
registered with the node daemon, then runs the two-phase commit a controller runs: PREPARE one
batch of one step, and COMMIT it once the daemon votes ACK. At the COMMIT the daemon makes the
route's lane and pushes it to both services. Run again, it leaves an identical route alone and
updates one whose lane or QoS differs. It talks to the daemon with rtt_fabric.client.Client.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from typing import Any

from metrics_service import DASHBOARD_IN, METRICS_OUT, VERSION

from rtt_fabric import graph
from rtt_fabric.client import Client, ClientError

SERVICES = ("dashboard", "metrics")


def wanted(args: argparse.Namespace) -> dict[str, Any]:
    """The link as plans write it (docs/format.md): both ends on this node."""
    return {"from": METRICS_OUT, "to": DASHBOARD_IN, "class": "p2p", "lane": args.lane,
            "from_node": args.node, "to_node": args.node, "version": VERSION, "caps": [],
            "qos": {"latency_budget_ms": args.budget_ms, "throughput_qps": args.qps,
                    "backpressure": args.backpressure}}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two links in plan JSON are the same link (the daemon writes 10 as 10.0)."""
    return graph.Link.from_json(a) == graph.Link.from_json(b)


def wait_for_services(socket_path: str, timeout_s: float) -> Client:
    """A client, once the daemon answers and both services have registered."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client = Client(socket_path, timeout_s=10)
        except (FileNotFoundError, ConnectionRefusedError):
            client = None
        if client is not None:
            if set(SERVICES) <= set(client.call("status")["services"]):
                return client
            client.close()
        if time.monotonic() > deadline:
            raise SystemExit(f"route: {', '.join(SERVICES)} did not register within "
                             f"{timeout_s} s")
        time.sleep(0.05)


def step(client: Client, link: dict[str, Any]) -> dict[str, Any] | None:
    """The one step that makes the committed graph hold `link`; None if it already does."""
    key = (link["from"], link["to"], link["class"])
    for old in client.call("get_graph")["graph"]["links"]:
        if (old["from"], old["to"], old["class"]) == key:
            return None if same(old, link) else {"op": "update", "link": link, "old": old}
    return {"op": "add", "link": link}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--socket", required=True, help="the node daemon's control socket")
    parser.add_argument("--node", default="local", help="the daemon's --node (default local)")
    parser.add_argument("--lane", choices=("shm", "uds", "tcp"), default="shm")
    parser.add_argument("--qps", type=int, default=10_000, help="the route's throughput_qps")
    parser.add_argument("--budget-ms", type=float, default=10.0,
                        help="the route's latency_budget_ms")
    parser.add_argument("--backpressure", choices=("taildrop", "mark", "nack", "buffer"),
                        default="buffer")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    args = parser.parse_args(argv)

    with wait_for_services(args.socket, args.timeout) as client:
        change = step(client, wanted(args))
        if change is None:
            print(f"route: {METRICS_OUT} -> {DASHBOARD_IN} is already committed as asked")
            return 0
        steps = [change]
        # A plan id names the batch; a digest of the steps stands in for the planner's here.
        digest = hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).hexdigest()
        txid = f"sdk-demo-{uuid.uuid4().hex[:12]}"
        try:
            vote = client.call("prepare", txid=txid, plan_id=f"sha256-{digest}", steps=steps)
            if vote["vote"] != "ack":
                print(f"route: the daemon voted NACK: {vote['reason']}", file=sys.stderr)
                return 1
            done = client.call("commit", txid=txid)
        except ClientError as exc:
            print(f"route: {exc}", file=sys.stderr)
            return 1
    print(f"route: {change['op']} {METRICS_OUT} -> {DASHBOARD_IN} over {args.lane}: "
          f"committed at epoch {done['epoch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
