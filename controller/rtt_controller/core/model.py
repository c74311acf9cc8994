"""The desired-state model: frozen pydantic values for symbols, routes and policy.

Field validators enforce the local shape of each value (addresses, versions, enums). Relations
between values (unknown symbols, version meets, ACL, ...) are checked later by `graph`.
Called by `loading`, which maps pydantic errors to located diagnostics.
"""

from __future__ import annotations

import enum
import functools
from typing import Annotated, Literal

import pydantic
from pydantic_core import PydanticCustomError

from rtt_controller.core import saddr as saddr_mod
from rtt_controller.core import versions


class Lane(enum.StrEnum):
    SHM = "shm"
    UDS = "uds"
    TCP = "tcp"


LOCAL_LANES = frozenset({Lane.SHM, Lane.UDS})  # lanes that need both endpoints on one node
ALL_LANES = (Lane.SHM, Lane.UDS, Lane.TCP)


class RouteClass(enum.StrEnum):
    P2P = "p2p"
    BUS = "bus"


class Backpressure(enum.StrEnum):
    TAILDROP = "taildrop"
    MARK = "mark"
    NACK = "nack"
    BUFFER = "buffer"


def _check_saddr(value: str) -> str:
    if not saddr_mod.is_saddr(value):
        raise PydanticCustomError("bad_saddr", "{value!r} is not rtt://<domain>/<kind>/<name>",
                                  {"value": value})
    return value


def _check_glob(value: str) -> str:
    problem = saddr_mod.check_glob(value)
    if problem is not None:
        raise PydanticCustomError("bad_saddr", problem)
    return value


def _check_version(value: str) -> str:
    try:
        versions.parse_version(value)
    except ValueError as exc:
        raise PydanticCustomError("bad_version", str(exc)) from None
    return value


def _check_range(value: str) -> str:
    try:
        versions.parse_range(value)
    except ValueError as exc:
        raise PydanticCustomError("bad_version", str(exc)) from None
    return value


Saddr = Annotated[str, pydantic.AfterValidator(_check_saddr)]
SaddrGlob = Annotated[str, pydantic.AfterValidator(_check_glob)]
VersionText = Annotated[str, pydantic.AfterValidator(_check_version)]
RangeText = Annotated[str, pydantic.AfterValidator(_check_range)]
Name = Annotated[str, pydantic.StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]
Cap = Annotated[str, pydantic.StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.:-]*$", max_length=64)]
LatencyMs = Annotated[float, pydantic.Strict(), pydantic.Field(gt=0, le=60_000)]
Qps = Annotated[int, pydantic.Strict(), pydantic.Field(gt=0, le=100_000_000)]
Percent = Annotated[int, pydantic.Strict(), pydantic.Field(gt=0, le=100)]


class Frozen(pydantic.BaseModel):
    # Numbers and booleans are strict (Strict() on each field): YAML already types them, and
    # "5" or `true` where a number belongs is a mistake to report, not to coerce. Enums stay lax
    # because YAML gives them as strings.
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class Symbol(Frozen):
    """An endpoint a service exposes."""

    saddr: Saddr
    type: Name
    version: VersionText | Annotated[tuple[VersionText, ...], pydantic.Field(min_length=1)]
    caps: tuple[Cap, ...]
    node: Name | None = None
    lanes: Annotated[tuple[Lane, ...], pydantic.Field(min_length=1)] = ALL_LANES

    def offered(self) -> tuple[versions.Version, ...]:
        texts = (self.version,) if isinstance(self.version, str) else self.version
        return tuple(versions.parse_version(t) for t in texts)


class Qos(Frozen):
    """Per-route quality of service; any field left out comes from `qos_defaults`."""

    latency_budget_ms: LatencyMs | None = None
    throughput_qps: Qps | None = None
    backpressure: Backpressure | None = None


class Route(Frozen):
    """A desired link from one symbol to another."""

    from_: Saddr = pydantic.Field(alias="from")
    to: Saddr
    lane: Lane | None = None
    class_: RouteClass = pydantic.Field(default=RouteClass.P2P, alias="class")
    version: RangeText = "*"
    caps: tuple[Cap, ...] | None = None
    qos: Qos = Qos()

    @functools.cached_property
    def key(self) -> tuple[str, str, str]:
        return (self.from_, self.to, str(self.class_))  # str() of a StrEnum is its value


# --- policy ---------------------------------------------------------------------------------


class AclRule(Frozen):
    from_: SaddrGlob = pydantic.Field(alias="from")
    to: SaddrGlob
    action: Literal["allow", "deny"]


class Acl(Frozen):
    """First matching rule wins; `default` applies when none matches."""

    default: Literal["allow", "deny"] = "deny"
    rules: tuple[AclRule, ...] = ()


class Types(Frozen):
    allowed_pairs: tuple[tuple[Name, Name], ...]


class Breaker(Frozen):
    """A route's breaker opens when more than `errors` wrong frames arrive within `window_s`."""

    errors: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1)]
    window_s: Annotated[float, pydantic.Strict(), pydantic.Field(gt=0, le=3600)]


class QosDefaults(Frozen):
    latency_budget_ms: LatencyMs = 10.0
    throughput_qps: Qps = 1_000
    backpressure: Backpressure = Backpressure.TAILDROP
    breaker: Breaker | None = None  # None: each node's own default (rtt fabric serve flags)


class Pin(Frozen):
    """Pins routes matching (from, to) globs to a lane; the pin is a hard constraint."""

    from_: SaddrGlob = pydantic.Field(alias="from")
    to: SaddrGlob = "rtt://**"
    lane: Lane


class FanoutLimit(Frozen):
    from_: SaddrGlob = pydantic.Field(alias="from")
    max: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1)]


class Fanout(Frozen):
    default_max: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1)] = 16
    limits: tuple[FanoutLimit, ...] = ()


class Routing(Frozen):
    prefer: tuple[Lane, ...] = ALL_LANES
    pins: tuple[Pin, ...] = ()
    fanout: Fanout = Fanout()
    failover: dict[Lane, tuple[Lane, ...]] = pydantic.Field(default_factory=dict)
    greedy_threshold: Annotated[int, pydantic.Strict(), pydantic.Field(ge=0)] = 1_000

    @pydantic.field_validator("prefer")
    @classmethod
    def _distinct(cls, value: tuple[Lane, ...]) -> tuple[Lane, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("prefer lists each lane at most once and at least one lane")
        return value


class Node(Frozen):
    """A fabric host. `shm_mb` bounds the shared-memory ring bytes placed on it."""

    name: Name
    shm_mb: Annotated[int, pydantic.Strict(), pydantic.Field(ge=0)] = 256
    numa_nodes: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1)] = 1


class LaneModel(Frozen):
    """The planner's cost model for one lane: predicted latency and per-link capacity."""

    latency_us: Annotated[int, pydantic.Strict(), pydantic.Field(ge=0)]
    max_qps: Annotated[int, pydantic.Strict(), pydantic.Field(gt=0)]


DEFAULT_LANE_MODELS = {
    Lane.SHM: LaneModel(latency_us=2, max_qps=5_000_000),
    Lane.UDS: LaneModel(latency_us=15, max_qps=400_000),
    Lane.TCP: LaneModel(latency_us=60, max_qps=200_000),
}


class Rollout(Frozen):
    steps: tuple[Percent, ...] = (10, 50, 100)
    window_s: Annotated[float, pydantic.Strict(), pydantic.Field(gt=0)] = 10.0
    min_samples: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1)] = 100
    failure_threshold: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1)] = 1
    on_inconclusive: Literal["wait", "pause", "rollback"] = "wait"
    batch_size: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1)] = 64
    # A window fails a route whose error (corrupt, oversize) or drop rate is over these.
    max_error_rate: Annotated[float, pydantic.Strict(), pydantic.Field(ge=0, le=1)] = 0.01
    max_drop_rate: Annotated[float, pydantic.Strict(), pydantic.Field(ge=0, le=1)] = 0.01
    # After a step's batches commit, services install their new lanes; frames queued meanwhile
    # would charge that start-up to the route's p99. The first window opens this much later.
    settle_s: Annotated[float, pydantic.Strict(), pydantic.Field(ge=0, le=600)] = 1.0
    # on_inconclusive "wait": windows judged at one step before an inconclusive step rolls back.
    max_windows: Annotated[int, pydantic.Strict(), pydantic.Field(ge=1)] = 6
    # false: apply the whole plan at once, verify, and promote without judging any window.
    canary: Annotated[bool, pydantic.Strict()] = True
    # A revision whose desired graph was promoted before (a `git revert`) skips the canary.
    fast_revert: Annotated[bool, pydantic.Strict()] = False

    @pydantic.field_validator("steps")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or list(value) != sorted(set(value)) or value[-1] != 100:
            raise ValueError("steps must strictly increase and end at 100")
        return value


class Reconcile(Frozen):
    """How the controller's loop treats the live fabric between commits."""

    # heal: a fabric that drifts from the last applied graph is put back; detect: only recorded.
    drift: Literal["heal", "detect"] = "heal"


Text = Annotated[str, pydantic.StringConstraints(min_length=1)]
# rtt_fabric.trust.decode_public_key reads this: 'ed25519:' + base64 of the raw 32-byte key.
Ed25519Key = Annotated[str, pydantic.StringConstraints(pattern=r"^ed25519:[A-Za-z0-9+/]{43}=$")]


class TrustKey(Frozen):
    key_id: Name
    public_key: Ed25519Key


class SigstoreIdentity(Frozen):
    """A keyless signer: issuer plus SAN, or issuer plus GitHub workflow repository (and ref)."""

    issuer: Text
    san: Text | None = None
    repository: Text | None = None
    ref: Text | None = None

    @pydantic.model_validator(mode="after")
    def _names_someone(self) -> SigstoreIdentity:
        if self.san is None and self.repository is None:
            raise ValueError("an identity needs `san` or `repository`; an issuer alone would "
                             "trust everyone it vouches for")
        return self


SSH_KEY_PATTERN = (r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|"
                   r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) "
                   r"[A-Za-z0-9+/]+=*$")


# An ASCII-armored public key block as `gpg --armor --export` writes it: optional armor headers,
# a blank line, base64 lines (the `=XXXX` checksum is one of them), LF line ends. A private key
# block or a CRLF paste does not match.
OPENPGP_KEY_PATTERN = (r"^-----BEGIN PGP PUBLIC KEY BLOCK-----\n([A-Za-z]+: [^\n]*\n)*\n"
                       r"([A-Za-z0-9+/=]+\n)+-----END PGP PUBLIC KEY BLOCK-----\n?$")
Principal = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9@._+-]+$")]
# As gpg prints it with --with-colons: upper-case hex, no spaces; v4 keys have 40 digits, v5 64.
Fingerprint = Annotated[str, pydantic.StringConstraints(pattern=r"^([0-9A-F]{40}|[0-9A-F]{64})$")]


class AllowedSigner(Frozen):
    """An SSH key allowed to sign commits (one line of an ssh allowed_signers file)."""

    principal: Principal
    public_key: Annotated[str, pydantic.StringConstraints(pattern=SSH_KEY_PATTERN)]


class OpenPgpSigner(Frozen):
    """An OpenPGP key allowed to sign commits. Only the primary key named by `fingerprint` is
    trusted, with any of its signing subkeys; other keys in the same block are not."""

    principal: Principal
    fingerprint: Fingerprint
    public_key: Annotated[str, pydantic.StringConstraints(pattern=OPENPGP_KEY_PATTERN)]


class Trust(Frozen):
    strict_manifests: Annotated[bool, pydantic.Strict()] = True
    allow_unsigned: tuple[SaddrGlob, ...] = ()
    keys: tuple[TrustKey, ...] = ()
    sigstore_identities: tuple[SigstoreIdentity, ...] = ()
    trusted_root: Text = "production"  # production, staging, or a path to a trusted_root.json
    clock_skew_s: Annotated[int, pydantic.Strict(), pydantic.Field(ge=0, le=3600)] = 30
    require_signed_commits: Annotated[bool, pydantic.Strict()] = False
    allowed_signers: tuple[AllowedSigner, ...] = ()
    allowed_openpgp_signers: tuple[OpenPgpSigner, ...] = ()


class Policy(Frozen):
    """The merged policy. Each top-level key comes from exactly one file under policies/."""

    acl: Acl = Acl()
    types: Types | None = None
    qos_defaults: QosDefaults = QosDefaults()
    routing: Routing = Routing()
    nodes: Annotated[tuple[Node, ...], pydantic.Field(min_length=1)] = (Node(name="local"),)
    lanes: dict[Lane, LaneModel] = pydantic.Field(default_factory=lambda: dict(DEFAULT_LANE_MODELS))
    rollout: Rollout = Rollout()
    trust: Trust = Trust()
    reconcile: Reconcile = Reconcile()


POLICY_KEYS = tuple(Policy.model_fields)
