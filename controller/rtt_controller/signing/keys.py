"""ed25519 signing keys: make a key pair on disk, load a private key, sign a plan statement.

The private key file (`ID.key`, PKCS#8 PEM) is created with mode 0600 in the one `open` call that
creates it, so it is never readable by others, not even briefly; an existing file is never
overwritten. `ID.pub` holds the public key as the trust policy spells it. The key id is the file
name without `.key`. Called by `rtt keys generate` and `rtt plan --sign key`.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from rtt_fabric import envelope, tokens, trust

KEY_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")  # the policy's key_id; also a safe file name
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


class KeyFileError(Exception):
    """A key that cannot be made or read; the message names the file."""


def public_key_text(key: ed25519.Ed25519PublicKey) -> str:
    """The `public_key` value for policies/trust.yaml."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return trust.ED25519_PREFIX + base64.b64encode(raw).decode("ascii")


def generate(key_id: str, folder: Path) -> tuple[Path, Path]:
    """Write `<key_id>.key` (0600) and `<key_id>.pub` into `folder`; return both paths."""
    if not KEY_ID.match(key_id):
        raise KeyFileError(f"key id {key_id!r} must match {KEY_ID.pattern}")
    key = ed25519.Ed25519PrivateKey.generate()
    private = folder / f"{key_id}{PRIVATE_SUFFIX}"
    public = folder / f"{key_id}{PUBLIC_SUFFIX}"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    folder.mkdir(parents=True, exist_ok=True)
    _create(private, pem, mode=0o600)
    _create(public, (public_key_text(key.public_key()) + "\n").encode("ascii"), mode=0o644)
    return private, public


def generate_token_key(key_id: str, folder: Path) -> Path:
    """Write `<key_id>.hmac` (0600): a secret for MACed capability tokens, shared by the token
    issuer and the one node that accepts them (`rtt fabric serve --token-key`)."""
    if not KEY_ID.match(key_id):
        raise KeyFileError(f"key id {key_id!r} must match {KEY_ID.pattern}")
    path = folder / f"{key_id}{tokens.MAC_SUFFIX}"
    folder.mkdir(parents=True, exist_ok=True)
    _create(path, (secrets.token_hex(32) + "\n").encode("ascii"), mode=0o600)
    return path


def _create(path: Path, data: bytes, *, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)  # mode applies at creation: no window with wider bits
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def load(path: Path) -> tuple[str, ed25519.Ed25519PrivateKey]:
    """The key id (from the file name) and the private key in an `ID.key` file."""
    key_id = path.name.removesuffix(PRIVATE_SUFFIX)
    if path.suffix != PRIVATE_SUFFIX or not KEY_ID.match(key_id):
        raise KeyFileError(f"{path}: a signing key file is named <key-id>{PRIVATE_SUFFIX}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an ed25519 key")
    return key_id, key


def sign(statement: envelope.Statement, *, key_id: str,
         key: ed25519.Ed25519PrivateKey) -> envelope.Envelope:
    """A DSSE envelope over the statement, signed by one key."""
    payload = statement.payload()
    sig = key.sign(envelope.pae(envelope.PAYLOAD_TYPE, payload))
    return envelope.Envelope(payload_type=envelope.PAYLOAD_TYPE, payload=payload,
                             signatures=(envelope.Signature(keyid=key_id, sig=sig),))
