"""Sigstore verification, offline: real public bundles, and plans signed by a test-owned instance.

The first half runs the real `sigstore` verifier (through `rtt_fabric.trust`) over the bundles in
../shared/fixtures/sigstore: every "must verify" row passes, every "must be rejected" case and
every tampered variant fails. The second half signs plans with sigstore's real `Signer` against
`tests.sigstore_instance` (our own CA, CT log and Rekor log) and verifies them through the same
code path `rtt verify` and the fabric use.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from sigstore.errors import Error as SigstoreError
from sigstore.hashes import Hashed
from sigstore.models import Bundle
from sigstore_models.common.v1 import HashAlgorithm

from rtt_controller.signing import keyless
from rtt_fabric import canonical, envelope, trust
from tests.sigstore_instance import GITHUB_ISSUER, Instance

REPO = Path(__file__).resolve().parents[2]


def _fixtures() -> Path:
    """The shared Sigstore fixtures: `$RTT_SHARED_DIR/fixtures/sigstore`, else the first
    `shared/fixtures/sigstore` beside the checkout or above it (the repo lives next to
    `../shared`; a checkout elsewhere finds it by walking up)."""
    if os.environ.get("RTT_SHARED_DIR"):
        return Path(os.environ["RTT_SHARED_DIR"]) / "fixtures" / "sigstore"
    for parent in REPO.parents:
        candidate = parent / "shared" / "fixtures" / "sigstore"
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "fixtures" / "sigstore"


FIXTURES = _fixtures()
needs_shared = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"the shared Sigstore fixtures are not at {FIXTURES}; set "
                                  "RTT_SHARED_DIR to the folder holding fixtures/sigstore")
ROOTS = {"staging": FIXTURES / "staging.trusted_root.json",
         "production": FIXTURES / "production.trusted_root.json"}
GH = "https://github.com/login/oauth"
ACTIONS = GITHUB_ISSUER

# (artifact, bundle, root, identity, issuer): the README's "must verify" table.
MUST_VERIFY = [
    ("bundle.txt", "bundle.txt.sigstore", "staging", "a@tny.town", GH),
    ("bundle_v3.txt", "bundle_v3.txt.sigstore", "staging", "william@yossarian.net", GH),
    ("bundle_v3_alt.txt", "bundle_v3_alt.txt.sigstore", "staging", "william@yossarian.net", GH),
    ("staging-rekor-v2.txt", "staging-rekor-v2.txt.sigstore.json", "staging", "jku@goto.fi", GH),
    ("tsa/bundle.txt", "tsa/bundle.txt.sigstore", "staging", "alexis.challande@trailofbits.com",
     "https://accounts.google.com"),
    ("bundle_v3_github.whl.sha256", "bundle_v3_github.whl.sigstore", "production",
     "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2",
     ACTIONS),
]
DSSE = ("a.dsse.staging-rekor-v2.txt.sigstore.json", "staging",
        "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/"
        "workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main", ACTIONS)
UNVERIFIABLE = [  # (artifact, bundle): an inconsistent log entry, and TSA abuse
    ("bundle_cve_2022_36056.txt", "bundle_cve_2022_36056.txt.sigstore"),
    ("tsa/bundle.txt", "tsa/bundle.duplicate.sigstore"),
    ("tsa/bundle.txt", "tsa/bundle.many_timestamp.sigstore"),
]
MALFORMED = ["bundle_no_log_entry.txt.sigstore", "bundle_invalid_version.txt.sigstore"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def _input(artifact: str) -> bytes | Hashed:
    data = (FIXTURES / artifact).read_bytes()
    if artifact.endswith(".sha256"):  # a pre-hashed digest, as the README says
        return Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(data.decode().strip()))
    return data


def _verify_artifact(artifact: bytes | Hashed, bundle: str, root: str, identity: str,
                     issuer: str) -> None:
    loaded = Bundle.from_json((FIXTURES / bundle).read_bytes())
    policy = trust.identity_policy(trust.Identity(issuer=issuer, san=identity))
    trust.verifier(str(ROOTS[root])).verify_artifact(artifact, loaded, policy)


def _changed_byte(artifact: bytes | Hashed) -> bytes | Hashed:
    if isinstance(artifact, Hashed):
        digest = bytes([artifact.digest[0] ^ 1]) + artifact.digest[1:]
        return Hashed(algorithm=artifact.algorithm, digest=digest)
    return bytes([artifact[0] ^ 1]) + artifact[1:]


# --- the public fixtures ----------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize(("artifact", "bundle", "root", "identity", "issuer"), MUST_VERIFY,
                         ids=[row[1] for row in MUST_VERIFY])
def test_every_must_verify_bundle_verifies_offline(artifact, bundle, root, identity, issuer):
    _verify_artifact(_input(artifact), bundle, root, identity, issuer)


@needs_shared
@pytest.mark.parametrize(("artifact", "bundle", "root", "identity", "issuer"), MUST_VERIFY,
                         ids=[row[1] for row in MUST_VERIFY])
@pytest.mark.parametrize("tamper", ["artifact-byte", "identity", "issuer", "other-root"])
def test_every_tampered_variant_is_rejected(artifact, bundle, root, identity, issuer, tamper):
    data = _input(artifact)
    if tamper == "artifact-byte":
        data = _changed_byte(data)
    elif tamper == "identity":
        identity = "mallory@example.invalid"
    elif tamper == "issuer":
        issuer = "https://issuer.example.invalid"
    else:
        root = "production" if root == "staging" else "staging"
    with pytest.raises(SigstoreError):
        _verify_artifact(data, bundle, root, identity, issuer)


@needs_shared
@pytest.mark.parametrize(("artifact", "bundle"), UNVERIFIABLE, ids=[b for _, b in UNVERIFIABLE])
def test_every_must_reject_bundle_is_rejected(artifact, bundle):
    # The policy allows exactly the identity the bundle's certificate claims, so only the
    # bundle's own defect can make it fail.
    loaded = Bundle.from_json((FIXTURES / bundle).read_bytes())
    signer, issuer = trust.certificate_identity(loaded.signing_certificate)
    assert signer
    assert issuer
    with pytest.raises(SigstoreError):
        _verify_artifact(_input(artifact), bundle, "staging", signer, issuer)


@needs_shared
@pytest.mark.parametrize("bundle", MALFORMED)
def test_every_malformed_bundle_is_refused_as_invalid(bundle):
    data = (FIXTURES / bundle).read_bytes()
    with pytest.raises(SigstoreError):
        Bundle.from_json(data)
    verdict = trust.verify(data, trust.TrustPolicy.from_dict({"trusted_root":
                                                              str(ROOTS["staging"])}))
    assert verdict.refusal is trust.Refusal.INVALID
    assert verdict.problem.startswith("not a valid sigstore bundle")


@needs_shared
def test_the_dsse_fixture_verifies_through_verify_dsse():
    name, root, identity, issuer = DSSE
    loaded = Bundle.from_json((FIXTURES / name).read_bytes())
    policy = trust.identity_policy(trust.Identity(issuer=issuer, san=identity))
    payload_type, payload = trust.verifier(str(ROOTS[root])).verify_dsse(loaded, policy)
    assert payload_type == "application/vnd.in-toto+json"
    assert json.loads(payload)["_type"] == "https://in-toto.io/Statement/v1"


@needs_shared
def test_the_dsse_fixture_through_the_trust_module_names_its_signer_but_is_no_plan():
    name, root, identity, issuer = DSSE
    policy = trust.TrustPolicy.from_dict({"trusted_root": str(ROOTS[root]),
                                          "sigstore_identities": [{"issuer": issuer,
                                                                   "san": identity}]})
    verdict = trust.verify((FIXTURES / name).read_bytes(), policy)
    assert (verdict.method, verdict.signer, verdict.issuer) == ("sigstore", identity, issuer)
    assert verdict.trusted
    assert not verdict.ok
    assert "not an RTT plan statement" in verdict.problem


@needs_shared
@pytest.mark.parametrize("tamper", ["payload-byte", "signature-byte", "wrong-identity",
                                    "repository-policy", "other-root"])
def test_the_dsse_fixture_tampered_is_refused(tamper):
    name, root, identity, issuer = DSSE
    data = json.loads((FIXTURES / name).read_bytes())
    allowed = {"issuer": issuer, "san": identity}
    if tamper in ("payload-byte", "signature-byte"):
        field = "payload" if tamper == "payload-byte" else None
        env = data["dsseEnvelope"]
        target = env if field else env["signatures"][0]
        key = field or "sig"
        raw = bytearray(base64.b64decode(target[key]))
        raw[len(raw) // 2] ^= 1
        target[key] = base64.b64encode(bytes(raw)).decode()
    elif tamper == "wrong-identity":
        allowed = {"issuer": issuer, "san": "https://github.com/mallory/x/.github/w.yml@main"}
    elif tamper == "repository-policy":
        allowed = {"issuer": issuer, "repository": "mallory/elsewhere"}
    else:
        root = "production"
    policy = trust.TrustPolicy.from_dict({"trusted_root": str(ROOTS[root]),
                                          "sigstore_identities": [allowed]})
    verdict = trust.verify(json.dumps(data).encode(), policy)
    assert not verdict.ok
    expected = trust.Refusal.UNTRUSTED if "identity" in tamper or "policy" in tamper \
        else trust.Refusal.INVALID
    assert verdict.refusal is expected, verdict.problem


@needs_shared
def test_the_packaged_production_root_loads_offline():
    # No network here: this only passes if `production` resolves without a TUF refresh.
    verdict = trust.verify((FIXTURES / DSSE[0]).read_bytes(),
                           trust.TrustPolicy.from_dict({"trusted_root": "production"}))
    assert verdict.refusal is trust.Refusal.INVALID  # a staging bundle, refused by production
    assert "does not verify" in verdict.problem


# --- signing through a test-owned instance ----------------------------------------------------

WORKFLOW = "rtt-project/rtt/.github/workflows/sign.yml@refs/heads/main"
PLAN_ID = "sha256-" + "5e" * 32
PROVENANCE = {"source": {"repo": "rtt", "commit": "ab" * 20}, "created_at": "2026-01-02T03:04:05Z",
              "solver_backend": "cbc"}


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    inst = Instance()
    inst.root_path = inst.write_root(tmp_path_factory.mktemp("root") / "trusted_root.json")
    return inst


def _actions_token(inst: Instance):
    return inst.token(issuer=ACTIONS, subject="repo:rtt-project/rtt:ref:refs/heads/main",
                      repository="rtt-project/rtt", ref="refs/heads/main", workflow=WORKFLOW)


def _policy(root: Path, identities: list[dict]) -> trust.TrustPolicy:
    return trust.TrustPolicy.from_dict({"trusted_root": str(root),
                                        "sigstore_identities": identities})


def _plan() -> dict:
    content = {"kind": "rtt.plan/v1", "note": "a stand-in content"}
    return {"plan_id": canonical.digest(content), "content": content, "provenance": PROVENANCE,
            "sign": None}


def _sign(inst: Instance, plan: dict, token=None) -> bytes:
    statement = envelope.Statement(plan_id=plan["plan_id"], provenance=plan["provenance"])
    bundle = keyless.sign(statement, context=inst.context(inst.root_path),
                          identity=token or _actions_token(inst))
    return bundle.encode()


def test_a_plan_signed_by_the_test_instance_verifies_with_the_real_verifier(instance):
    plan = _plan()
    bundle = _sign(instance, plan)
    policy = _policy(instance.root_path, [{"issuer": ACTIONS, "repository": "rtt-project/rtt",
                                           "ref": "refs/heads/main"}])
    verdict = trust.bind(trust.verify(bundle, policy), plan)
    assert verdict.ok, verdict.problem
    assert verdict.signer == f"https://github.com/{WORKFLOW}"
    assert verdict.statement.plan_id == plan["plan_id"]
    assert dict(verdict.statement.provenance) == PROVENANCE
    assert json.loads(bundle)["dsseEnvelope"]["payloadType"] == envelope.PAYLOAD_TYPE


def test_an_email_identity_is_matched_by_issuer_and_san(instance):
    token = instance.token(issuer=GH, subject="u1", email="release@rtt.invalid")
    bundle = _sign(instance, _plan(), token)
    good = _policy(instance.root_path, [{"issuer": GH, "san": "release@rtt.invalid"}])
    other_issuer = _policy(instance.root_path, [{"issuer": ACTIONS, "san": "release@rtt.invalid"}])
    assert trust.verify(bundle, good).ok
    refused = trust.verify(bundle, other_issuer)
    assert refused.refusal is trust.Refusal.UNTRUSTED
    assert "release@rtt.invalid" in refused.problem


def _flip(data: bytes, path: list) -> bytes:
    doc = json.loads(data)
    target = doc
    for key in path[:-1]:
        target = target[key]
    raw = bytearray(base64.b64decode(target[path[-1]]))
    raw[len(raw) // 2] ^= 1
    target[path[-1]] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("what", "path"), [
    ("payload", ["dsseEnvelope", "payload"]),
    ("signature", ["dsseEnvelope", "signatures", 0, "sig"]),
    ("certificate", ["verificationMaterial", "certificate", "rawBytes"]),
    ("log-entry-body", ["verificationMaterial", "tlogEntries", 0, "canonicalizedBody"]),
    ("inclusion-promise", ["verificationMaterial", "tlogEntries", 0, "inclusionPromise",
                           "signedEntryTimestamp"]),
])
def test_a_changed_byte_in_the_bundle_is_refused(instance, what, path):
    bundle = _sign(instance, _plan())
    policy = _policy(instance.root_path, [{"issuer": ACTIONS, "repository": "rtt-project/rtt"}])
    verdict = trust.verify(_flip(bundle, path), policy)
    assert not verdict.ok
    assert verdict.refusal is trust.Refusal.INVALID, verdict.problem


def test_another_instances_root_refuses_the_bundle(instance, tmp_path):
    bundle = _sign(instance, _plan())
    stranger = Instance(name="stranger")
    root = stranger.write_root(tmp_path / "stranger.json")
    verdict = trust.verify(bundle, _policy(root, [{"issuer": ACTIONS,
                                                   "repository": "rtt-project/rtt"}]))
    assert verdict.refusal is trust.Refusal.INVALID
    assert "does not verify" in verdict.problem


def test_a_signed_bundle_over_another_plan_is_a_mismatch(instance):
    plan = _plan()
    bundle = _sign(instance, plan)
    policy = _policy(instance.root_path, [{"issuer": ACTIONS, "repository": "rtt-project/rtt"}])
    changed = {**plan, "content": {**plan["content"], "note": "changed"}}
    verdict = trust.bind(trust.verify(bundle, policy), changed)
    assert verdict.refusal is trust.Refusal.MISMATCH
    assert "changed after signing" in verdict.problem


@pytest.mark.skipif(os.environ.get("RTT_ONLINE_TESTS") != "1",
                    reason="keyless signing needs public Sigstore and an ambient OIDC identity; "
                           "set RTT_ONLINE_TESTS=1 in a job with id-token: write")
def test_keyless_signing_against_public_sigstore():
    plan = _plan()
    statement = envelope.Statement(plan_id=plan["plan_id"], provenance=plan["provenance"])
    bundle = keyless.sign(statement, context=keyless.public_context(),
                          identity=keyless.ambient_identity())
    verdict = trust.verify(bundle.encode(), trust.TrustPolicy.from_dict({"trusted_root":
                                                                         "production"}))
    assert verdict.statement is not None
    assert verdict.statement.plan_id == plan["plan_id"]
