"""The GitOps loop: watch a branch, plan against the live fabric, sign, apply, verify, heal drift.

Level-triggered: each pass reads the branch's head and the fabric's observed graph and plans the
one from the other, so a burst of commits costs one pass for the newest, a missed event costs
nothing but the resync interval, and a restart needs no event log. A pass ends in one of:

- converged: observed == desired (nothing to do, or a plan promoted);
- rolled back / failed: the coordinator undid the plan; the revision is not retried until the
  branch moves, unless the cause was passing (a node unreachable or in doubt);
- invalid: the revision's desired state is rejected (file:line:rule in the status); terminal for
  that revision, nothing applied;
- drift: the fabric left the last applied graph while the branch stood still; healed, or only
  recorded when policy says `reconcile: {drift: detect}`.

Transient errors (a fetch, a node) are retried with capped, jittered backoff. The loop owns the
state directory (one controller per directory, `applying.locked`): the coordinator's WAL, the
plans it applied with their signatures (`plans/`), status and history (records.py). At start it
settles what the nodes hold in doubt and finishes the plan a crash interrupted.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import random
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pygit2
import watchfiles

from rtt_controller import solvers
from rtt_controller.core import inventory, loading, model, planner
from rtt_controller.core import plan as plan_mod
from rtt_controller.reconcile import applying, records, rollout, telemetry
from rtt_controller.reconcile import coordinator as coord
from rtt_controller.reconcile import gate as slo
from rtt_controller.signing import keys, sidecar
from rtt_controller.source import commits, gitrepo
from rtt_controller.source.snapshot import ParseCache, Snapshot
from rtt_fabric import envelope, trust, wal
from rtt_fabric.client import ClientError

Say = Callable[[str], None]


class Outcome(enum.StrEnum):
    CONVERGED = "converged"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"
    INVALID = "invalid"
    DRIFT_DETECTED = "drift-detected"
    WAITING = "waiting"  # a revision already judged (invalid or rolled back): nothing to do


@dataclasses.dataclass(frozen=True)
class Pass:
    """What one reconcile pass did."""

    outcome: Outcome
    revision: str
    plan_id: str = ""
    observed_hash: str = ""
    reason: str = ""


class Transient(Exception):
    """A cause that may pass (a fetch, an unreachable node): retry the pass with backoff."""


@dataclasses.dataclass(frozen=True)
class Settings:
    repo: str  # a local repository (or a folder in one), or a URL to mirror and fetch
    state: Path
    nodes: Mapping[str, coord.Node]
    branch: str = "main"
    sign_key: Path | None = None  # ed25519 key that signs each plan; None: unsigned
    signatures: str | None = None  # a branch where CI publishes signed plans (plans/<id>.*)
    solver: str = "cbc"
    resync_s: float = 30.0  # a pass at least this often, events or not
    debounce_ms: int = 20  # ref events closer than this are one wake-up
    backoff_s: tuple[float, float] = (0.2, 30.0)  # first and largest retry delay


def is_url(repo: str) -> bool:
    return "://" in repo or (":" in repo and not Path(repo).exists() and "@" in repo)


class Loop:
    def __init__(self, settings: Settings, *, say: Say = lambda _: None,
                 otel: telemetry.Telemetry | None = None) -> None:
        self.settings, self.say = settings, say
        self.otel = otel or telemetry.Telemetry()
        self.state = settings.state
        self.book = records.Records(self.state)
        self.plans = self.state / "plans"
        self.cache = ParseCache()
        self.memo = planner.Memo()
        self.wake = threading.Event()
        self.coordinator: coord.Coordinator | None = None
        self._signer = keys.load(settings.sign_key) if settings.sign_key else None
        self._drift_mode = "heal"  # the policy's, as of the last revision planned
        self._healing = False  # this pass already removed stray links

    # --- the source ------------------------------------------------------------------------------

    @property
    def mirror(self) -> Path:
        return self.state / "source.git"

    def _local(self) -> Path:
        return self.mirror if is_url(self.settings.repo) else Path(self.settings.repo)

    def _fetch(self) -> None:
        """Mirror a remote repository into the state directory, then fetch it (the real git
        CLI, so credentials and transports are git's own)."""
        url = self.settings.repo
        if not (self.mirror / "HEAD").exists():
            argv = ["git", "clone", "--quiet", "--mirror", url, str(self.mirror)]
        else:
            argv = ["git", "-C", str(self.mirror), "fetch", "--quiet", "--prune", "origin"]
        try:
            subprocess.run(argv, check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError as exc:
            raise Transient(f"git {argv[3] if argv[1] == '-C' else 'clone'} {url}: "
                            f"{exc.stderr.decode(errors='replace').strip()}") from None
        except subprocess.TimeoutExpired:
            raise Transient(f"fetching {url}: timed out after 120 s") from None

    def _head(self) -> tuple[pygit2.Repository, str, str]:
        """The repository, the branch's head commit id, and the folder of it to read."""
        local = self._local()
        try:
            repo = gitrepo.open_repo(local)
            head = gitrepo.resolve(repo, f"refs/heads/{self.settings.branch}")
        except gitrepo.SourceError as exc:
            raise Transient(str(exc)) from None
        return repo, str(head.id), gitrepo.prefix_of(repo, local) if repo.workdir else ""

    # --- one pass --------------------------------------------------------------------------------

    def reconcile(self) -> Pass:
        """One level-triggered pass; raises Transient when it should be retried."""
        began = time.monotonic()
        with self.otel.phase("reconcile") as span:
            try:
                done = self._reconcile()
            finally:
                self.otel.reconcile_s.record(time.monotonic() - began)
            span.set_attribute("rtt.outcome", done.outcome.value)
            span.set_attribute("rtt.revision", done.revision)
            return done

    def _reconcile(self) -> Pass:
        self._healing = False
        if is_url(self.settings.repo):
            with self.otel.phase("fetch"):
                self._fetch()
        repo, head, prefix = self._head()
        status = self.book.status()
        if status.get("watched_revision") != head:
            self.book.set_status(watched_revision=head)
            status["watched_revision"] = head
        observed = self._observed(status, head)
        if status.get("judged_revision") == head:
            # Rejected or rolled back at this revision: wait for the branch to move. The drift
            # check still runs against what was last applied.
            if observed.hash == status.get("desired_graph_hash") or not status.get("revision"):
                return Pass(Outcome.WAITING, head, observed_hash=observed.hash,
                            reason=str(status.get("last_error") or ""))
            return self._drift(status, observed, head)
        return self._plan_and_apply(repo, head, prefix, status, observed)

    def _plan_and_apply(self, repo: pygit2.Repository, head: str, prefix: str,
                        status: dict[str, Any], observed: inventory.Graph) -> Pass:
        if status.get("revision") != head:  # a resync at the same revision stays "converged"
            self.book.set_status(phase=records.Phase.PLANNING.value,
                                 since=records.utc_now(time.time))
        result = self._plan(repo, head, prefix, observed)
        if isinstance(result, Pass):
            return result
        policy = result.desired.state.policy
        self._drift_mode = policy.reconcile.drift
        refused = self._commit_signatures(repo, head, policy.trust, status)
        if refused:
            return self._judged(head, Outcome.INVALID, result.plan.plan_id, refused, observed)
        built = result.plan
        if built.empty:
            return self._converged(head, built, observed, status)
        drifting = (status.get("revision") == head and status.get("phase") ==
                    records.Phase.CONVERGED.value and observed.hash != status.get(
                        "desired_graph_hash"))
        if drifting and policy.reconcile.drift == "detect":
            return self._drift(status, observed, head)
        if drifting and not self._healing:  # (stray links already recorded this drift)
            self._record_drift(status, observed, head, healing=True)
        published = self._signature(repo, head, prefix, built, policy=policy.trust,
                                    status=status, observed=observed)
        if isinstance(published, Pass):
            return published
        return self._apply(head, built, result.desired.graph, policy.rollout, published,
                           drift=drifting)

    def _plan(self, repo: pygit2.Repository, head: str, prefix: str,
              observed: inventory.Graph) -> planner.Result | Pass:
        """The plan from the observed graph to the revision's desired one, or the verdict on
        a revision that cannot be planned."""
        with self.otel.phase("plan", revision=head):
            try:
                snap = gitrepo.snapshot(repo, head, self.cache, prefix=prefix)
            except gitrepo.SourceError as exc:
                return self._judged(head, Outcome.INVALID, "", str(exc), observed)
            try:
                return planner.make_plan(
                    snap.files, base=observed, solve=solvers.solver(self.settings.solver),
                    backend=self.settings.solver, memo=self.memo,
                    origin=plan_mod.Provenance(repo=snap.repo, commit=snap.commit,
                                               created_at=snap.created_at, backend=""))
            except planner.Rejected as exc:
                return self._invalid(head, snap, exc.findings)

    def _observed(self, status: Mapping[str, Any], head: str) -> inventory.Graph:
        """The observed graph, after removing stray half-links (healing) or recording them
        (detect-only): a link one node holds without its peer is drift too."""
        assert self.coordinator is not None
        try:
            survey = self.coordinator.survey()
            if not survey.strays:
                return survey.observed
            strays = "; ".join(f"{node} holds {link.from_} -> {link.to} without its peer"
                               for node, link in survey.strays[:5])
            if self._drift_mode == "detect":
                self._record_drift(status, survey.observed, head, healing=False, what=strays)
                return survey.observed
            self._record_drift(status, survey.observed, head, healing=True, what=strays)
            self._healing = True
            done, why = self._repair(survey.strays, head)
            if not done:
                raise Transient(f"removing stray links: {why}")
            return self.coordinator.observed()
        except (OSError, ClientError, ConnectionError) as exc:
            raise Transient(f"reading the fabric's graph: {exc}") from None

    def _repair(self, strays: Sequence[tuple[str, inventory.Link]], head: str
                ) -> tuple[bool, str]:
        """Remove the strays in a transaction of their own, under a repair plan signed with
        the controller's key when it has one (a strict node takes nothing else)."""
        assert self.coordinator is not None
        if self._signer is None:
            return self.coordinator.repair(strays)
        built = plan_mod.repair([link for _, link in strays], stray_set=coord.stray_set(strays),
                                planner_version=planner.PLANNER_VERSION,
                                provenance=plan_mod.Provenance(repo=None, commit=head,
                                                               created_at=None,
                                                               backend=plan_mod.REPAIR))
        signed = {"signature": orjson.loads(self._own_signature(built)),
                  "content": built.content, "provenance": built.provenance.to_json()}
        return self.coordinator.repair(strays, plan_id=built.plan_id, signed_plan=signed)

    # --- outcomes --------------------------------------------------------------------------------

    def _converged(self, head: str, built: plan_mod.Plan, observed: inventory.Graph,
                   status: Mapping[str, Any]) -> Pass:
        desired = str(built.content["desired_graph_hash"])
        if status.get("revision") != head or status.get("phase") != "converged":
            self.book.set_status(phase=records.Phase.CONVERGED.value, revision=head,
                                 plan_id=built.plan_id, desired_graph_hash=desired,
                                 observed_graph_hash=observed.hash, drift=None, last_error=None,
                                 judged_revision=None, since=records.utc_now(time.time))
            if status.get("revision") != head:
                self.book.append(records.Entry(
                    revision=head, plan_id=built.plan_id, outcome=Outcome.CONVERGED.value,
                    started_at=records.utc_now(time.time), duration_s=0.0, batches=0,
                    reason="the fabric already matches"))
        return Pass(Outcome.CONVERGED, head, built.plan_id, observed.hash)

    def _invalid(self, head: str, snap: Snapshot, findings: list[loading.Finding]) -> Pass:
        diagnostics = loading.locate(findings, snap.raw(sorted({f.path for f in findings})))
        text = "; ".join(d.render() for d in diagnostics[:20]) + (
            f"; and {len(diagnostics) - 20} more" if len(diagnostics) > 20 else "")
        for d in diagnostics:
            self.say(f"{head[:12]}: {d.render()}")
        return self._judged(head, Outcome.INVALID, "", text, None,
                            diagnostics=[d.to_json() for d in diagnostics])

    def _judged(self, head: str, outcome: Outcome, plan_id: str, reason: str,
                observed: inventory.Graph | None, **extra: Any) -> Pass:
        """A terminal verdict for this revision: recorded once, not retried until the branch
        moves."""
        phase = records.Phase.FAILED if outcome is Outcome.INVALID else records.Phase.ROLLED_BACK
        self.book.set_status(phase=phase.value, judged_revision=head, last_error=reason,
                             since=records.utc_now(time.time), **extra)
        self.book.append(records.Entry(revision=head, plan_id=plan_id, outcome=outcome.value,
                                       started_at=records.utc_now(time.time), duration_s=0.0,
                                       batches=0, reason=reason))
        return Pass(outcome, head, plan_id, observed.hash if observed else "", reason)

    def _commit_signatures(self, repo: pygit2.Repository, head: str, policy: model.Trust,
                           status: Mapping[str, Any]) -> str:
        """Why the revision's commits are refused ('' when they pass or are not required)."""
        if not policy.require_signed_commits:
            return ""
        trusted = status.get("trusted_revision")
        try:
            checks = commits.verify_commits(repo, head=head, trusted=trusted, trust=policy)
        except commits.SignerKeyError as exc:
            return f"commit-signature: {exc}"
        bad = [c for c in checks if not c.ok]
        if bad:
            return "; ".join(f"commit-signature: {c.commit[:12]}: {c.problem}" for c in bad[:5])
        self.book.set_status(trusted_revision=head)
        return ""

    def _record_drift(self, status: Mapping[str, Any], observed: inventory.Graph, head: str,
                      *, healing: bool, what: str = "") -> None:
        summary = what or (f"observed {observed.hash} differs from the applied "
                           f"{status.get('desired_graph_hash')}")
        self.otel.drift.add(1)
        self.say(f"drift: {summary}" + ("; healing" if healing else "; detect-only"))
        self.book.set_status(drift={"observed_graph_hash": observed.hash,
                                    "detected_at": records.utc_now(time.time),
                                    "healing": healing})
        self.book.append(records.Entry(
            revision=head, plan_id=str(status.get("applied_plan_id") or ""),
            outcome="drift-healing" if healing else Outcome.DRIFT_DETECTED.value,
            started_at=records.utc_now(time.time), duration_s=0.0, batches=0, reason=summary))

    def _drift(self, status: Mapping[str, Any], observed: inventory.Graph, head: str) -> Pass:
        """Drift in detect-only mode (or at a judged revision): recorded once per observed
        graph."""
        seen = (status.get("drift") or {}).get("observed_graph_hash")
        if seen != observed.hash:
            self._record_drift(status, observed, head, healing=False)
        return Pass(Outcome.DRIFT_DETECTED, head, observed_hash=observed.hash,
                    reason="the fabric differs from the applied graph")

    # --- sign, apply -----------------------------------------------------------------------------

    def _signature(self, repo: pygit2.Repository, head: str, prefix: str, built: plan_mod.Plan,
                   *, policy: model.Trust, status: Mapping[str, Any], observed: inventory.Graph
                   ) -> tuple[Path, bytes] | Pass | None:
        """CI's signature for the plan, None for the controller's own (or none), or the pass's
        end: a published signature refused, or none published yet where one is awaited."""
        published = self._published(repo, prefix, built, policy)
        if isinstance(published, str):
            return self._judged(head, Outcome.INVALID, built.plan_id, published, observed)
        if published is None and self._signer is None and self.settings.signatures:
            why = (f"waiting for CI to publish a signature of {built.plan_id} on "
                   f"{self.settings.signatures}")
            if status.get("last_error") != why:
                self.say(f"{head[:12]}: {why}")
                self.book.set_status(last_error=why, plan_id=built.plan_id, revision=head)
            return Pass(Outcome.WAITING, head, built.plan_id, observed.hash, why)
        return published

    def _published(self, repo: pygit2.Repository, prefix: str, built: plan_mod.Plan,
                   policy: model.Trust) -> tuple[Path, bytes] | str | None:
        """The signature CI published for this very plan on the signatures branch
        (`plans/<plan_id>.sigstore.json` or `.dsse.json`): (where it goes beside the stored
        plan, its bytes) when the revision's trust policy accepts it, the refusal when it does
        not, None when there is none (or no branch is followed)."""
        ref = self.settings.signatures
        if ref is None:
            return None
        for method in (trust.Method.SIGSTORE, trust.Method.ED25519):
            rel = sidecar.path_for(Path("plans") / f"{built.plan_id}.json", method).as_posix()
            try:
                blob = repo.revparse_single(f"refs/heads/{ref}:{rel}")
            except (KeyError, ValueError, pygit2.GitError):
                continue
            if not isinstance(blob, pygit2.Blob):
                continue
            data = bytes(blob.data)
            base = Path(repo.workdir or repo.path) / prefix / "policies"
            try:
                accepted = trust.TrustPolicy.from_dict(policy.model_dump(mode="json"), base=base)
                verdict = trust.bind(trust.verify(data, accepted), built.to_json())
            except trust.PolicyError as exc:
                return f"{ref}:{rel}: {exc}"
            if not verdict.ok:
                cause = verdict.refusal.value if verdict.refusal else "refused"
                return f"{ref}:{rel}: {cause}: {verdict.problem}"
            self.say(f"{built.plan_id[:19]}: signed by {verdict.signer} ({ref}:{rel})")
            return sidecar.path_for(self.plans / f"{built.plan_id}.json", method), data
        return None

    def _store(self, built: plan_mod.Plan, published: tuple[Path, bytes] | None = None) -> Path:
        """Write the plan (and its signature) under state/plans before anything applies it:
        a restarted controller resumes an interrupted plan from this file. A signature CI
        published (already verified) goes beside it as it is; otherwise the controller's key,
        if it has one, signs."""
        self.plans.mkdir(parents=True, exist_ok=True)
        path = self.plans / f"{built.plan_id}.json"
        records.write_atomic(path, orjson.dumps(built.to_json(), option=orjson.OPT_SORT_KEYS))
        if published is not None:
            records.write_atomic(*published)
        elif self._signer is not None:
            with self.otel.phase("sign", plan_id=built.plan_id):
                records.write_atomic(sidecar.path_for(path, trust.Method.ED25519),
                                     self._own_signature(built))
        return path

    def _own_signature(self, built: plan_mod.Plan) -> bytes:
        """The controller's signature of `built`, as a signature file holds it; checked
        against the controller's own key first: our own signature must verify, or nothing is
        applied."""
        assert self._signer is not None
        key_id, private = self._signer
        statement = envelope.Statement(plan_id=built.plan_id,
                                       provenance=built.provenance.to_json())
        data = orjson.dumps(keys.sign(statement, key_id=key_id, key=private).to_json())
        verdict = trust.bind(trust.verify(data, self._own_trust()), built.to_json())
        if not verdict.ok:
            raise RuntimeError(f"the controller's signature on {built.plan_id} does not "
                               f"verify: {verdict.problem}")
        return data

    def _own_trust(self) -> trust.TrustPolicy:
        assert self._signer is not None
        key_id, private = self._signer
        return trust.TrustPolicy(keys=(trust.TrustedKey(
            key_id, trust.decode_public_key(keys.public_key_text(private.public_key()),
                                            key_id=key_id)),))

    def _apply(self, head: str, built: plan_mod.Plan, desired: inventory.Graph,
               policy: model.Rollout, published: tuple[Path, bytes] | None, *,
               drift: bool) -> Pass:
        assert self.coordinator is not None
        path = self._store(built, published)
        data = orjson.loads(path.read_bytes())
        batches = applying.batches(built)
        self.say(f"{head[:12]}: applying {built.plan_id[:19]} ({len(built.steps)} steps in "
                 f"{len(batches)} batches)")
        self.book.set_status(phase=records.Phase.APPLYING.value, revision=head,
                             plan_id=built.plan_id, canary=None,
                             since=records.utc_now(time.time))
        began, started = time.monotonic(), records.utc_now(time.time)
        canary = self._canary(head, batches, policy, desired.hash)
        with self.otel.phase("apply", plan_id=built.plan_id, batches=len(batches)):
            result = self.coordinator.apply(
                plan_id=built.plan_id, batches=batches, desired_hash=desired.hash,
                signed_plan=applying.signed(path, data), on_verify=self._verifying,
                desired=desired, canary=coord.Canary(canary.ends, canary.gate) if canary
                else None)
        return self._finish(head, built.plan_id, desired.hash, result, began=began,
                            started=started, drift=drift, canary=canary)

    def _canary(self, head: str, batches: Sequence[Sequence[Any]], policy: model.Rollout,
                desired_hash: str) -> rollout.Rollout | None:
        """The canary for this apply, or None: canary off in policy, nothing to apply, or a
        revert to a graph promoted before when policy allows the fast path."""
        if not policy.canary or not batches:
            return None
        if policy.fast_revert and any(e.outcome == Outcome.PROMOTED.value
                                      and e.desired_graph_hash == desired_hash
                                      for e in self.book.history()):
            self.say(f"{head[:12]}: this graph was promoted before: fast path, no canary")
            return None
        return rollout.Rollout(nodes=self.settings.nodes, policy=policy, batches=batches,
                               superseded=lambda: self._moved(head),
                               observe=self._observe_canary(policy))

    def _moved(self, head: str) -> bool:
        """Whether the branch has moved past `head` (a paused canary gives way to it)."""
        try:
            return self._head()[1] != head
        except Transient:
            return False

    def _observe_canary(self, policy: model.Rollout) -> rollout.Observer:
        def observe(record: rollout.StepRecord, window: slo.Window | None) -> None:
            paused = (window is not None and window.verdict is slo.Verdict.INCONCLUSIVE
                      and policy.on_inconclusive == "pause")
            phase = records.Phase.PAUSED if paused else records.Phase.CANARY
            self.book.set_status(phase=phase.value, since=records.utc_now(time.time),
                                 canary={"step": record.percent, "batches": record.batches,
                                         "routes": record.routes,
                                         "windows": len(record.windows),
                                         "last": window.summary() if window else None})
            self.otel.canary_step.set(record.percent)
            if window is not None:
                self.otel.verdicts.add(1, {"verdict": window.verdict.value})
                self.say(f"canary {record.percent}%: window {len(record.windows)}: "
                         f"{window.summary()}")
        return observe

    def _verifying(self) -> None:
        self.book.set_status(phase=records.Phase.VERIFYING.value,
                             since=records.utc_now(time.time))

    def _finish(self, head: str, plan_id: str, desired: str, result: coord.Result, *,
                began: float, started: str, drift: bool = False,
                canary: rollout.Rollout | None = None) -> Pass:
        took = time.monotonic() - began
        self.otel.apply_s.record(took)
        self.otel.batches.add(result.committed)
        if result.outcome is coord.Outcome.PROMOTED:
            self.otel.promotions.add(1)
        else:
            self.otel.rollbacks.add(1)
            self.otel.rollback_s.record(took)
        outcome = {coord.Outcome.PROMOTED: Outcome.PROMOTED,
                   coord.Outcome.ROLLED_BACK: Outcome.ROLLED_BACK,
                   coord.Outcome.FAILED: Outcome.FAILED}[result.outcome]
        steps_judged = tuple(step.to_json() for step in canary.steps) if canary else ()
        self.book.append(records.Entry(
            revision=head, plan_id=plan_id, outcome=outcome.value + (" (drift)" if drift else ""),
            started_at=started, duration_s=round(took, 3), batches=result.committed,
            reason=result.reason, desired_graph_hash=desired, canary=steps_judged))
        if result.outcome is coord.Outcome.PROMOTED:
            self.book.set_status(phase=records.Phase.CONVERGED.value, revision=head,
                                 applied_plan_id=plan_id, desired_graph_hash=desired,
                                 observed_graph_hash=result.observed_hash, last_error=None,
                                 drift=None, judged_revision=None,
                                 since=records.utc_now(time.time))
            self.say(f"{head[:12]}: converged on {plan_id[:19]}")
            return Pass(Outcome.PROMOTED, head, plan_id, result.observed_hash)
        phase = (records.Phase.ROLLED_BACK if result.outcome is coord.Outcome.ROLLED_BACK
                 else records.Phase.FAILED)
        self.book.set_status(phase=phase.value, last_error=result.reason,
                             observed_graph_hash=result.observed_hash,
                             judged_revision=None if result.transient else head,
                             since=records.utc_now(time.time))
        self.say(f"{head[:12]}: {outcome.value}: {result.reason}")
        if result.transient:
            raise Transient(result.reason)
        return Pass(outcome, head, plan_id, result.observed_hash, result.reason)

    # --- recovery --------------------------------------------------------------------------------

    def recover(self) -> Pass | None:
        """Settle the nodes' in-doubt transactions, then finish the plan a crash interrupted
        (forward, or undone if it was rolling back)."""
        assert self.coordinator is not None
        for node, txid, decision in self.coordinator.settle():
            self.say(f"recovery: {node} held {txid} in doubt: {decision}")
        open_plan = self.coordinator.open_plan
        if open_plan is None:
            return None
        path = self.plans / f"{open_plan.plan_id}.json"
        data = orjson.loads(path.read_bytes())
        built = plan_mod.load(data)
        head = built.provenance.commit or ""
        self.say(f"recovery: resuming {built.plan_id[:19]} ({len(open_plan.committed)} of "
                 f"{open_plan.batches} batches committed"
                 + (", rolling back)" if open_plan.rolling_back else ")"))
        began, started = time.monotonic(), records.utc_now(time.time)
        batches = applying.batches(built)
        desired = str(built.content["desired_graph_hash"])
        policy = self._policy_at(head)  # its canary goes on where the crash stopped it
        canary = self._canary(head, batches, policy.rollout, desired) if policy else None
        try:
            result = self.coordinator.resume(
                batches, applying.signed(path, data), on_verify=self._verifying,
                canary=coord.Canary(canary.ends, canary.gate) if canary else None)
        except (OSError, ClientError, ConnectionError) as exc:
            raise Transient(f"resuming {built.plan_id}: {exc}") from None
        try:
            return self._finish(head, built.plan_id, desired, result, began=began,
                                started=started, canary=canary)
        except Transient as exc:
            self.say(f"recovery: {exc}")
            return None

    def _policy_at(self, revision: str) -> model.Policy | None:
        """The policy of a revision (None if it cannot be read: then no canary gates)."""
        try:
            repo = gitrepo.open_repo(self._local())
            prefix = gitrepo.prefix_of(repo, self._local()) if repo.workdir else ""
            snap = gitrepo.snapshot(repo, revision, self.cache, prefix=prefix)
            return planner.validate(snap.files).policy
        except (gitrepo.SourceError, planner.Rejected, ValueError):
            return None

    # --- running ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *,
            until: Callable[[Pass], bool] | None = None) -> Pass | None:
        """Watch and reconcile until `stop` is set (or `until` accepts a pass). Holds the
        state directory's lock, the coordinator's WAL and its resolve socket throughout."""
        last: Pass | None = None
        with applying.locked(self.state), wal.Wal.open(self.state / "wal") as log:
            self.coordinator = coord.Coordinator(log=log, nodes=self.settings.nodes)
            with coord.resolving(self.coordinator, self.state / "coordinator.sock"):
                watcher = threading.Thread(target=self._watch, args=(stop,), name="rtt-watch",
                                           daemon=True)
                watcher.start()
                delay, passes = 0.0, 0
                backoff = Backoff(*self.settings.backoff_s)
                try:
                    self._recover_with_retries(stop, backoff)
                    while not stop.is_set():
                        self.wake.clear()
                        try:
                            last = self.reconcile()
                            backoff.reset()
                            delay = self.settings.resync_s
                            passes += 1
                            _spare_the_collector(passes)
                        except Transient as exc:
                            delay = backoff.next()
                            self.say(f"retrying in {delay:.2f} s: {exc}")
                            self.book.set_status(last_error=str(exc))
                        if until is not None and last is not None and until(last):
                            break
                        self.wake.wait(delay)
                finally:
                    stop.set()
                    self.wake.set()
                    watcher.join(5)
            self.coordinator = None
        return last

    def _recover_with_retries(self, stop: threading.Event, backoff: Backoff) -> None:
        while not stop.is_set():
            try:
                self.recover()
                backoff.reset()
                return
            except Transient as exc:
                delay = backoff.next()
                self.say(f"recovery: retrying in {delay:.2f} s: {exc}")
                stop.wait(delay)

    def _watch(self, stop: threading.Event) -> None:
        """Wake the loop when a ref of the watched repository changes. Watches the git
        directory (not files: git replaces refs by lock-then-rename), through a filter of our
        own (watchfiles' default one drops every path under .git)."""
        if is_url(self.settings.repo):
            return  # a remote is polled at the resync interval
        try:
            gitdir = Path(gitrepo.open_repo(self._local()).path)
        except gitrepo.SourceError:
            return

        def wanted(_: watchfiles.Change, path: str) -> bool:
            rel = Path(path).relative_to(gitdir).as_posix() if path.startswith(str(gitdir)) else ""
            return rel in ("HEAD", "packed-refs", "FETCH_HEAD") or rel.startswith("refs/")

        for _ in watchfiles.watch(gitdir, watch_filter=wanted, stop_event=stop,
                                  debounce=self.settings.debounce_ms, step=5,
                                  rust_timeout=1000, yield_on_timeout=False,
                                  raise_interrupt=False):
            self.wake.set()


FULL_COLLECT_EVERY = 100  # passes


def _spare_the_collector(passes: int) -> None:
    """What a pass leaves alive (the parse cache, the planner's memo, the graphs) lives until
    the next one: freezing it keeps the cyclic GC's full collections (150-350 ms at 10k routes,
    freeing almost nothing; bench/converge.py) out of the next push's path. Every
    FULL_COLLECT_EVERY passes a real collection runs first, so cyclic garbage cannot pile up."""
    if passes % FULL_COLLECT_EVERY == 0:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, first: float, cap: float, *, rng: random.Random | None = None) -> None:
        self.first, self.cap, self.rng = first, cap, rng or random.Random()  # noqa: S311 - jitter
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * 2 ** self.attempt)
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0

