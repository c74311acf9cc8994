"""Capability tokens: a signed grant to open one end of a symbol's routes.

A token is `{saddr, verb, scopes, exp, nonce}` (plus an optional `nbf`), written as RFC 8785
JSON in a DSSE envelope of its own payload type, authenticated one of two ways:

- signed by an ed25519 key in the trust policy: any node that trusts the key accepts it, and
  the issuer shares no secret with the nodes; checking costs one ed25519 verification (about
  0.1 ms here);
- or MACed (HMAC-SHA256 over the same DSSE PAE) under a token key the node holds
  (`rtt fabric serve --token-key ID.hmac`), the keyid then reading `hmac-sha256:ID`. This is the
  Kerberos service-ticket shape: the issuer and that node share the key, so anyone holding it
  can mint tokens for that node, which is why each node should get its own. The HMAC costs
  about 2 µs, which is what keeps a route open cheap (docs/benchmarks.md).

DSSE covers the payload type with the payload either way, so a plan or manifest signature can
never pass for a token. The verb says which end it opens: `tx` the sending end (`attach` as `pub`),
`rx` the receiving end (`sub`), `open` either; `close` opens nothing. `exp` and `nbf` are Unix
seconds, checked with the policy's clock skew either way. The scopes must cover the
capabilities (`caps`) of every route at that end.

A nonce is spent when its token is accepted, and stays spent until the token has expired (plus
the skew), so the same token cannot open a second end. `NonceBook` keeps the spent nonces in
memory: a daemon restart forgets them, which is why tokens should be short-lived.

Called by the strict gate (rtt_fabric.strict) at every ATTACH; building and parsing are pure,
and the clock is passed in.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import heapq
import hmac
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from rtt_fabric import canonical, envelope, trust

PAYLOAD_TYPE = "application/vnd.rtt.capability+json"
MAX_NONCE = 128
MAC_PREFIX = "hmac-sha256:"  # the keyid of a MACed token: `hmac-sha256:<token key id>`
MAC_SUFFIX = ".hmac"  # a token key file is `<key id>.hmac`
MIN_SECRET = 32


class Verb(enum.StrEnum):
    OPEN = "open"
    TX = "tx"
    RX = "rx"
    CLOSE = "close"


ROLE_VERBS = {"pub": frozenset({Verb.TX, Verb.OPEN}), "sub": frozenset({Verb.RX, Verb.OPEN})}


class Refusal(enum.StrEnum):
    """Why a token is refused; the daemon's error code for the ATTACH."""

    MISSING = "token-missing"
    INVALID = "signature-invalid"  # malformed, tampered, or not signed by the key it names
    UNTRUSTED = "signer-untrusted"  # signed by a key the trust policy does not list
    SADDR = "token-wrong-saddr"
    VERB = "token-wrong-verb"
    EXPIRED = "token-expired"
    EARLY = "token-not-yet-valid"
    SCOPE = "token-scope-too-narrow"
    REPLAYED = "token-replayed"


class Refused(Exception):
    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    saddr: str
    verb: Verb
    scopes: frozenset[str]
    exp: int
    nonce: str
    nbf: int | None = None

    def payload(self) -> bytes:
        """The canonical bytes an issuer signs (`PAYLOAD_TYPE`)."""
        body: dict[str, Any] = {"saddr": self.saddr, "verb": self.verb.value,
                                "scopes": sorted(self.scopes), "exp": self.exp,
                                "nonce": self.nonce}
        if self.nbf is not None:
            body["nbf"] = self.nbf
        return canonical.dumps(body)

    @classmethod
    def parse(cls, payload: bytes) -> Token:
        """Read a verified payload; a payload of any other shape is refused as invalid."""
        try:
            data = orjson.loads(payload)
            token = cls(saddr=_text(data["saddr"]), verb=Verb(data["verb"]),
                        scopes=frozenset(_text(s) for s in data["scopes"]),
                        exp=_seconds(data["exp"]), nonce=_text(data["nonce"]),
                        nbf=None if data.get("nbf") is None else _seconds(data["nbf"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused(Refusal.INVALID, f"not a capability token ({exc!r})") from None
        if not 0 < len(token.nonce) <= MAX_NONCE:
            raise Refused(Refusal.INVALID, f"a token's nonce is 1 to {MAX_NONCE} characters")
        return token


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _seconds(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected Unix seconds, got {value!r}")
    return value


class NonceBook:
    """The nonces of accepted tokens, each kept until its token expires (plus skew)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._queue: list[tuple[float, str]] = []  # (forget at, nonce): a min-heap

    def __contains__(self, nonce: str) -> bool:
        return nonce in self._until

    def __len__(self) -> int:
        return len(self._until)

    def spend(self, nonce: str, *, until: float) -> None:
        self._until[nonce] = until
        heapq.heappush(self._queue, (until, nonce))

    def forget_expired(self, now: float) -> None:
        while self._queue and self._queue[0][0] < now:
            until, nonce = heapq.heappop(self._queue)
            if self._until.get(nonce) == until:
                del self._until[nonce]


def mac(payload_type: str, payload: bytes, secret: bytes) -> bytes:
    """The HMAC-SHA256 a MACed token carries as its signature."""
    keyed = _keyed(secret).copy()
    keyed.update(envelope.pae(payload_type, payload))
    return keyed.digest()


@functools.lru_cache(maxsize=64)
def _keyed(secret: bytes) -> hmac.HMAC:
    """The HMAC state after the key, copied per token. Measured inside a strict daemon, where
    each ATTACH runs cold, this took the HMAC from 12.4 to 8.3 µs against `hmac.digest`, which
    looks the digest up and keys it on every call."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def load_key(path: Path) -> tuple[str, bytes]:
    """The key id (from the file name) and the secret of an `ID.hmac` token key file.
    Raises ValueError naming the file."""
    key_id = path.name.removesuffix(MAC_SUFFIX)
    if path.suffix != MAC_SUFFIX or not key_id:
        raise ValueError(f"{path}: a token key file is named <key-id>{MAC_SUFFIX}")
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET:
        raise ValueError(f"{path}: a token key holds at least {MIN_SECRET} bytes "
                         "(`rtt keys generate --kind hmac` writes 64 hex digits)")
    return key_id, secret


def check(env: envelope.Envelope | None, policy: trust.TrustPolicy, *, saddr: str, role: str,
          caps: Iterable[str], now: float, nonces: NonceBook,
          mac_keys: Mapping[str, bytes] | None = None) -> Token:
    """Accept the token for opening `role` of `saddr`, whose routes carry `caps`, and spend
    its nonce; or raise Refused with the first reason found. `mac_keys` are the token keys this
    node holds, by key id. Costs one ed25519 verification, or one HMAC for a MACed token."""
    if env is None:
        raise Refused(Refusal.MISSING, f"opening {saddr} ({role}) needs a capability token "
                                       "signed by a trusted key")
    _authenticate(env, policy, mac_keys or {})
    if env.payload_type != PAYLOAD_TYPE:
        raise Refused(Refusal.INVALID, f"payload type {env.payload_type!r} is not a "
                                       f"capability token ({PAYLOAD_TYPE!r})")
    token = Token.parse(env.payload)
    _check_claims(token, policy, saddr=saddr, role=role, caps=frozenset(caps), now=now)
    nonces.forget_expired(now)
    if token.nonce in nonces:
        raise Refused(Refusal.REPLAYED, f"nonce {token.nonce!r} was already used; a token "
                                        "opens one end once")
    nonces.spend(token.nonce, until=token.exp + policy.clock_skew_s)
    return token


def _authenticate(env: envelope.Envelope, policy: trust.TrustPolicy,
                  mac_keys: Mapping[str, bytes]) -> None:
    keyid = env.signatures[0].keyid if len(env.signatures) == 1 else ""
    if not keyid.startswith(MAC_PREFIX):
        verdict = trust.verify_ed25519(env, policy)
        if verdict.problem is not None:
            untrusted = verdict.refusal is trust.Refusal.UNTRUSTED
            raise Refused(Refusal.UNTRUSTED if untrusted else Refusal.INVALID, verdict.problem)
        return
    key_id = keyid.removeprefix(MAC_PREFIX)
    secret = mac_keys.get(key_id)
    if secret is None:
        raise Refused(Refusal.UNTRUSTED, f"token key {key_id!r} is not one this node holds "
                                         "(rtt fabric serve --token-key)")
    if not hmac.compare_digest(env.signatures[0].sig, mac(env.payload_type, env.payload, secret)):
        raise Refused(Refusal.INVALID, f"the token's HMAC does not verify with token key "
                                       f"{key_id!r}: the envelope was changed or MACed under "
                                       "another key")


def _check_claims(token: Token, policy: trust.TrustPolicy, *, saddr: str, role: str,
                  caps: Collection[str], now: float) -> None:
    skew = policy.clock_skew_s
    if token.saddr != saddr:
        raise Refused(Refusal.SADDR, f"the token is for {token.saddr}, not {saddr}")
    if token.verb not in ROLE_VERBS[role]:
        wanted = " or ".join(sorted(ROLE_VERBS[role]))
        raise Refused(Refusal.VERB, f"a {token.verb.value!r} token cannot open the {role} end "
                                    f"(needs {wanted})")
    if now > token.exp + skew:
        raise Refused(Refusal.EXPIRED, f"the token expired at {token.exp} and it is now "
                                       f"{now:.0f} (clock skew allowed: {skew} s)")
    if token.nbf is not None and now < token.nbf - skew:
        raise Refused(Refusal.EARLY, f"the token is valid from {token.nbf} and it is now "
                                     f"{now:.0f} (clock skew allowed: {skew} s)")
    missing = sorted(set(caps) - token.scopes)
    if missing:
        raise Refused(Refusal.SCOPE, f"the token's scopes {sorted(token.scopes)} do not cover "
                                     f"the route capabilities {missing}")
