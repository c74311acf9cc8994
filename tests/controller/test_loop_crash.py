"""`kill -9` of `rtt controller run` at random points of an apply, KILLS times over.

The issue's bar: after a restart the fabric is on a committed graph, the old one or the new one
but never a mix, and the loop converges.

Two desired states, A and B, alternate on the branch (one real git commit each time). The plan
between them is 25 steps in 13 batches of up to two: updates (an shm route moved to uds), an
n0-only route moved to a tcp lane (n0 -> n1) and back, routes removed and added; four routes
stay. Each iteration pushes the other state and kills the controller with SIGKILL after a random
delay (a seeded `random.Random`) spread over phases whose durations are measured first: from the
start of a controller launched after the push (imports, recovery, planning, the apply), from the
push for the running controller (watch, plan, sign, the apply's start), or from the running
controller's "applying" line (the 2PC batches, and a little past the end). So kills land before
the controller has read the push, between batches, between a PREPARE and its decision, between
the COMMIT to n0 and the one to n1, and after convergence. In some iterations the restarted
controller is killed a second time while it resumes the open plan.

What is asserted, at three points of each iteration:

1. Just after the kill (no controller alive): nothing is asserted about the graph, since a plan
   cut off half-way legitimately leaves a mix. It is recorded: A, B or a mix (per node, so an n0
   end of a tcp link without its n1 end is a mix too), and which txids the nodes hold in doubt.
2. Just after the restarted controller's recovery, before it plans anything new: the branch is
   hidden (renamed) while the controller restarts, so the recovery (settle the in-doubt txids,
   resume or undo the interrupted plan; neither reads the repository) runs, and then its first
   pass fails for want of the branch and is retried. At that point (the "retrying" line in its
   log) the fabric is at rest and must be A or B on *both* nodes, never a mix, with no txid in
   doubt on either node. If the log says it resumed the plan and converged, that is the new
   graph (if it undid it, the old one); if no plan was open, nothing moved since the kill.
3. The branch is put back: the loop must converge on the head (status: phase converged,
   revision == head, observed == desired == hash(head's state)), both nodes on the head's graph,
   nothing in doubt.

A and B's graphs (per node, and their union's hash) come from converged runs of each, first.
At the end, enough kills must have landed mid-apply (a plan open at the restart, so recovery
resumed it) for the test to mean anything; a summary line (shown even without -s) gives the
counts, and every kill's facts are in the captured output (shown with -rP, or on a failure).
"""

from __future__ import annotations

import dataclasses
import random
import re
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rtt_fabric import graph
from tests.conftest import Repo, git
from tests.controller import loopkit
from tests.controller.loopkit import World, converged_on, running, wait_for

pytestmark = pytest.mark.e2e

KILLS = 50
SEED = 20260127
WIDTH = 24
BATCH = 2
MIN_MID_APPLY = 10  # kills that must find a plan open at the restart, of KILLS


def _routes(lanes: dict[int, str | None]) -> list[tuple[int, str]]:
    """Routes 0-19 follow `lanes` by i % 4; 20-23 stay the same in both states."""
    out = []
    for i in range(WIDTH):
        lane = lanes[i % 4] if i < 20 else ("tcp" if i % 2 else "shm")
        if lane is not None:
            out.append((i, lane))
    return out


# A -> B: i%4 == 0 shm -> uds (update), 1 uds -> tcp (n0-only to n0 -> n1), 2 tcp -> gone,
# 3 absent -> shm. B -> A undoes each.
STATE_A = _routes({0: "shm", 1: "uds", 2: "tcp", 3: None})
STATE_B = _routes({0: "uds", 1: "tcp", 2: None, 3: "shm"})
ROUTES = {"A": STATE_A, "B": STATE_B}
OTHER = {"A": "B", "B": "A"}

RESUMING = re.compile(r"recovery: resuming (\S+) \((\d+) of (\d+) batches committed"
                      r"(, rolling back)?\)")
SETTLED = re.compile(r"recovery: (n\d) held (\S+) in doubt: (commit|abort)")
# The first pass after recovery, failing because the branch is hidden (not "recovery: retrying").
HELD = re.compile(r"^\[[\d:]+\] retrying in [\d.]+ s: refs/heads/main", re.MULTILINE)
APPLYING = re.compile(r"^\[[\d:]+\] [0-9a-f]{12}: applying ", re.MULTILINE)
RESUMING_OR_HELD = re.compile(f"{RESUMING.pattern}|{HELD.pattern}", re.MULTILINE)
FINISHED = re.compile(r"^\[[\d:]+\] [0-9a-f]{12}: (converged on|rolled-back|failed)",
                      re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Fabric:
    """The graph each node holds (its committed links' hash)."""

    n0: str
    n1: str
    union: str


@dataclasses.dataclass
class Kill:
    """What one iteration saw."""

    index: int
    mode: str  # "fresh" (started after the push), "running, from the push", "..., from applying"
    delay_s: float
    target: str  # the head's state, "A" or "B"
    at_kill: str = ""  # "A", "B" or "mix"
    in_doubt_at_kill: list[str] = dataclasses.field(default_factory=list)
    killed_in_recovery: bool = False
    resumed: str = ""  # the "recovery: resuming ..." line, if a plan was open
    recovery_finished: str = ""  # converged on / rolled-back / failed, if it resumed
    settled: list[str] = dataclasses.field(default_factory=list)
    after_recovery: str = ""

    @property
    def landed(self) -> str:
        if self.resumed:
            return "mid-apply"
        return "before" if self.at_kill == OTHER[self.target] else "after"

    def line(self) -> str:
        return (f"#{self.index} {self.mode} {self.delay_s * 1000:.0f} ms -> {self.target}: "
                f"at kill {self.at_kill} (in doubt {self.in_doubt_at_kill}), "
                f"{'killed in recovery, ' if self.killed_in_recovery else ''}"
                f"{self.resumed or 'no plan open'} {self.recovery_finished} "
                f"settled {self.settled}, after recovery {self.after_recovery}")


def _node_hash(world: World, node: str) -> str:
    links = world.daemons[node].graph()["links"]
    return graph.Graph.of(graph.Link.from_json(item) for item in links).hash


def _fabric(world: World) -> Fabric:
    return Fabric(_node_hash(world, "n0"), _node_hash(world, "n1"), world.observed_hash())


def _in_doubt(world: World) -> list[str]:
    found = []
    for name, d in world.daemons.items():
        with d.client() as c:
            found += [f"{name}:{t}" for t in c.call("status")["in_doubt"]]
    return found


def _which(fabric: Fabric, committed: dict[str, Fabric]) -> str:
    return next((name for name, f in committed.items() if f == fabric), "mix")


@pytest.fixture
def world(tmp_path: Path, make_repo: Callable[[str], Repo]) -> Iterator[World]:
    repo = make_repo("repo")
    loopkit.seed(repo, width=WIDTH, routes=STATE_A, batch=BATCH)
    w = World(tmp_path, repo).start(WIDTH)
    try:
        yield w
    finally:
        w.stop()


class Controllers:
    """`rtt controller run` processes, one log file each; whatever is left is killed."""

    def __init__(self, world: World) -> None:
        self.world, self.count = world, 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = world.root / "controller-0.log"

    def start(self) -> subprocess.Popen[bytes]:
        assert self.proc is None
        self.count += 1
        self.log = self.world.root / f"controller-{self.count}.log"
        self.proc = loopkit.controller_process(self.world, log=self.log)
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:
            code = self.proc.poll()
            assert code is None, f"the controller exited {code} by itself:\n{self.text()}"
            loopkit.kill9(self.proc)
            assert self.proc.returncode == -signal.SIGKILL
            self.proc = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            loopkit.kill9(self.proc)
        self.proc = None


def _converge(world: World, ctl: Controllers, revision: str, what: str) -> float:
    began = time.monotonic()
    wait_for(converged_on(world, revision), timeout_s=30,
             what=f"{what}: converged on {revision[:12]}\n{loopkit.dump(world)}\n"
                  f"--- controller\n{ctl.text()[-4000:]}")
    return time.monotonic() - began


def _wait_log(ctl: Controllers, pattern: re.Pattern[str], *, count: int = 1,
              what: str = "") -> str:
    """Wait for the `count`th match of `pattern` in the current controller's log; poll fast,
    since the kill delays are counted from it."""
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        text = ctl.text()
        if len(pattern.findall(text)) >= count:
            return text
        time.sleep(0.001)
    raise AssertionError(f"timed out waiting for {pattern.pattern!r} in the controller's log "
                         f"{what}\n{text}")


@pytest.mark.timeout(600)
def test_kill9_at_random_points_of_an_apply_recovers_to_a_committed_graph(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    repo = world.repo
    ctl = Controllers(world)
    kills: list[Kill] = []
    try:
        # The committed graphs, from converged runs; and how long the phases of an apply take,
        # to aim the kills: the controller's start (imports, recovery, the first plan), its
        # pick-up of a push (watch, plan, sign), the 2PC batches.
        began = time.monotonic()
        ctl.start()
        _converge(world, ctl, loopkit.head(repo), "seed A")
        t_fresh = time.monotonic() - began
        committed = {"A": _fabric(world)}
        pushed = time.monotonic()
        head = loopkit.push_routes(repo, STATE_B, "B")
        _wait_log(ctl, APPLYING, count=2)
        t_pickup = time.monotonic() - pushed
        _converge(world, ctl, head, "B")
        committed["B"] = _fabric(world)
        assert committed["A"] != committed["B"]
        assert world.status()["desired_graph_hash"] == committed["B"].union
        t_apply = world.history()[-1].duration_s
        ctl.kill()  # idle: the next apply is timed from a fresh start
        head = loopkit.push_routes(repo, STATE_A, "A")
        began = time.monotonic()
        ctl.start()
        _converge(world, ctl, head, "A, fresh")
        t_fresh = max(t_fresh, time.monotonic() - began)
        t_apply = max(t_apply, world.history()[-1].duration_s, 0.01)
        current = "A"
        timings = (f"from a fresh start {t_fresh * 1000:.0f} ms, pick-up of a push "
                   f"{t_pickup * 1000:.0f} ms, 2PC batches {t_apply * 1000:.0f} ms")
        print(timings)

        for index in range(KILLS):
            target = OTHER[current]
            draw = rng.random()
            if draw < 0.25:  # a controller started after the push: from its first instruction
                mode = "fresh"
                ctl.kill()  # at rest: changes nothing, and the push finds no controller
                head = loopkit.push_routes(repo, ROUTES[target], target)
                ctl.start()
                delay = rng.uniform(0.0, 1.3 * t_fresh)
            elif draw < 0.4:  # the running controller, from the push: watch, plan, sign
                mode = "running, from the push"
                head = loopkit.push_routes(repo, ROUTES[target], target)
                delay = rng.uniform(0.0, 1.5 * t_pickup)
            else:  # the running controller, from its "applying" line: the 2PC batches
                mode = "running, from applying"
                # How long the batches take here, lately: the applies so far, by their median.
                t_apply = statistics.median(e.duration_s for e in world.history()
                                            if e.outcome == "promoted")
                applied = len(APPLYING.findall(ctl.text()))
                head = loopkit.push_routes(repo, ROUTES[target], target)
                _wait_log(ctl, APPLYING, count=applied + 1)
                delay = rng.uniform(0.0, 1.3 * t_apply)
            kill = Kill(index, mode, delay, target)
            kills.append(kill)
            time.sleep(delay)
            ctl.kill()

            # 1. Dead: record what the fabric looks like, mix allowed.
            kill.at_kill = _which(_fabric(world), committed)
            kill.in_doubt_at_kill = _in_doubt(world)

            # 2. Restart with the branch hidden: recovery runs, then the first pass is held.
            git(repo.path, "branch", "-m", "main", "held")
            earlier = ""
            if rng.random() < 0.3:  # kill it again while it resumes an open plan
                ctl.start()
                first = _wait_log(ctl, RESUMING_OR_HELD)
                if RESUMING.search(first):
                    kill.killed_in_recovery = True
                    time.sleep(rng.uniform(0.0, 1.3 * t_apply))
                ctl.kill()
                earlier = ctl.text()
            at_restart = _which(_fabric(world), committed)
            ctl.start()
            last = _wait_log(ctl, HELD, what=f"(recovery to finish): {kill.line()}")
            text = earlier + last
            resumed = RESUMING.search(text)
            kill.resumed = resumed.group(0) if resumed else ""
            done = FINISHED.search(text)
            kill.recovery_finished = done.group(1) if done else ""
            kill.settled = [f"{m[1]}:{m[3]}" for m in SETTLED.finditer(text)]
            after = _fabric(world)
            kill.after_recovery = _which(after, committed)
            context = f"{kill.line()}\n--- controller\n{text}\n{loopkit.dump(world)}"
            assert kill.after_recovery in committed, f"a mix after recovery: {after}\n{context}"
            assert _in_doubt(world) == [], context
            if RESUMING.search(last) and FINISHED.search(last):
                finished_last = FINISHED.findall(last)[-1]
                expected = target if finished_last == "converged on" else current
                assert kill.after_recovery == expected, context
            if not RESUMING.search(last):  # no plan open at this start: nothing moved
                assert at_restart == kill.after_recovery, context

            # 3. The branch back: the loop converges on the head.
            git(repo.path, "branch", "-m", "held", "main")
            _converge(world, ctl, head, kill.line())
            status = world.status()
            assert _fabric(world) == committed[target], context
            assert status["observed_graph_hash"] == status["desired_graph_hash"] == \
                committed[target].union, context
            assert _in_doubt(world) == [], context
            current = target
    finally:
        ctl.close()
        for k in kills:
            print(k.line())

    landed = Counter(k.landed for k in kills)
    recovered = Counter(k.recovery_finished for k in kills)
    summary = (f"{len(kills)} kills: {landed['before']} before the apply, "
               f"{landed['mid-apply']} mid-apply "
               f"({sum(k.at_kill == 'mix' for k in kills)} left a mix, "
               f"{sum(bool(k.in_doubt_at_kill) for k in kills)} left a txid in doubt), "
               f"{landed['after']} after convergence; "
               f"{sum(k.killed_in_recovery for k in kills)} killed again while resuming; "
               f"recovery finished {recovered['converged on']} plans forward, "
               f"{recovered['rolled-back']} undone; "
               f"in-doubt txids settled {sum(len(k.settled) for k in kills)}")
    with capsys.disabled():
        print(f"\n{timings}\n{summary}")
    assert len(kills) >= KILLS
    assert landed["mid-apply"] >= MIN_MID_APPLY, summary


@pytest.mark.timeout(120)
def test_one_controller_flips_a_b_a_b(world: World) -> None:
    """A -> B -> A -> B in one controller process: the third plan is the first one again (a
    plan id is its content's digest). Its transactions must still be new ones: when txids were
    made of the plan id, epoch and batch, each node refused the PREPARE ("already decided"), the
    coordinator took its own old COMMIT for the answer, nothing moved, the verify failed and the
    revision was judged rolled back for good."""
    repo = world.repo

    def judged(rev: str) -> bool:
        status = world.status()
        return rev in (status.get("judged_revision"), status.get("revision")) and \
            status.get("phase") in ("converged", "rolled-back")

    with running(world):
        wait_for(converged_on(world, loopkit.head(repo)), what="A")
        for name in ("B", "A", "B"):
            rev = loopkit.push_routes(repo, ROUTES[name], name)
            wait_for(lambda: judged(rev), what=f"{name} judged")  # noqa: B023 - waited here
            status = world.status()
            assert status["phase"] == "converged", status["last_error"]
    assert _fabric(world).union == world.status()["desired_graph_hash"]
