"""Canonical serialization and content addresses, in one place.

Everything that is hashed (plans, graphs, policy) goes through `dumps`, which emits RFC 8785 (JCS)
canonical JSON, so the same value gives the same bytes in any process on any machine.

The `rfc8785` package is the reference but is pure Python and dominated plan time at 10k routes.
For the values RTT hashes (ASCII keys, strings, ints, floats of ordinary magnitude) the stdlib's C
JSON encoder gives identical bytes once integral floats are written as ints, so `dumps` takes that
path and falls back to `rfc8785` for anything else. tests/controller/test_canonical.py checks the
two agree on arbitrary JSON values.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import rfc8785

_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                            allow_nan=False)


class _NeedsReference(Exception):
    """The value holds something the fast path does not encode exactly as JCS does."""


def _normalize(value: Any) -> Any:
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 2**53:
            raise _NeedsReference
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NeedsReference
        if value.is_integer():
            if abs(value) >= 2**53:
                raise _NeedsReference
            return int(value)
        text = repr(value)
        if "e" in text or "E" in text:  # exponent thresholds differ between Python and JCS
            raise _NeedsReference
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():  # JCS sorts by UTF-16 units
                raise _NeedsReference
            out[key] = _normalize(item)
        return out
    if isinstance(value, list | tuple):
        return [_normalize(item) for item in value]
    raise _NeedsReference


def dumps(value: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of a JSON-compatible value."""
    try:
        return _ENCODER.encode(_normalize(value)).encode("utf-8")
    except _NeedsReference:
        return rfc8785.dumps(value)


def digest(value: Any) -> str:
    """`sha256-<hex>` content address of a JSON-compatible value."""
    return digest_bytes(dumps(value))


def digest_bytes(data: bytes) -> str:
    return "sha256-" + hashlib.sha256(data).hexdigest()
