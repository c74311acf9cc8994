"""Planner benchmark: full plans, incremental replans, and ILP against greedy.

    python -m bench.planner [--sizes 1000,10000,100000] [--runs 3] [--json FILE]

- full: `rtt plan --format json` on a generated repo, as a fresh process (wall time, peak RSS),
  at each size, plus the 1k case on each assigner a user could pick (CBC, HiGHS, greedy);
- incremental: in one process with a warm blob cache and memo, replan after a one-route commit on
  a 10k-route base; the peer is a cold in-process replan of the same commit;
- ilp-vs-greedy: objective and time on 200 and 500 routes (CBC, HiGHS, greedy);
- canonical: plan-id hashing of a 10k plan with RTT's encoder against the `rfc8785` reference.

Every figure is the median of --runs runs. Prints Markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rfc8785

from bench import generate
from rtt_controller import solvers
from rtt_controller.core import assignment, inventory, loading, planner
from rtt_controller.core.plan import Provenance
from rtt_controller.source import gitrepo
from rtt_controller.source.snapshot import ParseCache
from rtt_fabric import canonical

RTT = str(Path(sys.executable).parent / "rtt")
ORIGIN = Provenance(repo=None, commit=None, created_at=None, backend="")
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@example.invalid"}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=GIT_ENV)


def make_repo(root: Path, routes: int) -> Path:
    repo = root / f"state-{routes}"
    repo.mkdir()
    generate.write(repo, generate.generate(routes))
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", f"{routes} routes")
    return repo


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (the YAML workers), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total * 1024


def _spawn(argv: list[str]) -> tuple[float, int, int]:
    """Run argv with stdout to /dev/null.

    Returns wall seconds, the main process's peak RSS (exact, from wait4) and the peak RSS of its
    whole process tree (sampled every 20 ms), in bytes.
    """
    with open(os.devnull, "wb") as sink:
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, sink.fileno(), 1)])
        tree = 0
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            tree = max(tree, _tree_rss(pid))
            time.sleep(0.02)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed")
    return wall, usage.ru_maxrss * 1024, max(tree, usage.ru_maxrss * 1024)


def _median(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def full(repo: Path, runs: int, *extra: str) -> dict[str, Any]:
    samples = [_spawn([RTT, "plan", "--repo", str(repo), "--format", "json", *extra])
               for _ in range(runs)]
    return {"wall_s": statistics.median(s[0] for s in samples),
            "peak_rss_mib": statistics.median(s[1] for s in samples) / 2**20,
            "peak_tree_rss_mib": statistics.median(s[2] for s in samples) / 2**20,
            "runs": [round(s[0], 3) for s in samples]}


def incremental(repo: Path, runs: int) -> dict[str, Any]:
    git = gitrepo.open_repo(repo)
    cache, memo = ParseCache(), planner.Memo()
    solve = solvers.solver("cbc")

    def plan(rev_cache: ParseCache, rev_memo: planner.Memo, base: inventory.Graph
             ) -> planner.Result:
        snap = gitrepo.snapshot(git, "HEAD", rev_cache)
        return planner.make_plan(snap.files, base=base, solve=solve, backend="cbc",
                                 origin=ORIGIN, memo=rev_memo)

    base = plan(cache, memo, inventory.EMPTY).desired.graph
    # A long-running planner (the reconcile loop) freezes its long-lived values after each plan,
    # so the cyclic GC does not re-walk 10k routes' worth of objects on every replan.
    gc.freeze()
    warm, cold, steps = [], [], []
    routes_file = repo / "desired/routes/r0003.yaml"
    for i in range(runs):
        text = routes_file.read_text(encoding="utf-8").splitlines(keepends=True)
        line = next(k for k, t in enumerate(text) if "throughput_qps" in t and k > 1 + i)
        text[line] = text[line].replace("throughput_qps: ", "throughput_qps: 1", 1)
        routes_file.write_text("".join(text), encoding="utf-8")
        _git(repo, "commit", "-q", "-am", f"one route changed ({i})")
        start = time.perf_counter()
        result = plan(cache, memo, base)
        warm.append(time.perf_counter() - start)
        steps.append(len(result.plan.steps))
        start = time.perf_counter()
        plan(ParseCache(), planner.Memo(), base)
        cold.append(time.perf_counter() - start)
        base = result.desired.graph
        gc.freeze()
    return {"warm_ms": statistics.median(warm) * 1000, "cold_ms": statistics.median(cold) * 1000,
            "steps": steps, "warm_runs_ms": [round(w * 1000, 1) for w in warm]}


def ilp_vs_greedy(routes: int, runs: int) -> dict[str, Any]:
    files = [loading.parse_file(p, t.encode())
             for p, t in sorted(generate.generate(routes, seed=11).items())]
    out: dict[str, Any] = {}
    for name, algorithm, backend in (("cbc", "ilp", "cbc"), ("highs", "ilp", "highs"),
                                     ("greedy", "greedy", "cbc")):
        times, result = [], None
        for _ in range(runs):
            start = time.perf_counter()
            result = planner.desired_graph(files, base=inventory.EMPTY,
                                           solve=solvers.solver(backend), backend=backend,
                                           algorithm=algorithm)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
        assert result is not None
        score = assignment.score(result.demands, result.assignment, inventory.EMPTY,
                                 result.state.policy)
        out[name] = {"time_s": statistics.median(times), "objective": score.to_json(),
                     "graph_hash": result.graph.hash}
    best = out["cbc"]["objective"]["latency"]
    for entry in out.values():
        entry["latency_gap_pct"] = 100 * (entry["objective"]["latency"] - best) / best
    return out


def canonical_encoders(repo: Path, runs: int) -> dict[str, float]:
    snap = gitrepo.snapshot(gitrepo.open_repo(repo), "HEAD", ParseCache())
    content = planner.make_plan(snap.files, base=inventory.EMPTY, solve=None, backend="cbc",
                                origin=ORIGIN).plan.content
    ours = _median(runs, lambda: _timed(lambda: canonical.dumps(content)))
    reference = _median(runs, lambda: _timed(lambda: rfc8785.dumps(content)))
    assert canonical.dumps(content) == rfc8785.dumps(content)
    return {"rtt_s": ours, "rfc8785_s": reference}


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="RTT planner benchmark")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"cores": os.cpu_count(), "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="rtt-bench-") as tmp:
        repos = {n: make_repo(Path(tmp), n) for n in sorted({*sizes, 1000, 10000})}
        results["full"] = {n: full(repos[n], args.runs) for n in sizes}
        results["full_1k_by_assigner"] = {
            name: full(repos[1000], args.runs, *extra) for name, extra in
            (("ilp-cbc", ("--solver", "cbc")), ("ilp-highs", ("--solver", "highs")),
             ("greedy", ("--algorithm", "greedy")))}
        results["canonical_10k"] = canonical_encoders(repos[10000], args.runs)
        results["incremental_10k"] = incremental(repos[10000], max(args.runs, 5))
    results["ilp_vs_greedy"] = {n: ilp_vs_greedy(n, args.runs) for n in (200, 500)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(render(results))


def render(r: dict[str, Any]) -> str:
    lines = [f"cores: {r['cores']}, median of {r['runs']} runs", "",
             "| routes | wall (s) | peak RSS, main (MiB) | peak RSS, with workers (MiB) "
             "| runs (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {v['wall_s']:.2f} | {v['peak_rss_mib']:.0f} | "
              f"{v['peak_tree_rss_mib']:.0f} | {v['runs']} |" for n, v in r["full"].items()]
    by = r["full_1k_by_assigner"]
    lines += ["", "| 1k routes, assigner | wall (s) | vs greedy |", "|---|---|---|"]
    lines += [f"| {name} | {v['wall_s']:.2f} | {v['wall_s'] / by['greedy']['wall_s']:.2f}x |"
              for name, v in by.items()]
    inc = r["incremental_10k"]
    lines += ["", "| 10k base, one route changed | median (ms) | ratio |", "|---|---|---|",
              f"| warm cache + memo | {inc['warm_ms']:.1f} | 1.00x |",
              f"| cold in-process replan | {inc['cold_ms']:.1f} | "
              f"{inc['cold_ms'] / inc['warm_ms']:.1f}x |"]
    c = r["canonical_10k"]
    lines += ["", "| plan-id encoding, 10k plan | median (s) | ratio |", "|---|---|---|",
              f"| rtt canonical | {c['rtt_s']:.3f} | 1.00x |",
              f"| rfc8785 reference | {c['rfc8785_s']:.3f} | {c['rfc8785_s'] / c['rtt_s']:.1f}x |"]
    lines += ["", "| routes | assigner | time (s) | latency objective | gap vs ILP | churn |",
              "|---|---|---|---|---|---|"]
    for n, by_name in r["ilp_vs_greedy"].items():
        lines += [f"| {n} | {name} | {v['time_s']:.2f} | {v['objective']['latency']} | "
                  f"{v['latency_gap_pct']:+.2f}% | {v['objective']['churn']} |"
                  for name, v in by_name.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
