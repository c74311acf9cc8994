"""Where a plan's signatures live: files beside the plan, named after it.

`plans/<plan_id>.json` is signed by `plans/<plan_id>.dsse.json` (an ed25519 DSSE envelope) and/or
`plans/<plan_id>.sigstore.json` (a sigstore bundle). The plan file itself is never rewritten, so
it stays byte-identical to `rtt plan --out` and may carry both kinds of signature.
Called by `rtt plan --sign` (to write) and `rtt verify` (to find).
"""

from __future__ import annotations

from pathlib import Path

from rtt_fabric import trust

SUFFIXES = {trust.Method.ED25519: ".dsse.json", trust.Method.SIGSTORE: ".sigstore.json"}


def path_for(plan: Path, method: trust.Method) -> Path:
    stem = plan.name.removesuffix(".json")
    return plan.with_name(stem + SUFFIXES[method])


def beside(plan: Path) -> list[Path]:
    """The signature files that exist for a plan, ed25519 first."""
    return [p for p in (path_for(plan, m) for m in trust.Method) if p.is_file()]
