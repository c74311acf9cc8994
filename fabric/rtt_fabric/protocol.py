"""The control protocol between the node daemon and its clients: schema and framing.

Framing: a 4-byte big-endian length, then that many bytes of one UTF-8 JSON object. The schema is
the pydantic models below (exported as `fabric/protocol.schema.json` by `python -m
rtt_fabric.protocol`); every request carries `op` and an optional `id` that the reply echoes.
JSON framed by length was chosen over Cap'n Proto RPC because it measured faster here for these
small messages and needs no native build (bench/fabric.py measures both). Called by the daemon,
the client and the coordinator.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Annotated, Any, Literal

import orjson
import pydantic

from rtt_fabric import graph

MAX_FRAME = 16 << 20  # a PREPARE of a few thousand steps fits; anything larger is refused
HEADER = struct.Struct(">I")

_Name = Annotated[str, pydantic.StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
_Saddr = Annotated[str, pydantic.StringConstraints(
    pattern=r"^rtt://[a-z0-9][a-z0-9_-]*/[a-z0-9][a-z0-9_-]*/[a-z0-9][a-z0-9_-]*$")]
_Version = Annotated[str, pydantic.StringConstraints(
    pattern=r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")]
_TxId = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
_Lane = Literal["shm", "uds", "tcp"]


class _Message(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    id: int | None = None


class SymbolDecl(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    saddr: _Saddr
    type: _Name
    versions: Annotated[tuple[_Version, ...], pydantic.Field(min_length=1)]
    caps: tuple[str, ...] = ()
    lanes: Annotated[tuple[_Lane, ...], pydantic.Field(min_length=1)] = ("shm", "uds", "tcp")


class BreakerWire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    errors: Annotated[int, pydantic.Field(ge=1)]
    window_s: Annotated[float, pydantic.Field(gt=0, le=3600)]


class QosWire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    latency_budget_ms: Annotated[float, pydantic.Field(gt=0, le=60_000)]
    throughput_qps: Annotated[int, pydantic.Field(gt=0, le=100_000_000)]
    backpressure: Literal["taildrop", "mark", "nack", "buffer"]
    breaker: BreakerWire | None = None


class LinkWire(pydantic.BaseModel):
    """A link as plans and graph files write it (docs/format.md, "Graph files")."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    from_: _Saddr = pydantic.Field(alias="from")
    to: _Saddr
    class_: Literal["p2p", "bus"] = pydantic.Field(alias="class")
    lane: _Lane
    from_node: _Name
    to_node: _Name
    version: _Version
    caps: tuple[str, ...]
    qos: QosWire

    def to_link(self) -> graph.Link:
        return graph.Link(from_=self.from_, to=self.to, cls=self.class_, lane=self.lane,
                          from_node=self.from_node, to_node=self.to_node, version=self.version,
                          caps=self.caps, latency_budget_ms=self.qos.latency_budget_ms,
                          throughput_qps=self.qos.throughput_qps,
                          backpressure=self.qos.backpressure,
                          breaker=(self.qos.breaker.errors, self.qos.breaker.window_s)
                          if self.qos.breaker else None)


class StepWire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    op: Literal["add", "del", "update"]
    link: LinkWire
    old: LinkWire | None = None

    @pydantic.model_validator(mode="after")
    def _old_iff_update(self) -> StepWire:
        if (self.op == "update") != (self.old is not None):
            raise ValueError("`old` is required for update and only for update")
        if self.old is not None and (self.old.from_, self.old.to, self.old.class_) != (
                self.link.from_, self.link.to, self.link.class_):
            raise ValueError("an update keeps the link's (from, to, class)")
        return self


class SignatureWire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    keyid: Annotated[str, pydantic.StringConstraints(max_length=128)]
    sig: Annotated[str, pydantic.StringConstraints(max_length=256)]


class EnvelopeWire(pydantic.BaseModel):
    """An ed25519 DSSE envelope (payload and signature base64), as `rtt keys` writes one: a
    signed manifest on REGISTER, a capability token on ATTACH (docs/signing.md)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    payload_type: Annotated[str, pydantic.StringConstraints(max_length=128)] = pydantic.Field(
        alias="payloadType")
    payload: Annotated[str, pydantic.StringConstraints(max_length=1 << 20)]
    signatures: Annotated[tuple[SignatureWire, ...], pydantic.Field(min_length=1, max_length=4)]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class SignedPlan(pydantic.BaseModel):
    """What a strict node needs to bind a PREPARE to a signed plan: the plan's signature file
    (a DSSE envelope or a sigstore bundle) and the plan's content and provenance."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    signature: dict[str, Any]
    content: dict[str, Any]
    provenance: dict[str, Any] | None = None


class Register(_Message):
    op: Literal["register"]
    service: _Name
    symbols: Annotated[tuple[SymbolDecl, ...], pydantic.Field(min_length=1, max_length=4096)]
    signature: EnvelopeWire | None = None  # the signed manifest; a strict node may require it


class Unregister(_Message):
    op: Literal["unregister"]
    service: _Name


class Prepare(_Message):
    op: Literal["prepare"]
    txid: _TxId
    plan_id: Annotated[str, pydantic.StringConstraints(pattern=r"^sha256-[0-9a-f]{64}$")]
    steps: Annotated[tuple[StepWire, ...], pydantic.Field(min_length=1, max_length=100_000)]
    plan: SignedPlan | None = None  # a strict node needs it unless it holds this plan already


class Commit(_Message):
    op: Literal["commit"]
    txid: _TxId


class Abort(_Message):
    op: Literal["abort"]
    txid: _TxId


class Resolve(_Message):
    """The in-doubt query: a recovering participant asks the coordinator for its decision."""

    op: Literal["resolve"]
    txid: _TxId


class GetGraph(_Message):
    op: Literal["get_graph"]


class GetStats(_Message):
    op: Literal["get_stats"]
    from_: _Saddr = pydantic.Field(alias="from")
    to: _Saddr
    class_: Literal["p2p", "bus"] = pydantic.Field(alias="class")


class Status(_Message):
    op: Literal["status"]


class Attach(_Message):
    """Bind one end of a symbol to this session; the reply and later pushes carry its lanes."""

    op: Literal["attach"]
    saddr: _Saddr
    role: Literal["pub", "sub"]
    token: EnvelopeWire | None = None  # the capability token a strict node requires


class Detach(_Message):
    op: Literal["detach"]
    saddr: _Saddr
    role: Literal["pub", "sub"]


class Flight(_Message):
    """Every local route's flight page, read now (cumulative; clients take differences)."""

    op: Literal["flight"]


Request = Annotated[
    Register | Unregister | Prepare | Commit | Abort | Resolve | GetGraph | GetStats | Status
    | Attach | Detach | Flight,
    pydantic.Field(discriminator="op"),
]
REQUEST = pydantic.TypeAdapter(Request)


class ProtocolError(Exception):
    """A frame or message that breaks the protocol; `fatal` ones close the connection."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.fatal = code, fatal


def frame(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    if len(body) > MAX_FRAME:
        raise ProtocolError("oversized", f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError("oversized", f"frame of {length} bytes exceeds {MAX_FRAME}",
                            fatal=True)
    return int(length)


def parse_request(body: bytes) -> Any:
    """Validate one request body; raise ProtocolError with a readable message."""
    try:
        return REQUEST.validate_json(body)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError("malformed", f"{where}: {first['msg']}" if where else first["msg"]
                            ) from None


def ok(request_id: int | None, **fields: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, **fields}


def error(request_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def schema() -> dict[str, Any]:
    return REQUEST.json_schema(by_alias=True)


if __name__ == "__main__":
    json.dump(schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
