"""ed25519 plan signing: key files, the sign -> verify round trip, and the tamper matrix."""

from __future__ import annotations

import base64
import copy
import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtt_controller.signing import keys
from rtt_fabric import canonical, envelope, trust

PROVENANCE = {"source": {"repo": "/r", "commit": "c0" * 20}, "created_at": "2026-01-02T03:04:05Z",
              "solver_backend": "cbc"}


def _plan(provenance=PROVENANCE) -> dict:
    content = {"kind": "rtt.plan/v1", "routes_add": [{"from": "rtt://a/b/c", "to": "rtt://d/e/f"}]}
    return {"plan_id": canonical.digest(content), "content": content, "provenance": provenance,
            "sign": None}


@pytest.fixture
def signer(tmp_path):
    private, public = keys.generate("ci-1", tmp_path)
    key_id, key = keys.load(private)
    policy = trust.TrustPolicy.from_dict({"keys": [{"key_id": "ci-1",
                                                    "public_key": public.read_text().strip()}]})
    return key_id, key, policy


def _sign(plan: dict, key_id, key) -> bytes:
    statement = envelope.Statement(plan_id=plan["plan_id"], provenance=plan["provenance"])
    return json.dumps(keys.sign(statement, key_id=key_id, key=key).to_json()).encode()


def test_generate_writes_a_private_key_only_its_owner_can_read(tmp_path):
    old = os.umask(0)  # even with no umask to help, the key is created 0600
    try:
        private, public = keys.generate("ops.key-2", tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.name == "ops.key-2.key"
    assert public.read_text().startswith("ed25519:")
    assert len(trust.decode_public_key(public.read_text().strip(), key_id="x")) == 32


def test_generate_never_overwrites_and_refuses_unsafe_ids(tmp_path):
    keys.generate("ci-1", tmp_path)
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.generate("ci-1", tmp_path)
    with pytest.raises(keys.KeyFileError, match="must match"):
        keys.generate("../evil", tmp_path)


def test_sign_then_verify_round_trips(signer):
    key_id, key, policy = signer
    plan = _plan()
    verdict = trust.bind(trust.verify(_sign(plan, key_id, key), policy), plan)
    assert verdict.ok
    assert (verdict.method, verdict.signer, verdict.issuer) == ("ed25519", "ci-1", None)
    assert verdict.statement.plan_id == plan["plan_id"]


@settings(max_examples=25, deadline=None)
@given(commit=st.text(min_size=1, max_size=40), created=st.text(max_size=30),
       repo=st.none() | st.text(max_size=20))
def test_serialize_sign_verify_round_trips_for_any_provenance(commit, created, repo):
    key = keys.ed25519.Ed25519PrivateKey.generate()
    policy = trust.TrustPolicy(keys=(trust.TrustedKey(
        "k", trust.decode_public_key(keys.public_key_text(key.public_key()), key_id="k")),))
    plan = _plan({"source": {"repo": repo, "commit": commit}, "created_at": created,
                  "solver_backend": "greedy"})
    on_disk = json.loads(json.dumps(plan))  # the plan as a reader finds it
    assert trust.bind(trust.verify(_sign(plan, "k", key), policy), on_disk).ok


def _flip_b64(data: bytes, field: str) -> bytes:
    doc = json.loads(data)
    holder = doc if field == "payload" else doc["signatures"][0]
    raw = bytearray(base64.b64decode(holder[field]))
    raw[5] ^= 1
    holder[field] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(doc).encode()


def test_tamper_matrix(signer, tmp_path):
    """Every row is refused, with the refusal kind and a reason naming the cause."""
    key_id, key, policy = signer
    plan = _plan()
    good = _sign(plan, key_id, key)
    stranger_private, _ = keys.generate("ci-1", tmp_path / "other")  # same id, another key
    forged = _sign(plan, *keys.load(stranger_private))
    content_changed = copy.deepcopy(plan)
    content_changed["content"]["routes_add"][0]["to"] = "rtt://d/e/g"
    commit_changed = copy.deepcopy(plan)
    commit_changed["provenance"]["source"]["commit"] = "ff" * 20
    time_changed = copy.deepcopy(plan)
    time_changed["provenance"]["created_at"] = "2030-01-01T00:00:00Z"
    id_changed = {**plan, "plan_id": "sha256-" + "0" * 64}
    untrusted = trust.TrustPolicy.from_dict({"keys": [{
        "key_id": "someone-else", "public_key": keys.public_key_text(key.public_key())}]})
    matrix = [
        ("content byte", good, policy, content_changed, trust.Refusal.MISMATCH,
         "changed after signing"),
        ("provenance commit", good, policy, commit_changed, trust.Refusal.MISMATCH, "source"),
        ("provenance created_at", good, policy, time_changed, trust.Refusal.MISMATCH,
         "created_at"),
        ("plan_id field", good, policy, id_changed, trust.Refusal.MISMATCH, "plan_id"),
        ("signature byte", _flip_b64(good, "sig"), policy, plan, trust.Refusal.INVALID,
         "does not verify with key 'ci-1'"),
        ("payload byte", _flip_b64(good, "payload"), policy, plan, trust.Refusal.INVALID,
         "does not verify"),
        ("wrong key", forged, policy, plan, trust.Refusal.INVALID, "signed by another key"),
        ("untrusted key id", good, untrusted, plan, trust.Refusal.UNTRUSTED,
         "key id 'ci-1' is not in the trust policy"),
        ("not an envelope", b'{"hello": 1}', policy, plan, trust.Refusal.INVALID,
         "not a DSSE envelope"),
    ]
    for name, data, pol, plan_doc, refusal, reason in matrix:
        verdict = trust.bind(trust.verify(data, pol), plan_doc)
        assert not verdict.ok, name
        assert verdict.refusal is refusal, (name, verdict.problem)
        assert reason in verdict.problem, (name, verdict.problem)


def test_a_statement_of_another_kind_is_refused(signer):
    key_id, key, policy = signer
    payload = canonical.dumps({"_type": envelope.STATEMENT_TYPE, "predicateType": "other",
                               "subject": [{"name": "x", "digest": {"sha256": "00"}}]})
    sig = key.sign(envelope.pae(envelope.PAYLOAD_TYPE, payload))
    env = envelope.Envelope(envelope.PAYLOAD_TYPE, payload, (envelope.Signature(key_id, sig),))
    verdict = trust.verify_envelope(env, policy)
    assert verdict.refusal is trust.Refusal.INVALID
    assert "not an RTT plan statement" in verdict.problem


def test_policy_parsing_refuses_bad_keys_and_identities_that_name_nobody(tmp_path):
    with pytest.raises(trust.PolicyError, match="key 'k'"):
        trust.TrustPolicy.from_dict({"keys": [{"key_id": "k", "public_key": "ssh-ed25519 AA"}]})
    with pytest.raises(trust.PolicyError, match="no SAN and no repository"):
        trust.TrustPolicy.from_dict({"sigstore_identities": [{"issuer": "https://i"}]})
    pinned = trust.TrustPolicy.from_dict({"trusted_root": "roots/t.json"}, base=tmp_path)
    assert pinned.trusted_root == str(tmp_path / "roots" / "t.json")
    assert trust.TrustPolicy.from_dict({}).trusted_root == "production"
