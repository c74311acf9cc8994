"""Sigstore keyless signing: an ambient OIDC identity, a Fulcio certificate, a Rekor entry.

Online only. In CI (e.g. GitHub Actions with `id-token: write`) sigstore's `detect_credential`
finds the identity; Fulcio certifies an ephemeral key for it, the key signs the plan statement
as DSSE (`Signer.sign_dsse`), Rekor logs it, and the result is a bundle that
`rtt_fabric.trust.verify_bundle` checks offline. The signing context is a parameter, so tests
pass one built on their own CA and logs while production passes Sigstore's public instance.
Called by `rtt plan --sign sigstore`.
"""

from __future__ import annotations

from sigstore import dsse
from sigstore.errors import Error as SigstoreError
from sigstore.models import ClientTrustConfig
from sigstore.oidc import IdentityToken, detect_credential
from sigstore.sign import SigningContext

from rtt_fabric import envelope


class KeylessError(Exception):
    """No ambient identity, or Sigstore refused or could not be reached."""


def ambient_identity() -> IdentityToken:
    """The OIDC identity the environment provides (GitHub Actions, GitLab, Buildkite, GCP...)."""
    try:
        token = detect_credential()
    except SigstoreError as exc:
        raise KeylessError(f"cannot get an ambient OIDC identity: {exc}") from None
    if token is None:
        raise KeylessError("no ambient OIDC identity found (in GitHub Actions, grant the job "
                           "`permissions: id-token: write`)")
    return IdentityToken(token)


def public_context(*, staging: bool = False) -> SigningContext:
    """Sigstore's public instance (this refreshes its trust root over the network)."""
    config = ClientTrustConfig.staging() if staging else ClientTrustConfig.production()
    return SigningContext.from_trust_config(config)


def sign(statement: envelope.Statement, *, context: SigningContext,
         identity: IdentityToken) -> str:
    """Sign the statement as DSSE through Sigstore; return the bundle as JSON text."""
    try:
        # cache=True (the default) is required: with cache=False, sigstore 4.5 makes a fresh
        # ephemeral key on every use, so the certificate and the signature get different keys.
        with context.signer(identity) as signer:
            bundle = signer.sign_dsse(dsse.Statement(statement.payload()))
    except SigstoreError as exc:
        raise KeylessError(f"sigstore signing failed: {exc}") from None
    return bundle.to_json()
