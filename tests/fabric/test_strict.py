"""Strict mode on a real daemon (`rtt fabric serve --strict --trust FILE`).

Every check runs in the daemon process, through rtt_fabric.trust and the real ed25519 and
sigstore verifiers. The keys come from `rtt keys generate`'s code, plans from `rtt plan --sign key`
or built by hand in the plan file format, manifests and tokens from rtt_controller.signing.grants.
Each refusal is asserted by its reason: the NACK's rule id, or the error code of REGISTER and
ATTACH.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtt_controller.signing import grants, keyless, keys
from rtt_fabric import canonical, envelope, sdk, tokens, trust
from rtt_fabric.client import ClientError
from tests.conftest import ROOT
from tests.fabric.conftest import Coordinator, Daemon, link
from tests.sigstore_instance import GITHUB_ISSUER, Instance

CASE = ROOT / "tests" / "golden" / "capacity"  # one node, n0, as the Daemon harness
PROVENANCE = {"source": {"repo": "rtt", "commit": "cd" * 20}, "created_at": "2026-01-02T03:04:05Z",
              "solver_backend": "greedy"}
PUB, SUB, OTHER = "rtt://feed/hook/a", "rtt://book/api/orders", "rtt://feed/hook/b"
WORKFLOW = "rtt-project/rtt/.github/workflows/sign.yml@refs/heads/main"


@dataclass(frozen=True)
class Signer:
    key_id: str
    key: Any
    path: Path
    public: str


@pytest.fixture(scope="module")
def keyring(tmp_path_factory) -> dict[str, Signer]:
    folder = tmp_path_factory.mktemp("keys")
    ring = {}
    for key_id in ("ci-1", "rogue"):
        private, public = keys.generate(key_id, folder)
        ring[key_id] = Signer(key_id, keys.load(private)[1], private, public.read_text().strip())
    return ring


def _policy_file(path: Path, keyring: dict[str, Signer], **extra: Any) -> Path:
    section = {"strict_manifests": True, "allow_unsigned": ["rtt://ui/hook/*"],
               "keys": [{"key_id": "ci-1", "public_key": keyring["ci-1"].public}],
               "sigstore_identities": [], "trusted_root": "production", "clock_skew_s": 30,
               **extra}
    path.write_text(yaml.safe_dump({"trust": section}), encoding="utf-8")
    return path


@pytest.fixture
def node(tmp_path, coordinator: Coordinator, keyring):
    policy = _policy_file(tmp_path / "trust.yaml", keyring)
    daemon = Daemon(tmp_path, coordinator=coordinator.path,
                    extra=("--strict", "--trust", str(policy))).start()
    yield daemon
    if daemon.proc is not None and daemon.proc.poll() is None:
        assert daemon.stop() == 0, daemon.log_text()


# --- plans, manifests and tokens ---------------------------------------------------------------


def hand_plan(*batches: list[dict[str, Any]]) -> dict[str, Any]:
    """A plan file of ADD steps, in the format `rtt plan` writes (docs/format.md)."""
    routes, steps, order, out = [], {}, [], []
    for batch in batches:
        out.append([])
        for item in batch:
            step_id = f"A{len(order) + 1}"
            steps[step_id] = {"op": "add", "ref": f"routes_add/{len(routes)}", "inverse": "del"}
            routes.append(item)
            order.append(step_id)
            out[-1].append(step_id)
    content = {"kind": "rtt.plan/v1", "routes_add": routes, "routes_del": [],
               "routes_change": [], "steps": steps, "order": order, "batches": out}
    return {"plan_id": canonical.digest(content), "content": content, "provenance": PROVENANCE,
            "sign": None}


def sign_plan(plan: dict[str, Any], signer: Signer) -> dict[str, Any]:
    statement = envelope.Statement(plan_id=plan["plan_id"], provenance=plan["provenance"])
    return keys.sign(statement, key_id=signer.key_id, key=signer.key).to_json()


def carried(plan: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any]:
    return {"signature": signature, "content": plan["content"],
            "provenance": plan["provenance"]}


def batch_of(plan: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
    content = plan["content"]
    wire = []
    for step_id in content["batches"][index]:
        step = content["steps"][step_id]
        section, at = step["ref"].split("/")
        wire.append({"op": step["op"], "link": content[section][int(at)]})
    return wire


def flip(document: dict[str, Any], *path: Any) -> dict[str, Any]:
    """A copy with one bit changed in the base64 value at `path`."""
    changed = copy.deepcopy(document)
    target = changed
    for key in path[:-1]:
        target = target[key]
    raw = bytearray(base64.b64decode(target[path[-1]]))
    raw[len(raw) // 2] ^= 1
    target[path[-1]] = base64.b64encode(bytes(raw)).decode()
    return changed


def route(src: str, dst: str, *, caps: list[str] | None = None, **options: Any
          ) -> dict[str, Any]:
    """A link as plans write it, with the capabilities these tests grant (default [tick])."""
    return {**link(src, dst, **options), "caps": caps or ["tick"]}


def symbol(saddr: str, caps: tuple[str, ...] = ("tick",)) -> dict[str, Any]:
    return {"saddr": saddr, "type": "hook", "versions": ["1.0.0", "1.1.0"], "caps": list(caps)}


def manifest(service: str, symbols: list[dict[str, Any]], signer: Signer) -> dict[str, Any]:
    return grants.sign_manifest(service, symbols, key_id=signer.key_id, key=signer.key).to_json()


def token(signer: Signer, *, saddr: str, verb: str, scopes: tuple[str, ...] = ("tick",),
          exp_in: int = 300, nbf_in: int | None = None, nonce: str | None = None
          ) -> dict[str, Any]:
    now = int(time.time())
    grant = grants.token(saddr=saddr, verb=verb, scopes=scopes, now=now, ttl_s=exp_in,
                         not_before=None if nbf_in is None else now + nbf_in, nonce=nonce)
    return grants.sign_token(grant, key_id=signer.key_id, key=signer.key).to_json()


def vote(node: Daemon, txid: str, plan: dict[str, Any], steps: list[dict[str, Any]],
         signed_plan: dict[str, Any] | None) -> dict[str, Any]:
    fields = {"plan": signed_plan} if signed_plan is not None else {}
    with node.client() as c:
        return c.call("prepare", txid=txid, plan_id=plan["plan_id"], steps=steps, **fields)


# --- signed plans ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_plan(tmp_path_factory, keyring) -> tuple[dict[str, Any], dict[str, Any]]:
    """`rtt plan --sign key` on the capacity case: the plan file and its DSSE envelope."""
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "plan", "--repo", str(CASE),
                    "--out", str(out), "--sign", "key", "--key", str(keyring["ci-1"].path)],
                   check=True, capture_output=True)
    return (json.loads(out.read_text()),
            json.loads(out.with_name("plan.dsse.json").read_text()))


def _register_case(node: Daemon, keyring) -> None:
    symbols = []
    for item in yaml.safe_load((CASE / "desired/symbols/s.yaml").read_text())["symbols"]:
        versions = item["version"] if isinstance(item["version"], list) else [item["version"]]
        symbols.append({"saddr": item["saddr"], "type": item["type"], "versions": versions,
                        "caps": item["caps"]})
    with node.client() as c:
        c.call("register", service="feed", symbols=symbols,
               signature=manifest("feed", symbols, keyring["ci-1"]))


def test_a_plan_signed_by_a_trusted_key_is_acked_and_commits_to_the_planned_graph(
        node, keyring, real_plan):
    plan, signature = real_plan
    _register_case(node, keyring)
    reply = vote(node, "t1", plan, batch_of(plan), carried(plan, signature))
    assert reply["vote"] == "ack", reply
    with node.client() as c:
        c.call("commit", txid="t1")
        assert c.call("status")["graph_hash"] == plan["content"]["desired_graph_hash"]


def test_the_prepare_tamper_matrix_is_nacked_with_each_cause(node, keyring, real_plan):
    plan, good = real_plan
    _register_case(node, keyring)
    steps = batch_of(plan)
    content_changed = copy.deepcopy(plan)
    content_changed["content"]["routes_add"][0]["qos"]["throughput_qps"] += 1
    provenance_changed = {**plan, "provenance": {**plan["provenance"], "created_at": "2030"}}
    foreign = copy.deepcopy(steps)
    foreign[0]["link"]["qos"]["throughput_qps"] += 1  # a step the signed plan does not hold
    matrix = [  # (case, plan sent, signature, steps, the NACK's cause, a phrase of its detail)
        ("unsigned", plan, None, steps, "plan-unsigned", "needs the PREPARE to carry"),
        ("untrusted key", plan, sign_plan(plan, keyring["rogue"]), steps, "signer-untrusted",
         "'rogue' is not in the trust policy"),
        ("signature byte", plan, flip(good, "signatures", 0, "sig"), steps,
         "signature-invalid", "does not verify"),
        ("payload byte", plan, flip(good, "payload"), steps, "signature-invalid",
         "does not verify"),
        ("plan body byte", content_changed, good, steps, "plan-mismatch",
         "changed after signing"),
        ("provenance", provenance_changed, good, steps, "plan-mismatch", "created_at"),
        ("foreign step", plan, good, foreign, "plan-mismatch", "is not a step of the signed"),
    ]
    for n, (case, sent, signature, batch, cause, detail) in enumerate(matrix):
        signed_plan = None if signature is None else carried(sent, signature)
        reply = vote(node, f"bad{n}", plan, batch, signed_plan)
        assert reply["vote"] == "nack", (case, reply)
        assert reply["reason"].startswith(f"{cause}: "), (case, reply["reason"])
        assert detail in reply["reason"], (case, reply["reason"])
    assert node.graph()["links"] == []
    assert vote(node, "good", plan, steps, carried(plan, good))["vote"] == "ack"


def test_later_batches_of_a_held_plan_need_not_carry_it(node, keyring):
    with node.client() as c:
        for service, saddr in (("feed", PUB), ("feed2", OTHER), ("book", SUB)):
            c.call("register", service=service, symbols=[symbol(saddr)],
                   signature=manifest(service, [symbol(saddr)], keyring["ci-1"]))
    plan = hand_plan([route(PUB, SUB, caps=["tick"])], [route(OTHER, SUB, cls="bus")])
    first = vote(node, "b1", plan, batch_of(plan, 0), carried(plan, sign_plan(plan,
                                                                              keyring["ci-1"])))
    assert first["vote"] == "ack", first
    with node.client() as c:
        c.call("commit", txid="b1")
    assert vote(node, "b2", plan, batch_of(plan, 1), None)["vote"] == "ack"
    other = hand_plan([route(OTHER, SUB)])
    refused = vote(node, "b3", other, batch_of(other), None)
    assert refused["reason"].startswith("plan-unsigned: "), refused


def test_strict_needs_a_trust_policy_and_refuses_an_unreadable_one(tmp_path):
    base = [sys.executable, "-m", "rtt_controller.cli.main", "fabric", "serve", "--state",
            str(tmp_path / "s"), "--socket", str(tmp_path / "f.sock")]
    alone = subprocess.run([*base, "--strict"], capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2
    assert "--strict and --trust FILE go together" in alone.stderr
    (tmp_path / "bad.yaml").write_text("trust:\n  keys: [{key_id: k, public_key: nope}]\n")
    bad = subprocess.run([*base, "--strict", "--trust", str(tmp_path / "bad.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "public_key must be 'ed25519:'" in bad.stderr


def test_a_plan_signed_through_sigstore_binds_and_a_wrong_identity_does_not(
        tmp_path, coordinator, keyring):
    instance = Instance()
    root = instance.write_root(tmp_path / "trusted_root.json")
    policy = _policy_file(tmp_path / "trust.yaml", keyring, trusted_root=str(root),
                          sigstore_identities=[{"issuer": GITHUB_ISSUER,
                                                "repository": "rtt-project/rtt",
                                                "ref": "refs/heads/main"}])
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "data")}
    node = Daemon(tmp_path, coordinator=coordinator.path, env=cache,
                  extra=("--strict", "--trust", str(policy))).start()
    try:
        with node.client() as c:
            c.call("register", service="feed", symbols=[symbol(PUB), symbol(SUB)],
                   signature=manifest("feed", [symbol(PUB), symbol(SUB)], keyring["ci-1"]))
        plan = hand_plan([route(PUB, SUB, caps=["tick"])])
        statement = envelope.Statement(plan_id=plan["plan_id"], provenance=plan["provenance"])

        def bundle(repository: str, issuer: str = GITHUB_ISSUER) -> dict[str, Any]:
            identity = instance.token(issuer=issuer, subject=f"repo:{repository}",
                                      repository=repository, ref="refs/heads/main",
                                      workflow=WORKFLOW.replace("rtt-project/rtt", repository),
                                      email=None if issuer == GITHUB_ISSUER else "ci@example.com")
            return json.loads(keyless.sign(statement, context=instance.context(root),
                                           identity=identity))

        good = bundle("rtt-project/rtt")
        stranger = vote(node, "s1", plan, batch_of(plan), carried(plan, bundle("evil/rtt")))
        assert stranger["reason"].startswith("signer-untrusted: "), stranger
        elsewhere = vote(node, "s0", plan, batch_of(plan),
                         carried(plan, bundle("rtt-project/rtt", "https://issuer.example")))
        assert elsewhere["reason"].startswith("signer-untrusted: "), elsewhere
        tampered = vote(node, "s2", plan, batch_of(plan),
                        carried(plan, flip(good, "dsseEnvelope", "signatures", 0, "sig")))
        assert tampered["reason"].startswith("signature-invalid: "), tampered
        assert vote(node, "s3", plan, batch_of(plan), carried(plan, good))["vote"] == "ack"
    finally:
        assert node.stop() == 0, node.log_text()


# --- signed manifests --------------------------------------------------------------------------


def test_register_needs_a_trusted_manifest_signature_unless_allow_unsigned_covers_it(
        node, keyring):
    ui = [symbol("rtt://ui/hook/refresh"), symbol("rtt://ui/hook/close")]
    mixed = [*ui, symbol("rtt://ui/api/admin")]
    trusted, rogue = keyring["ci-1"], keyring["rogue"]
    matrix = [  # (case, service, symbols, signature, error code or None to accept)
        ("unsigned", "feed", [symbol(PUB)], None, "manifest-unsigned"),
        ("unsigned, one symbol not allowed", "ui", mixed, None, "manifest-unsigned"),
        ("untrusted key", "feed", [symbol(PUB)], manifest("feed", [symbol(PUB)], rogue),
         "signer-untrusted"),
        ("tampered", "feed", [symbol(PUB)],
         flip(manifest("feed", [symbol(PUB)], trusted), "payload"), "signature-invalid"),
        ("another manifest's signature", "feed", [symbol(PUB), symbol(OTHER)],
         manifest("feed", [symbol(PUB)], trusted), "manifest-mismatch"),
        ("another service's signature", "feed2", [symbol(PUB)],
         manifest("feed", [symbol(PUB)], trusted), "manifest-mismatch"),
        ("widened caps", "feed", [symbol(PUB, ("tick", "admin"))],
         manifest("feed", [symbol(PUB)], trusted), "manifest-mismatch"),
        ("allow_unsigned", "ui", ui, None, None),
        ("signed by a trusted key", "feed", [symbol(PUB)], manifest("feed", [symbol(PUB)],
                                                                    trusted), None),
    ]
    messages = {}
    with node.client() as c:
        for case, service, symbols, signature, code in matrix:
            fields = {"signature": signature} if signature is not None else {}
            if code is None:
                assert c.call("register", service=service, symbols=symbols, **fields)[
                    "registered"] == len(symbols), case
                continue
            with pytest.raises(ClientError) as refused:
                c.call("register", service=service, symbols=symbols, **fields)
            assert refused.value.code == code, (case, str(refused.value))
            messages[case] = str(refused.value)
        status = c.call("status")
    assert status["services"] == ["feed", "ui"]
    outside = messages["unsigned, one symbol not allowed"]
    assert "rtt://ui/api/admin" in outside
    assert "refresh" not in outside


# --- capability tokens -------------------------------------------------------------------------


def _routed(node: Daemon, keyring) -> tuple[sdk.Connection, sdk.Connection]:
    """Services feed (PUB) and book (SUB) registered on their own SDK connections, and a
    committed route PUB -> SUB with caps [tick]."""
    conns = []
    for service, saddr in (("feed", PUB), ("book", SUB)):
        conn = sdk.Connection(node.socket)
        conn.call("register", service=service, symbols=[symbol(saddr)],
                  signature=manifest(service, [symbol(saddr)], keyring["ci-1"]))
        conns.append(conn)
    plan = hand_plan([route(PUB, SUB, caps=["tick"])])
    assert vote(node, "r1", plan, batch_of(plan),
                carried(plan, sign_plan(plan, keyring["ci-1"])))["vote"] == "ack"
    with node.client() as c:
        c.call("commit", txid="r1")
    return conns[0], conns[1]


def _deliver_then_refuse_replay(feed: sdk.Connection, book: sdk.Connection,
                                sub_token: dict[str, Any], pub_token: dict[str, Any]) -> None:
    """Both ends open with these tokens, a frame crosses, and the publisher's token, once
    spent, opens nothing again."""
    sub = book.subscriber(SUB, token=sub_token)
    pub = feed.publisher(PUB, token=pub_token)
    pub.send(b"granted")
    frame = sub.recv(timeout_s=10)
    assert frame is not None
    assert bytes(frame.payload) == b"granted"
    feed.release(pub)
    with pytest.raises(sdk.ConnectError) as replayed:
        feed.publisher(PUB, token=pub_token)
    assert replayed.value.code == "token-replayed"


def test_capability_tokens_open_a_route_end_and_every_bad_one_is_refused(node, keyring):
    feed, book = _routed(node, keyring)
    trusted, rogue = keyring["ci-1"], keyring["rogue"]
    try:
        refusals = [  # (case, connection, role, token, error code)
            ("no token", feed, "pub", None, "token-missing"),
            ("expired beyond skew", feed, "pub", token(trusted, saddr=PUB, verb="tx",
                                                       exp_in=-60), "token-expired"),
            ("not yet valid beyond skew", feed, "pub",
             token(trusted, saddr=PUB, verb="tx", nbf_in=60), "token-not-yet-valid"),
            ("scope too narrow", feed, "pub",
             token(trusted, saddr=PUB, verb="tx", scopes=("other",)), "token-scope-too-narrow"),
            ("wrong verb", feed, "pub", token(trusted, saddr=PUB, verb="rx"), "token-wrong-verb"),
            ("close opens nothing", book, "sub", token(trusted, saddr=SUB, verb="close"),
             "token-wrong-verb"),
            ("another symbol's token", feed, "pub", token(trusted, saddr=OTHER, verb="tx"),
             "token-wrong-saddr"),
            ("untrusted signer", feed, "pub", token(rogue, saddr=PUB, verb="tx"),
             "signer-untrusted"),
            ("tampered", feed, "pub", flip(token(trusted, saddr=PUB, verb="tx"), "payload"),
             "signature-invalid"),
        ]
        for case, conn, role, grant, code in refusals:
            open_end = (functools.partial(conn.publisher, PUB) if role == "pub"
                        else functools.partial(conn.subscriber, SUB))
            with pytest.raises(sdk.ConnectError) as refused:
                open_end(token=grant)
            assert refused.value.code == code, (case, str(refused.value))
        # Within the policy's 30 s of skew, a just-expired or nearly valid token is accepted.
        _deliver_then_refuse_replay(
            feed, book, token(trusted, saddr=SUB, verb="rx", exp_in=-10),
            token(trusted, saddr=PUB, verb="open", nbf_in=10))
        feed.publisher(PUB, token=token(trusted, saddr=PUB, verb="tx"))
    finally:
        feed.close()
        book.close()


def test_a_route_whose_caps_an_attached_token_does_not_cover_is_nacked(node, keyring):
    feed, book = _routed(node, keyring)
    try:
        with node.client() as c:
            c.call("register", service="feed2", symbols=[symbol(OTHER, ("tick", "audit"))],
                   signature=manifest("feed2", [symbol(OTHER, ("tick", "audit"))],
                                      keyring["ci-1"]))
        sub = book.subscriber(SUB, token=token(keyring["ci-1"], saddr=SUB, verb="rx"))
        plan = hand_plan([route(OTHER, SUB, cls="bus", caps=["tick", "audit"])])
        signed = carried(plan, sign_plan(plan, keyring["ci-1"]))
        refused = vote(node, "w1", plan, batch_of(plan), signed)
        assert refused["reason"].startswith("token-scope-too-narrow: "), refused
        assert "['audit']" in refused["reason"]
        book.release(sub)  # with nobody holding the end, the next holder's token is checked
        assert vote(node, "w2", plan, batch_of(plan), signed)["vote"] == "ack"
    finally:
        feed.close()
        book.close()


def test_what_rtt_keys_signs_is_what_a_strict_node_admits(node, keyring, tmp_path):
    def rtt(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "keys", *args,
                               "--key", str(keyring["ci-1"].path)],
                              capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)

    symbols = [{"saddr": SUB, "type": "api", "versions": ["1.0.0"], "caps": ["tick"]}]
    (tmp_path / "book.yaml").write_text(yaml.safe_dump({"service": "book", "symbols": symbols}))
    signature = rtt("sign-manifest", str(tmp_path / "book.yaml"))
    grant = rtt("sign-token", "--saddr", SUB, "--verb", "rx", "--scope", "tick", "--ttl", "60")
    with sdk.Connection(node.socket) as conn:
        conn.call("register", service="book", symbols=symbols, signature=signature)
        conn.subscriber(SUB, token=grant)
        with node.client() as c:
            assert c.call("status")["attached"] == 1


def test_a_spent_nonce_is_refused_until_its_token_expires_and_then_forgotten(keyring):
    policy = trust.TrustPolicy.from_dict({"keys": [{"key_id": "ci-1",
                                                    "public_key": keyring["ci-1"].public}],
                                          "clock_skew_s": 30})
    signed = envelope.Envelope.from_json(token(keyring["ci-1"], saddr=PUB, verb="tx", exp_in=60))
    exp = tokens.Token.parse(signed.payload).exp
    book = tokens.NonceBook()

    def check(now: float) -> tokens.Token:
        return tokens.check(signed, policy, saddr=PUB, role="pub", caps=["tick"], now=now,
                            nonces=book)

    check(exp - 60)
    for now in (exp - 59, exp + 30):  # the token is still good (with skew) and still spent
        with pytest.raises(tokens.Refused) as replayed:
            check(now)
        assert replayed.value.refusal is tokens.Refusal.REPLAYED
    with pytest.raises(tokens.Refused) as expired:
        check(exp + 31)
    assert expired.value.refusal is tokens.Refusal.EXPIRED
    assert len(book) == 1
    book.forget_expired(exp + 31)
    assert len(book) == 0


# --- MACed tokens: a node's own token key ---------------------------------------------------


def maced(key: Path, *, saddr: str, verb: str, scopes: tuple[str, ...] = ("tick",),
          exp_in: int = 300) -> dict[str, Any]:
    key_id, secret = tokens.load_key(key)
    grant = grants.token(saddr=saddr, verb=verb, scopes=scopes, now=int(time.time()),
                         ttl_s=exp_in)
    return grants.mac_token(grant, key_id=key_id, secret=secret).to_json()


def test_tokens_maced_under_the_nodes_token_key_open_ends_and_no_other_mac_does(
        tmp_path, coordinator: Coordinator, keyring):
    def rtt_keys(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "keys", *args],
                              capture_output=True, text=True, timeout=60, check=True).stdout

    made = json.loads(rtt_keys("generate", "--kind", "hmac", "--key-id", "node-n0",
                               "--out", str(tmp_path / "keys"), "--format", "json"))
    ours = Path(made["token_key"])
    assert ours.name == "node-n0.hmac"
    assert ours.stat().st_mode & 0o777 == 0o600
    theirs = keys.generate_token_key("node-n1", tmp_path / "keys")
    # The same key id as ours, another secret: the id alone must not be enough.
    (tmp_path / "forged").mkdir()
    forged = (tmp_path / "forged" / "node-n0.hmac")
    forged.write_text("f" * 64)
    policy = _policy_file(tmp_path / "trust.yaml", keyring)
    node = Daemon(tmp_path, coordinator=coordinator.path,
                  extra=("--strict", "--trust", str(policy), "--token-key", str(ours))).start()
    feed, book = _routed(node, keyring)
    try:
        refusals = [  # (case, token, error code)
            ("another node's token key", maced(theirs, saddr=PUB, verb="tx"), "signer-untrusted"),
            ("our key id, another secret", maced(forged, saddr=PUB, verb="tx"),
             "signature-invalid"),
            ("payload changed", flip(maced(ours, saddr=PUB, verb="tx"), "payload"),
             "signature-invalid"),
            ("mac changed", flip(maced(ours, saddr=PUB, verb="tx"), "signatures", 0, "sig"),
             "signature-invalid"),
            ("expired beyond skew", maced(ours, saddr=PUB, verb="tx", exp_in=-60),
             "token-expired"),
            ("another symbol", maced(ours, saddr=OTHER, verb="tx"), "token-wrong-saddr"),
            ("scope too narrow", maced(ours, saddr=PUB, verb="tx", scopes=("other",)),
             "token-scope-too-narrow"),
        ]
        for case, grant, code in refusals:
            with pytest.raises(sdk.ConnectError) as refused:
                feed.publisher(PUB, token=grant)
            assert refused.value.code == code, (case, str(refused.value))
        # What `rtt keys sign-token --key ID.hmac` prints opens an end; ed25519 still does too.
        _deliver_then_refuse_replay(
            feed, book, json.loads(rtt_keys("sign-token", "--key", str(ours), "--saddr", SUB,
                                            "--verb", "rx", "--scope", "tick")),
            maced(ours, saddr=PUB, verb="tx"))
        feed.publisher(PUB, token=token(keyring["ci-1"], saddr=PUB, verb="tx"))
    finally:
        feed.close()
        book.close()
        assert node.stop() == 0, node.log_text()


def test_a_token_key_needs_strict_mode_and_a_readable_secret(tmp_path, keyring):
    base = [sys.executable, "-m", "rtt_controller.cli.main", "fabric", "serve", "--state",
            str(tmp_path / "s"), "--socket", str(tmp_path / "f.sock")]
    key = keys.generate_token_key("node-n0", tmp_path)
    plain = subprocess.run([*base, "--token-key", str(key)], capture_output=True, text=True,
                           timeout=60)
    assert plain.returncode == 2
    assert "--token-key is for --strict nodes" in plain.stderr
    short = tmp_path / "short.hmac"
    short.write_text("too short")
    policy = _policy_file(tmp_path / "trust.yaml", keyring)
    for bad, says in ((short, "at least 32 bytes"), (tmp_path / "key.txt", "<key-id>.hmac"),
                      (tmp_path / "gone.hmac", "No such file")):
        refused = subprocess.run([*base, "--strict", "--trust", str(policy), "--token-key",
                                  str(bad)], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2
        assert str(bad) in refused.stderr, refused.stderr
        assert says in refused.stderr, refused.stderr
