"""Sign what a strict fabric node admits besides plans: service manifests and capability tokens.

Both are DSSE envelopes signed with an ed25519 key from `rtt keys generate`, over payloads that
the fabric defines (rtt_fabric.manifests, rtt_fabric.tokens), so the bytes signed here are the
bytes the node rebuilds and checks. A token may instead be MACed under a node's token key
(`rtt keys generate --kind hmac`). Called by `rtt keys sign-manifest` and `rtt keys sign-token`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from rtt_fabric import envelope, manifests, tokens


def _sign(payload_type: str, payload: bytes, *, key_id: str,
          key: ed25519.Ed25519PrivateKey) -> envelope.Envelope:
    sig = key.sign(envelope.pae(payload_type, payload))
    return envelope.Envelope(payload_type=payload_type, payload=payload,
                             signatures=(envelope.Signature(keyid=key_id, sig=sig),))


def sign_manifest(service: str, symbols: Sequence[Mapping[str, Any]], *, key_id: str,
                  key: ed25519.Ed25519PrivateKey) -> envelope.Envelope:
    """REGISTER's `signature` for this service and these symbols (ValueError if invalid)."""
    return _sign(manifests.PAYLOAD_TYPE, manifests.payload(service, symbols), key_id=key_id,
                 key=key)


def token(*, saddr: str, verb: str, scopes: Iterable[str], now: int, ttl_s: int,
          not_before: int | None = None, nonce: str | None = None) -> tokens.Token:
    """A token valid for `ttl_s` seconds from `now` (Unix seconds), with a fresh random nonce
    unless one is given."""
    return tokens.Token(saddr=saddr, verb=tokens.Verb(verb), scopes=frozenset(scopes),
                        exp=now + ttl_s, nonce=nonce or secrets.token_urlsafe(16),
                        nbf=not_before)


def sign_token(grant: tokens.Token, *, key_id: str,
               key: ed25519.Ed25519PrivateKey) -> envelope.Envelope:
    """ATTACH's `token`: the grant, signed."""
    return _sign(tokens.PAYLOAD_TYPE, grant.payload(), key_id=key_id, key=key)


def mac_token(grant: tokens.Token, *, key_id: str, secret: bytes) -> envelope.Envelope:
    """ATTACH's `token`: the grant, MACed under the token key `key_id` that the node holds."""
    payload = grant.payload()
    return envelope.Envelope(
        payload_type=tokens.PAYLOAD_TYPE, payload=payload,
        signatures=(envelope.Signature(keyid=tokens.MAC_PREFIX + key_id,
                                       sig=tokens.mac(tokens.PAYLOAD_TYPE, payload, secret)),))
