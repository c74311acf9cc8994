"""Canonical serialization and content addresses, in one place.

Everything that is hashed (plans, graphs, policy) goes through `dumps`, which emits RFC 8785 (JCS)
canonical JSON, so the same value gives the same bytes in any process on any machine.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def dumps(value: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of a JSON-compatible value."""
    return rfc8785.dumps(value)  # type: ignore[no-any-return]


def digest(value: Any) -> str:
    """`sha256-<hex>` content address of a JSON-compatible value."""
    return "sha256-" + hashlib.sha256(dumps(value)).hexdigest()


def digest_bytes(data: bytes) -> str:
    return "sha256-" + hashlib.sha256(data).hexdigest()
