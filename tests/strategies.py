"""Hypothesis strategies for desired states (attrs keeps its strategies in one module too).

`desired_states` draws small but valid states: symbols on a few nodes, p2p routes from distinct
senders and bus fan-out, all pointing "down" a layer order so the route graph is a DAG.
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import strategies as st

from rtt_controller.core import loading

LANES = ["shm", "uds", "tcp"]


@st.composite
def desired_states(draw: Any, max_symbols: int = 10, placed: bool = False,
                   shm_mb: int = 1) -> dict[str, Any]:
    """`placed`: every symbol names its node (no placement for the planner to choose);
    `shm_mb`: each node's ring budget."""
    n = draw(st.integers(min_value=2, max_value=max_symbols))
    nodes = ["n0", "n1"]
    symbols = []
    for i in range(n):
        sym: dict[str, Any] = {"saddr": f"rtt://d{i % 3}/api/s{i}", "type": "api",
                               "version": f"1.{draw(st.integers(0, 3))}.0", "caps": ["c"]}
        node = draw(st.sampled_from(nodes if placed else [None, *nodes]))
        if node is not None:
            sym["node"] = node
        symbols.append(sym)
    routes = []
    for i in range(n - 1):
        targets = draw(st.lists(st.integers(i + 1, n - 1), unique=True, max_size=3))
        cls = "bus" if len(targets) > 1 else "p2p"
        for j in targets:
            route: dict[str, Any] = {"from": symbols[i]["saddr"], "to": symbols[j]["saddr"],
                                     "class": cls, "version": "^1",
                                     "qos": {"throughput_qps": draw(st.sampled_from(
                                         [100, 1000, 50000]))}}
            lane = draw(st.sampled_from([None, *LANES]))
            if lane is not None:
                route["lane"] = lane
            routes.append(route)
    return {"symbols": symbols, "routes": routes,
            "policy": {"acl": {"default": "allow"},
                       "nodes": [{"name": nd, "shm_mb": shm_mb} for nd in nodes]}}


def to_files(state: dict[str, Any], *, split: int = 1) -> dict[str, bytes]:
    """Render a drawn state as repository files, the routes split over `split` files."""
    files = {
        "desired/symbols/all.yaml": yaml.safe_dump({"symbols": state["symbols"]}).encode(),
        "policies/policy.yaml": yaml.safe_dump(state["policy"]).encode(),
    }
    routes = state["routes"]
    for k in range(split):
        files[f"desired/routes/r{k}.yaml"] = yaml.safe_dump({"routes": routes[k::split]}).encode()
    return files


def parse(files: dict[str, bytes]) -> list[loading.ParsedFile]:
    return [loading.parse_file(path, data) for path, data in sorted(files.items())]
