"""Generate synthetic desired states for the planner benchmarks (and large-scale tests).

A layered service graph: `hook` senders route p2p to `api` symbols, and `bus` symbols fan out to
`api` symbols, so the route graph is a DAG by construction. Traffic and budgets are drawn from a
seeded RNG; node shared-memory budgets are sized so that shm capacity binds for part of the
routes, which is what makes lane assignment a real optimisation. Deterministic for a given seed.

    python bench/generate.py --routes 10000 --out /tmp/state10k   # writes desired/ + policies/
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

ROUTES_PER_FILE = 250  # a team-sized file; an edit re-parses one of them


def generate(routes: int, *, seed: int = 7, placed: float = 0.7, nodes: int | None = None,
             shm_mb: int | None = None) -> dict[str, str]:
    """Return {relative path: YAML text} for a desired state with `routes` routes."""
    rng = random.Random(seed)
    n_nodes = nodes or max(2, routes // 2000)
    node_names = [f"n{k}" for k in range(n_nodes)]
    n_api = max(4, routes // 4)
    n_bus_routes = routes // 5
    n_bus = max(1, n_bus_routes // 6)
    n_hooks = routes - n_bus_routes
    symbols: list[str] = []

    def symbol(saddr: str, kind: str) -> None:
        node = f"\n    node: {rng.choice(node_names)}" if rng.random() < placed else ""
        symbols.append(f"  - saddr: {saddr}\n    type: {kind}\n    version: 1.{rng.randint(0, 3)}.0"
                       f"\n    caps: [data.rw]{node}")

    for a in range(n_api):
        symbol(f"rtt://svc{a // 20}/api/a{a}", "api")
    for b in range(n_bus):
        symbol(f"rtt://bus{b // 20}/bus/b{b}", "bus")
    for h in range(n_hooks):
        symbol(f"rtt://app{h // 50}/hook/h{h}", "hook")
    lines: list[str] = []
    for h in range(n_hooks):
        lines.append(_route(rng, f"rtt://app{h // 50}/hook/h{h}", rng.randrange(n_api), "p2p"))
    fanout = [n_bus_routes // n_bus + (b < n_bus_routes % n_bus) for b in range(n_bus)]
    for b, count in enumerate(fanout):
        for a in rng.sample(range(n_api), count):  # distinct targets: one route per pair
            lines.append(_route(rng, f"rtt://bus{b // 20}/bus/b{b}", a, "bus"))
    files = {}
    for k in range(0, len(symbols), ROUTES_PER_FILE):
        files[f"desired/symbols/s{k // ROUTES_PER_FILE:04d}.yaml"] = \
            "symbols:\n" + "\n".join(symbols[k:k + ROUTES_PER_FILE]) + "\n"
    for k in range(0, len(lines), ROUTES_PER_FILE):
        files[f"desired/routes/r{k // ROUTES_PER_FILE:04d}.yaml"] = \
            "routes:\n" + "\n".join(lines[k:k + ROUTES_PER_FILE]) + "\n"
    # About 40 KiB of ring per route at the drawn rates; give shm room for roughly half of them.
    budget = shm_mb if shm_mb is not None else max(1, routes * 40 // 2 // 1024 // n_nodes)
    node_yaml = "\n".join(f"  - {{name: {n}, shm_mb: {budget}}}" for n in node_names)
    files["policies/policy.yaml"] = (
        "acl: {default: allow}\n"
        f"nodes:\n{node_yaml}\n"
        "routing:\n  prefer: [shm, uds, tcp]\n  fanout: {default_max: 16}\n"
        "  greedy_threshold: 1000\n"
        "rollout: {batch_size: 256}\n"
    )
    return files


def _route(rng: random.Random, src: str, a: int, cls: str) -> str:
    qps = rng.choice([100, 500, 1000, 5000, 20000, 50000])
    budget = rng.choice([1, 2, 5, 10, 50])
    return (f"  - {{from: {src}, to: rtt://svc{a // 20}/api/a{a}, class: {cls}, version: ^1,"
            f" qos: {{latency_budget_ms: {budget}, throughput_qps: {qps}}}}}")


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write(args.out, generate(args.routes, seed=args.seed))


if __name__ == "__main__":
    main()
