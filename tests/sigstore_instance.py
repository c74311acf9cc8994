"""A test-owned Sigstore instance: its own Fulcio CA, CT log and Rekor log, in process.

Signing through public Sigstore needs the network, so tests sign through this instead. It plays
the two services sigstore's real `Signer` calls (Fulcio's signing-certificate endpoint and Rekor's
entry endpoint) with keys it made itself, and writes a real `trusted_root.json` naming them. The
real `SigningContext`/`Signer` then build the CSR, sign the DSSE statement, check the SCT and
assemble the bundle, and the real `Verifier(trusted_root=...)` checks the result:

- Fulcio: a self-signed CA issues a 10-minute leaf for the CSR's key with the Fulcio profile
  (digitalSignature, codeSigning, the SAN and OIDC issuer extensions, GitHub workflow
  extensions for Actions tokens) and an embedded precertificate SCT signed by the CT log key.
- Rekor: a dsse/0.0.1 entry appended to an RFC 6962 Merkle tree, with a signed entry timestamp
  (inclusion promise), an inclusion proof and a signed checkpoint.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sigstore._internal.rekor.client import RekorClient
from sigstore.models import TransparencyLogEntry, TrustedRoot
from sigstore.oidc import IdentityToken
from sigstore.sign import SigningContext
from sigstore_models.rekor.v1 import TransparencyLogEntry as _Entry

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
_EPOCH = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_SCT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
_FULCIO = "1.3.6.1.4.1.57264.1."


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _der(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _ext(suffix: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(_FULCIO + suffix), value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class _SigningCertResponse:  # the shape of sigstore's FulcioCertificateSigningResponse
    cert: x509.Certificate
    chain: list[x509.Certificate]


class _Merkle:
    """RFC 6962 Merkle tree hashes and audit paths."""

    @staticmethod
    def leaf(data: bytes) -> bytes:
        return hashlib.sha256(b"\x00" + data).digest()

    @classmethod
    def root(cls, leaves: list[bytes]) -> bytes:
        if len(leaves) == 1:
            return leaves[0]
        k = 1 << ((len(leaves) - 1).bit_length() - 1)
        return hashlib.sha256(b"\x01" + cls.root(leaves[:k]) + cls.root(leaves[k:])).digest()

    @classmethod
    def path(cls, index: int, leaves: list[bytes]) -> list[bytes]:
        if len(leaves) == 1:
            return []
        k = 1 << ((len(leaves) - 1).bit_length() - 1)
        if index < k:
            return [*cls.path(index, leaves[:k]), cls.root(leaves[k:])]
        return [*cls.path(index - k, leaves[k:]), cls.root(leaves[:k])]


class Instance:
    """One Sigstore instance: CA, CT log and Rekor log keys, and the log's entries."""

    def __init__(self, name: str = "rtt-test") -> None:
        self.name = name
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.ct_log_id = hashlib.sha256(_spki(self.ct_key.public_key())).digest()
        self.rekor_log_id = hashlib.sha256(_spki(self.rekor_key.public_key())).digest()
        self.ca_cert = self._ca()
        self.leaves: list[bytes] = []
        self.token_key = secrets.token_bytes(32)

    def _ca(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name}-fulcio")])
        public = self.ca_key.public_key()
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(_EPOCH).not_valid_after(_EPOCH + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .sign(self.ca_key, hashes.SHA256()))

    # --- the trusted root ---------------------------------------------------------------------

    def trusted_root(self) -> dict:
        def log(key: ec.EllipticCurvePrivateKey, log_id: bytes, url: str) -> dict:
            return {"baseUrl": url, "hashAlgorithm": "SHA2_256",
                    "publicKey": {"rawBytes": _b64(_spki(key.public_key())),
                                  "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                                  "validFor": {"start": "2020-01-01T00:00:00Z"}},
                    "logId": {"keyId": _b64(log_id)}}
        ca_der = self.ca_cert.public_bytes(serialization.Encoding.DER)
        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.rekor_key, self.rekor_log_id, f"https://rekor.{self.name}.invalid")],
            "certificateAuthorities": [{
                "subject": {"organization": self.name, "commonName": f"{self.name}-fulcio"},
                "uri": f"https://fulcio.{self.name}.invalid",
                "certChain": {"certificates": [{"rawBytes": _b64(ca_der)}]},
                "validFor": {"start": "2020-01-01T00:00:00Z"}}],
            "ctlogs": [log(self.ct_key, self.ct_log_id, f"https://ctfe.{self.name}.invalid")],
            "timestampAuthorities": [],
        }

    def write_root(self, path: Path) -> Path:
        path.write_text(json.dumps(self.trusted_root(), indent=2), encoding="utf-8")
        return path

    def context(self, root_path: Path) -> SigningContext:
        """A real SigningContext whose Fulcio and Rekor are this instance."""
        return SigningContext(fulcio=_Fulcio(self), rekor=_Rekor(self),
                              trusted_root=TrustedRoot.from_file(str(root_path)))

    # --- OIDC ---------------------------------------------------------------------------------

    def token(self, *, issuer: str, subject: str, email: str | None = None,
              repository: str | None = None, ref: str | None = None,
              workflow: str | None = None) -> IdentityToken:
        now = int(time.time())
        claims = {"iss": issuer, "aud": "sigstore", "sub": subject, "iat": now,
                  "nbf": now - 5, "exp": now + 300}
        extra = {"email": email, "repository": repository, "ref": ref,
                 "job_workflow_ref": workflow}
        claims.update({k: v for k, v in extra.items() if v is not None})
        return IdentityToken(jwt.encode(claims, self.token_key, algorithm="HS256"))

    # --- Fulcio ---------------------------------------------------------------------------------

    def issue(self, csr: x509.CertificateSigningRequest, token: IdentityToken
              ) -> _SigningCertResponse:
        if not csr.is_signature_valid:
            raise ValueError("the CSR's proof of possession does not verify")
        claims = jwt.decode(str(token), self.token_key, algorithms=["HS256"], audience="sigstore")
        builder = self._leaf_builder(csr.public_key(), claims)
        draft = builder.sign(self.ca_key, hashes.SHA256())  # the precertificate's TBS, unsigned
        sct = self._sct(draft.tbs_certificate_bytes)
        cert = builder.add_extension(x509.UnrecognizedExtension(_SCT_OID, sct), critical=False)
        return _SigningCertResponse(cert.sign(self.ca_key, hashes.SHA256()), [self.ca_cert])

    def _leaf_builder(self, public: ec.EllipticCurvePublicKey, claims: dict
                      ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        issuer = claims["iss"]
        if issuer == GITHUB_ISSUER:
            san: x509.GeneralName = x509.UniformResourceIdentifier(
                f"https://github.com/{claims['job_workflow_ref']}")
        else:
            san = x509.RFC822Name(claims["email"])
        builder = (x509.CertificateBuilder().subject_name(x509.Name([]))
                   .issuer_name(self.ca_cert.subject).public_key(public)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(seconds=30))
                   .not_valid_after(now + datetime.timedelta(minutes=10))
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False,
                                                crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                  critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.ca_key.public_key()), critical=False)
                   .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                   .add_extension(_ext("1", issuer.encode()), critical=False)
                   .add_extension(_ext("8", _der(0x0C, issuer.encode())), critical=False))
        if issuer == GITHUB_ISSUER:
            builder = (builder.add_extension(_ext("5", claims["repository"].encode()), False)
                       .add_extension(_ext("6", claims["ref"].encode()), False))
        return builder

    def _sct(self, tbs: bytes) -> bytes:
        """The DER extension value holding one RFC 6962 SCT over the precertificate `tbs`."""
        stamp = int(time.time() * 1000)
        issuer_key_hash = hashlib.sha256(_spki(self.ca_key.public_key())).digest()
        signed = (struct.pack("!BBQH", 0, 0, stamp, 1) + issuer_key_hash
                  + len(tbs).to_bytes(3, "big") + tbs + struct.pack("!H", 0))
        sig = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (b"\x00" + self.ct_log_id + struct.pack("!QH", stamp, 0)
               + struct.pack("!BBH", 4, 3, len(sig)) + sig)
        sct_list = struct.pack("!H", len(sct)) + sct
        return _der(0x04, struct.pack("!H", len(sct_list)) + sct_list)

    # --- Rekor ----------------------------------------------------------------------------------

    def log_entry(self, request: dict) -> TransparencyLogEntry:
        """Append a dsse/0.0.1 proposed entry to the log and return it as Rekor v1 would."""
        proposed = request["spec"]["proposedContent"]
        envelope = json.loads(proposed["envelope"])
        payload = base64.b64decode(envelope["payload"])
        body = rfc8785.dumps({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
            "envelopeHash": {"algorithm": "sha256",
                             "value": hashlib.sha256(proposed["envelope"].encode()).hexdigest()},
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [{"signature": s["sig"], "verifier": proposed["verifiers"][0]}
                           for s in envelope["signatures"]]}})
        index, integrated = len(self.leaves), int(time.time())
        self.leaves.append(_Merkle.leaf(body))
        return TransparencyLogEntry(_Entry.from_dict(self._entry(body, index, integrated)))

    def _entry(self, body: bytes, index: int, integrated: int) -> dict:
        root = _Merkle.root(self.leaves)
        promise = rfc8785.dumps({"body": _b64(body), "integratedTime": integrated,
                                 "logID": self.rekor_log_id.hex(), "logIndex": index})
        return {
            "logIndex": str(index), "logId": {"keyId": _b64(self.rekor_log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(integrated),
            "inclusionPromise": {"signedEntryTimestamp": _b64(
                self.rekor_key.sign(promise, ec.ECDSA(hashes.SHA256())))},
            "inclusionProof": {"logIndex": str(index), "rootHash": _b64(root),
                               "treeSize": str(len(self.leaves)),
                               "hashes": [_b64(h) for h in _Merkle.path(index, self.leaves)],
                               "checkpoint": {"envelope": self._checkpoint(root)}},
            "canonicalizedBody": _b64(body),
        }

    def _checkpoint(self, root: bytes) -> str:
        note = f"{self.name} - rekor\n{len(self.leaves)}\n{_b64(root)}\n"
        sig = self.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        return f"{note}\n\u2014 {self.name} {_b64(self.rekor_log_id[:4] + sig)}\n"


class _Fulcio:
    """The `signing_cert.post(csr, token)` endpoint sigstore's Signer calls."""

    def __init__(self, instance: Instance) -> None:
        self.signing_cert = self
        self._instance = instance

    def post(self, csr: x509.CertificateSigningRequest, token: IdentityToken
             ) -> _SigningCertResponse:
        return self._instance.issue(csr, token)


class _Rekor(RekorClient):
    """The real Rekor v1 client (it builds the dsse request); only the POST is in process."""

    def __init__(self, instance: Instance) -> None:
        super().__init__(f"https://rekor.{instance.name}.invalid")
        self._instance = instance

    def create_entry(self, request):  # type: ignore[override]
        return self._instance.log_entry(dict(request))
