"""Signed service manifests: which symbols a service may register on a strict node.

A manifest is a service name and its symbol declarations, exactly as REGISTER carries them.
Its signed form is a DSSE envelope of payload type `PAYLOAD_TYPE` over the RFC 8785 JSON of
`{service, symbols}`, each symbol read through the protocol's own schema first, so a default the
daemon fills in (a symbol's lanes, say) is signed as the daemon will see it. `rtt keys
sign-manifest` makes one; the service sends it as REGISTER's `signature`.

With `strict_manifests`, a REGISTER is accepted only if it carries a signature by a key in the
trust policy over this very manifest, or if every one of its symbols matches an
`allow_unsigned` glob (fnmatch: `*` also matches `/`). Called by the strict gate; pure.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from rtt_fabric import canonical, envelope, protocol, trust

PAYLOAD_TYPE = "application/vnd.rtt.manifest+json"


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def payload(service: str, symbols: Sequence[Mapping[str, Any]]) -> bytes:
    """The canonical bytes an issuer signs for this manifest (ValueError if it is invalid)."""
    decls = [protocol.SymbolDecl.model_validate_json(orjson.dumps(dict(s))).model_dump()
             for s in symbols]
    return canonical.dumps({"service": service, "symbols": decls})


def unsigned_allowed(saddrs: Sequence[str], policy: trust.TrustPolicy) -> bool:
    return all(any(fnmatch.fnmatchcase(saddr, glob) for glob in policy.allow_unsigned)
               for saddr in saddrs)


def check(service: str, symbols: Sequence[Mapping[str, Any]],
          signature: envelope.Envelope | None, policy: trust.TrustPolicy) -> None:
    """Accept the manifest under `policy`, or raise Refused with the reason as its code."""
    if not policy.strict_manifests:
        return
    saddrs = [str(s["saddr"]) for s in symbols]
    if signature is None:
        if unsigned_allowed(saddrs, policy):
            return
        outside = [s for s in saddrs if not unsigned_allowed([s], policy)]
        raise Refused("manifest-unsigned",
                      f"service {service}: {', '.join(outside)} not under allow_unsigned "
                      f"{list(policy.allow_unsigned)}, so its manifest must be signed by a "
                      "trusted key (rtt keys sign-manifest)")
    verdict = trust.verify_ed25519(signature, policy)
    if verdict.problem is not None:
        raise Refused(str(verdict.refusal or trust.Refusal.INVALID),
                      f"service {service}: manifest signature: {verdict.problem}")
    if signature.payload_type != PAYLOAD_TYPE:
        raise Refused(str(trust.Refusal.INVALID),
                      f"service {service}: payload type {signature.payload_type!r} is not a "
                      f"manifest ({PAYLOAD_TYPE!r})")
    if signature.payload != payload(service, symbols):
        raise Refused("manifest-mismatch",
                      f"service {service}: the signed manifest is not the one registered (a "
                      "different service name, or symbols added, removed or changed)")
