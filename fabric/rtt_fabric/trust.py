"""Verify a plan signature against a trust policy: the one verification path for both methods.

An ed25519 signature is a DSSE envelope, checked against the key its key id names in the
policy. A sigstore signature is a bundle holding the same DSSE statement, checked by the real
`sigstore` verifier (`verify_dsse`) against a trusted root: the copy for `production` or
`staging` that the installed sigstore release carries (offline: no TUF refresh), or a pinned
`trusted_root.json`. The signer's certificate identity is then matched against the policy's
issuer + SAN or GitHub repository + ref. Nothing here reaches the network.

Called by `rtt verify` and, when it binds a plan, by the fabric daemon; so it takes the policy as
the plain `trust:` mapping and never imports rtt_controller.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from rtt_fabric import canonical, envelope

if TYPE_CHECKING:  # sigstore costs ~0.6 s to import; a key-only node never loads it
    from cryptography.x509 import Certificate
    from sigstore.verify import Verifier

ED25519_PREFIX = "ed25519:"
PUBLIC_ROOTS = ("production", "staging")
_ISSUER_OIDS = ("1.3.6.1.4.1.57264.1.8", "1.3.6.1.4.1.57264.1.1")  # v2 (DER), then v1 (raw)


class PolicyError(ValueError):
    """A trust policy that cannot be used (a malformed key, an identity that names nobody)."""


class Method(enum.StrEnum):
    ED25519 = "ed25519"
    SIGSTORE = "sigstore"


class Refusal(enum.StrEnum):
    """Why a signature is refused; the CLI prints these as rule ids, the fabric as NACK causes."""

    INVALID = "signature-invalid"  # malformed, tampered, or not made by the key or certificate
    UNTRUSTED = "signer-untrusted"  # made by a key or identity the policy does not allow
    MISMATCH = "plan-mismatch"  # a good signature, but over another plan or provenance
    UNSIGNED = "plan-unsigned"  # no signature at all where policy wants one


@dataclasses.dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key: bytes  # the raw 32-byte ed25519 key


@dataclasses.dataclass(frozen=True)
class Identity:
    """A keyless signer: its OIDC issuer, and its SAN or its GitHub workflow repository + ref."""

    issuer: str
    san: str | None = None
    repository: str | None = None
    ref: str | None = None


@dataclasses.dataclass(frozen=True)
class TrustPolicy:
    strict_manifests: bool = True
    allow_unsigned: tuple[str, ...] = ()
    keys: tuple[TrustedKey, ...] = ()
    identities: tuple[Identity, ...] = ()
    trusted_root: str = "production"  # production, staging, or an absolute trusted_root.json
    clock_skew_s: int = 30

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Path | None = None) -> TrustPolicy:
        """Read the `trust:` section of policies/. A relative `trusted_root` path is taken
        from `base` (the folder of the file that names it). Fields that only the controller
        uses (commit signing) are left to it; the file's full shape is checked by the
        controller's model and the CUE schema."""
        root = str(data.get("trusted_root", "production"))
        if root not in PUBLIC_ROOTS:
            root = str((base or Path.cwd()) / root)
        return cls(strict_manifests=bool(data.get("strict_manifests", True)),
                   allow_unsigned=tuple(data.get("allow_unsigned", ())),
                   keys=tuple(_key(k) for k in data.get("keys", ())),
                   identities=tuple(_identity(i) for i in data.get("sigstore_identities", ())),
                   trusted_root=root, clock_skew_s=int(data.get("clock_skew_s", 30)))

    def key(self, key_id: str) -> TrustedKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)


def load_policy(path: Path) -> TrustPolicy:
    """A trust policy file, YAML or JSON: the `trust:` section of policies/, or a file holding
    just that section. Used by `rtt fabric serve --trust`; PolicyError says what is wrong."""
    import yaml  # noqa: PLC0415 - only a strict daemon reads a policy file

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: cannot read a trust policy ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("trust"), dict):
        data = data["trust"]
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a trust policy is a mapping (the `trust:` section)")
    try:
        return TrustPolicy.from_dict(data, base=path.parent)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, PolicyError):
            raise
        raise PolicyError(f"{path}: malformed trust policy ({exc!r})") from None


def _key(item: Mapping[str, Any]) -> TrustedKey:
    key_id, text = str(item["key_id"]), str(item["public_key"])
    return TrustedKey(key_id=key_id, public_key=decode_public_key(text, key_id=key_id))


def decode_public_key(text: str, *, key_id: str) -> bytes:
    """`ed25519:<base64 of the raw 32-byte key>`, as `rtt keys generate` writes into ID.pub."""
    try:
        raw = base64.b64decode(text.strip().removeprefix(ED25519_PREFIX), validate=True)
    except binascii.Error:
        raw = b""
    if not text.startswith(ED25519_PREFIX) or len(raw) != 32:
        raise PolicyError(f"key {key_id!r}: public_key must be 'ed25519:' + base64 of 32 bytes")
    return raw


def _identity(item: Mapping[str, Any]) -> Identity:
    identity = Identity(issuer=str(item["issuer"]), san=item.get("san"),
                        repository=item.get("repository"), ref=item.get("ref"))
    if not (identity.san or identity.repository):
        raise PolicyError(f"sigstore identity for issuer {identity.issuer!r} names no SAN and "
                          "no repository, so it would trust anyone that issuer vouches for")
    return identity


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Who signed, whether the signature holds, and whether policy trusts that signer."""

    method: Method | None
    signer: str | None  # the key id, or the certificate's identity (SAN)
    issuer: str | None  # the OIDC issuer of a sigstore signer
    statement: envelope.Statement | None  # set only when the signature verified
    trusted: bool
    problem: str | None = None
    refusal: Refusal | None = None

    @property
    def ok(self) -> bool:
        return self.statement is not None and self.trusted and self.problem is None

    def refuse(self, problem: str, refusal: Refusal = Refusal.INVALID) -> Verdict:
        """The verdict with a problem; the first problem found is the one kept."""
        if self.problem is not None:
            return self
        return dataclasses.replace(self, problem=problem, refusal=refusal)


UNREADABLE = Verdict(None, None, None, None, trusted=False)  # refused before a signer is known


def verify(data: bytes, policy: TrustPolicy) -> Verdict:
    """Verify a signature file's bytes: a DSSE envelope (ed25519) or a sigstore bundle."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        return UNREADABLE.refuse(f"not JSON ({exc})")
    if not isinstance(document, dict):
        return UNREADABLE.refuse("not a signature object")
    if "mediaType" in document or "verificationMaterial" in document:  # a sigstore bundle
        return verify_bundle(data, policy)
    try:
        return verify_envelope(envelope.Envelope.from_json(document), policy)
    except envelope.EnvelopeError as exc:
        return UNREADABLE.refuse(str(exc))


def verify_envelope(env: envelope.Envelope, policy: TrustPolicy) -> Verdict:
    """An ed25519 DSSE envelope: the key must be in policy, then the signature must hold."""
    verdict = verify_ed25519(env, policy)
    if verdict.problem is not None:
        return verdict
    return _read_statement(verdict, env.payload_type, env.payload)


def verify_ed25519(env: envelope.Envelope, policy: TrustPolicy) -> Verdict:
    """The key and signature check alone, whatever the payload: plans, and the fabric's signed
    manifests and capability tokens (whose payload types keep one from passing as another,
    since DSSE signs the type with the payload). Trusted, without a statement, if it holds."""
    if len(env.signatures) != 1:
        count = len(env.signatures)
        return UNREADABLE.refuse(f"an RTT envelope carries one signature, not {count}")
    keyid, sig = env.signatures[0].keyid, env.signatures[0].sig
    verdict = Verdict(Method.ED25519, keyid, None, None, trusted=False)
    trusted = policy.key(keyid)
    if trusted is None:
        return verdict.refuse(f"key id {keyid!r} is not in the trust policy's keys",
                              Refusal.UNTRUSTED)
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(trusted.public_key)
        public.verify(sig, envelope.pae(env.payload_type, env.payload))
    except InvalidSignature:
        return verdict.refuse(f"the ed25519 signature does not verify with key {keyid!r}: "
                              "the envelope was changed or signed by another key")
    return dataclasses.replace(verdict, trusted=True)


def _read_statement(verdict: Verdict, payload_type: str, payload: bytes) -> Verdict:
    if payload_type != envelope.PAYLOAD_TYPE:
        return verdict.refuse(f"payload type {payload_type!r} is not {envelope.PAYLOAD_TYPE!r}")
    try:
        return dataclasses.replace(verdict, statement=envelope.Statement.parse(payload))
    except envelope.EnvelopeError as exc:
        return verdict.refuse(str(exc))


def verify_bundle(data: bytes, policy: TrustPolicy) -> Verdict:
    """A sigstore bundle: the real verifier checks chain, SCT, log entry and signature; the
    certificate's identity is then matched against the policy's identities."""
    from sigstore.errors import Error as SigstoreError  # noqa: PLC0415 - see TYPE_CHECKING
    from sigstore.models import Bundle  # noqa: PLC0415

    try:
        bundle = Bundle.from_json(data)
    except (SigstoreError, ValueError) as exc:  # InvalidBundle, or JSON of the wrong shape
        return UNREADABLE.refuse(f"not a valid sigstore bundle: {exc}")
    cert = bundle.signing_certificate
    signer, issuer = certificate_identity(cert)
    verdict = Verdict(Method.SIGSTORE, signer, issuer, None, trusted=False)
    try:
        payload_type, payload = verifier(policy.trusted_root).verify_dsse(bundle, _AnyIdentity())
    except SigstoreError as exc:
        return verdict.refuse(f"the sigstore bundle does not verify: {exc}")
    trusted = any(_matches(cert, identity) for identity in policy.identities)
    verdict = dataclasses.replace(verdict, trusted=trusted)
    if not trusted:
        verdict = verdict.refuse(f"signer {signer!r} (issuer {issuer!r}) is not a sigstore "
                                 "identity the trust policy allows", Refusal.UNTRUSTED)
    return _read_statement(verdict, payload_type, payload)


@functools.cache
def verifier(trusted_root: str) -> Verifier:
    """The real sigstore verifier for a root; built once per process (parsing a root is slow)."""
    from sigstore.models import ClientTrustConfig, TrustedRoot  # noqa: PLC0415
    from sigstore.verify import Verifier  # noqa: PLC0415

    if trusted_root == "production":
        return Verifier(trusted_root=ClientTrustConfig.production(offline=True).trusted_root)
    if trusted_root == "staging":
        return Verifier(trusted_root=ClientTrustConfig.staging(offline=True).trusted_root)
    try:
        return Verifier(trusted_root=TrustedRoot.from_file(trusted_root))
    except (OSError, ValueError) as exc:  # a missing file, or JSON that is not a trusted root
        raise PolicyError(f"{trusted_root}: cannot use it as a sigstore trusted root ({exc})"
                          ) from None


class _AnyIdentity:
    """Accept any certificate identity: `verify_bundle` matches identities itself, after the
    cryptography has passed, so it can say who signed even when policy refuses them."""

    def verify(self, cert: Certificate) -> None:
        return None


def identity_policy(identity: Identity) -> Any:
    """The sigstore policy for one allowed identity (its issuer, checked in the v1 and v2
    certificate extensions, and its SAN or workflow repository + ref)."""
    from sigstore.verify import policy as sp  # noqa: PLC0415

    parts: list[Any] = [sp.AnyOf([sp.OIDCIssuer(identity.issuer),
                                  sp.OIDCIssuerV2(identity.issuer)])]
    if identity.san:
        parts.append(sp.Identity(identity=identity.san))
    if identity.repository:
        parts.append(sp.AnyOf([
            sp.GitHubWorkflowRepository(identity.repository),
            sp.OIDCSourceRepositoryURI(f"https://github.com/{identity.repository}")]))
    if identity.ref:
        parts.append(sp.AnyOf([sp.GitHubWorkflowRef(identity.ref),
                               sp.OIDCSourceRepositoryRef(identity.ref)]))
    return sp.AllOf(parts)


def _matches(cert: Certificate, identity: Identity) -> bool:
    from sigstore.errors import VerificationError  # noqa: PLC0415

    try:
        identity_policy(identity).verify(cert)
    except VerificationError:
        return False
    return True


def certificate_identity(cert: Certificate) -> tuple[str | None, str | None]:
    """The SAN (email, URI or other name) and OIDC issuer a Fulcio certificate carries."""
    from cryptography import x509  # noqa: PLC0415

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans: Sequence[Any] = [*names.get_values_for_type(x509.RFC822Name),
                               *names.get_values_for_type(x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        sans = []
    issuer = None
    for oid in _ISSUER_OIDS:
        try:
            ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
        except x509.ExtensionNotFound:
            continue
        raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
        issuer = _der_utf8(raw) if oid == _ISSUER_OIDS[0] else raw.decode("utf-8", "replace")
        break
    return (str(sans[0]) if sans else None), issuer


def _der_utf8(raw: bytes) -> str:
    """The text of a DER UTF8String (tag 0x0c), short or long length form."""
    if len(raw) < 2 or raw[0] != 0x0C:
        return raw.decode("utf-8", "replace")
    size, start = raw[1], 2
    if size & 0x80:
        count = size & 0x7F
        size, start = int.from_bytes(raw[2:2 + count], "big"), 2 + count
    return raw[start:start + size].decode("utf-8", "replace")


def bind(verdict: Verdict, plan: Mapping[str, Any]) -> Verdict:
    """Check that a verified statement is about this plan: its content hashes to the signed
    plan id, and its provenance is the signed provenance."""
    statement = verdict.statement
    if statement is None:
        return verdict
    try:
        content_id = canonical.digest(plan["content"])
    except (KeyError, TypeError, ValueError) as exc:
        return verdict.refuse(f"the plan has no readable content ({exc!r})", Refusal.MISMATCH)
    if content_id != statement.plan_id:
        return verdict.refuse(f"the plan's content hashes to {content_id}, but the signature "
                              f"is for {statement.plan_id}: the plan was changed after signing",
                              Refusal.MISMATCH)
    if plan.get("plan_id") != statement.plan_id:
        return verdict.refuse(f"the plan file says plan_id {plan.get('plan_id')!r}, but the "
                              f"signature is for {statement.plan_id}", Refusal.MISMATCH)
    signed, held = dict(statement.provenance), plan.get("provenance") or {}
    if canonical.dumps(plan.get("provenance")) != canonical.dumps(signed):
        changed = ", ".join(sorted(k for k in {*signed, *held} if held.get(k) != signed.get(k)))
        return verdict.refuse(f"the plan's provenance differs from the signed provenance "
                              f"({changed}): it was changed after signing", Refusal.MISMATCH)
    return verdict
