"""What a plan signature signs: an in-toto statement inside a DSSE envelope.

Both signing methods sign the same bytes. The payload is the RFC 8785 JSON of an in-toto
Statement v1 whose one subject is the plan (name = `plan_id`, sha256 digest = the hex part of
`plan_id`, i.e. the hash of the plan's canonical content) and whose predicate is the plan's
provenance. Signing the content's hash and the provenance itself covers both, and keeps the
envelope small enough to travel with a PREPARE. The payload type is in-toto's own, because
sigstore's `sign_dsse` signs only in-toto statements; `PREDICATE_TYPE` says it is an RTT plan.

Called by the controller's signing seam (to build what it signs) and by `trust` (to read what
it verified). Pure: no keys and no I/O here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from rtt_fabric import canonical

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://rtt-project.github.io/attestations/plan/v1"
_ID_PREFIX = "sha256-"


class EnvelopeError(ValueError):
    """An envelope or statement that does not parse, or is not an RTT plan statement."""


@dataclasses.dataclass(frozen=True)
class Statement:
    """The signed claim: this plan id, with this provenance."""

    plan_id: str
    provenance: Mapping[str, Any]

    def payload(self) -> bytes:
        """The canonical bytes that go into the envelope (and so under the signature)."""
        if not self.plan_id.startswith(_ID_PREFIX):
            raise EnvelopeError(f"plan id {self.plan_id!r} is not a sha256- content address")
        return canonical.dumps({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.plan_id,
                         "digest": {"sha256": self.plan_id.removeprefix(_ID_PREFIX)}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"provenance": dict(self.provenance)},
        })

    @classmethod
    def parse(cls, payload: bytes) -> Statement:
        """Read a verified payload back; anything but an RTT plan statement is refused."""
        try:
            data = json.loads(payload)
            subjects = data["subject"]
            if data["_type"] != STATEMENT_TYPE or data["predicateType"] != PREDICATE_TYPE:
                raise EnvelopeError(f"the payload is not an RTT plan statement "
                                    f"(predicateType {data.get('predicateType')!r})")
            if len(subjects) != 1:
                raise EnvelopeError(f"an RTT plan statement has one subject, not {len(subjects)}")
            name, digest = subjects[0]["name"], subjects[0]["digest"]["sha256"]
            provenance = data["predicate"]["provenance"]
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, EnvelopeError):
                raise
            raise EnvelopeError(f"the payload is not an RTT plan statement ({exc!r})") from None
        if name != _ID_PREFIX + str(digest) or not isinstance(provenance, dict):
            raise EnvelopeError("the statement's subject name and digest disagree")
        return cls(plan_id=name, provenance=provenance)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the exact bytes a DSSE signature signs."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclasses.dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    sig: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope as JSON holds it (payload and signatures base64 there, bytes here)."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_json(self) -> dict[str, Any]:
        return {"payloadType": self.payload_type,
                "payload": base64.b64encode(self.payload).decode("ascii"),
                "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                               for s in self.signatures]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Envelope:
        try:
            return cls.from_text(data["payloadType"], data["payload"],
                                 [(s.get("keyid", ""), s["sig"]) for s in data["signatures"]])
        except (KeyError, TypeError, AttributeError) as exc:
            raise EnvelopeError(f"not a DSSE envelope ({exc!r})") from None

    @classmethod
    def from_text(cls, payload_type: Any, payload: Any,
                  signatures: Iterable[tuple[Any, Any]]) -> Envelope:
        """From the JSON fields as they are (base64 text), without building the JSON object:
        what a strict node does with every ATTACH's token."""
        try:
            return cls(payload_type=str(payload_type), payload=_b64(payload),
                       signatures=tuple(Signature(keyid=str(keyid), sig=_b64(sig))
                                        for keyid, sig in signatures))
        except (TypeError, binascii.Error) as exc:
            raise EnvelopeError(f"not a DSSE envelope ({exc!r})") from None


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text, validate=True)
