"""Signing seam: the only place that holds private keys or talks to Sigstore's services.

`keys` makes and uses ed25519 keys (offline); `keyless` signs through Sigstore with an ambient
OIDC identity (online); `sidecar` names the signature files written beside a plan. Both methods
sign the same statement (`rtt_fabric.envelope`) and are checked by one verifier
(`rtt_fabric.trust`). Called by the CLI (`rtt keys`, `rtt plan --sign`) and later by the
controller loop's sign stage.
"""
