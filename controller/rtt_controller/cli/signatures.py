"""The signing subcommands: `rtt keys generate|sign-manifest|sign-token`, `rtt verify`, and
`rtt plan --sign`'s half.

Signing goes through the `signing` seam; verification through `rtt_fabric.trust`, the same code
the fabric runs. The trust policy is the `trust:` section of the repository's policies/ (at
HEAD for a git repository), or a file given with `--trust`. Called by `commands`, which passes
in the snapshot reader so this module does not import it back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rtt_controller.cli.exits import INVALID, OK, UsageError
from rtt_controller.core import loading, model
from rtt_controller.core import plan as plan_mod
from rtt_controller.signing import grants, keys, sidecar
from rtt_controller.source.snapshot import ParseCache, Snapshot
from rtt_fabric import envelope, tokens, trust

ReadSnapshot = Callable[[str, str | None, ParseCache], Snapshot]
SIGN_METHODS = ("key", "sigstore")


# --- rtt keys generate ------------------------------------------------------------------------


def register_keys(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="make an ed25519 key pair: ID.key (0600) and ID.pub; "
                                          "or, with --kind hmac, a node's token key ID.hmac")
    gen.add_argument("--key-id", required=True, metavar="ID",
                     help="the key id policies/trust.yaml will name (also the file name)")
    gen.add_argument("--kind", choices=("ed25519", "hmac"), default="ed25519",
                     help="hmac: a secret for MACed capability tokens, which the issuer and one "
                          "node share (rtt fabric serve --token-key)")
    gen.add_argument("--out", default=".", metavar="DIR", help="folder for the files (default: .)")
    gen.add_argument("--format", choices=("text", "json"), default="text")
    man = sub.add_parser("sign-manifest", help="sign a service manifest for a strict fabric node")
    man.add_argument("manifest", metavar="FILE",
                     help="YAML or JSON: {service: NAME, symbols: [...]} as REGISTER sends them")
    man.add_argument("--key", required=True, metavar="FILE", help="an ID.key file")
    tok = sub.add_parser("sign-token", help="sign a capability token to open one end of a symbol")
    tok.add_argument("--key", required=True, metavar="FILE",
                     help="an ID.key file (signs), or a node's ID.hmac token key (MACs)")
    tok.add_argument("--saddr", required=True, help="the symbol whose end the token opens")
    tok.add_argument("--verb", required=True, choices=[v.value for v in tokens.Verb],
                     help="tx: the sending end, rx: the receiving end, open: either")
    tok.add_argument("--scope", action="append", default=[], metavar="CAP",
                     help="a capability the token grants (repeatable); must cover the routes'")
    tok.add_argument("--ttl", type=int, default=300, metavar="SECONDS",
                     help="how long the token is valid from now (default 300)")
    tok.add_argument("--not-before", type=int, metavar="UNIX_SECONDS",
                     help="the token is not valid before this time")


def keys_command(args: argparse.Namespace) -> int:
    if args.keys_command == "sign-manifest":
        return _sign_manifest(args)
    if args.keys_command == "sign-token":
        return _sign_token(args)
    if args.kind == "hmac":
        return _generate_token_key(args)
    try:
        private, public = keys.generate(args.key_id, Path(args.out))
    except keys.KeyFileError as exc:
        raise UsageError(str(exc)) from None
    public_key = public.read_text(encoding="ascii").strip()
    if args.format == "json":
        print(json.dumps({"key_id": args.key_id, "private": str(private), "public": str(public),
                          "public_key": public_key}, indent=2, sort_keys=True))
        return OK
    print(f"wrote {private} (private, mode 0600) and {public}")
    print("to trust it, add to the `trust:` section of policies/:\n  keys:\n"
          f"    - key_id: {args.key_id}\n      public_key: {public_key}")
    return OK


def _generate_token_key(args: argparse.Namespace) -> int:
    try:
        path = keys.generate_token_key(args.key_id, Path(args.out))
    except keys.KeyFileError as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        print(json.dumps({"key_id": args.key_id, "token_key": str(path)}, indent=2,
                         sort_keys=True))
        return OK
    print(f"wrote {path} (secret, mode 0600)")
    print(f"give it to one node: rtt fabric serve --strict --trust FILE --token-key {path}\n"
          f"and MAC that node's tokens with it: rtt keys sign-token --key {path} ...")
    return OK


def _sign_manifest(args: argparse.Namespace) -> int:
    """Print REGISTER's `signature` (a DSSE envelope) for the manifest in the file."""
    key_id, private = _load_key(args.key)
    try:
        data = yaml.safe_load(Path(args.manifest).read_text(encoding="utf-8"))
        signed = grants.sign_manifest(str(data["service"]), list(data["symbols"]),
                                      key_id=key_id, key=private)
    except OSError as exc:
        raise UsageError(f"{args.manifest}: {exc.strerror}") from None
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{args.manifest}: not a manifest {{service, symbols}} ({exc})"
                         ) from None
    print(json.dumps(signed.to_json(), indent=2, sort_keys=True))
    return OK


def _sign_token(args: argparse.Namespace) -> int:
    """Print ATTACH's `token` (a DSSE envelope), valid for --ttl seconds from now: signed with
    an ID.key, or MACed with an ID.hmac token key."""
    if args.ttl <= 0:
        raise UsageError("--ttl must be positive")
    grant = grants.token(saddr=args.saddr, verb=args.verb, scopes=args.scope,
                         now=int(time.time()), ttl_s=args.ttl, not_before=args.not_before)
    if Path(args.key).suffix == tokens.MAC_SUFFIX:
        try:
            key_id, secret = tokens.load_key(Path(args.key))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        signed = grants.mac_token(grant, key_id=key_id, secret=secret)
    else:
        key_id, private = _load_key(args.key)
        signed = grants.sign_token(grant, key_id=key_id, key=private)
    print(json.dumps(signed.to_json(), indent=2, sort_keys=True))
    return OK


# --- rtt plan --sign --------------------------------------------------------------------------


def add_sign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign", choices=SIGN_METHODS,
                   help="sign the plan written by --out: with an ed25519 --key, or keyless "
                        "through Sigstore (needs an ambient OIDC identity and the network)")
    p.add_argument("--key", metavar="FILE", help="the ID.key file for --sign key")


def check_sign_args(args: argparse.Namespace) -> None:
    """Refuse a bad combination before any planning is done."""
    if args.sign and not args.out:
        raise UsageError("--sign needs --out: the signature is written beside the plan file")
    if args.sign == "key" and not args.key:
        raise UsageError("--sign key needs --key FILE (make one with `rtt keys generate`)")
    if args.key and args.sign != "key":
        raise UsageError("--key is used only with --sign key")
    if args.key:
        _load_key(args.key)


def _load_key(path: str) -> tuple[str, Any]:
    try:
        return keys.load(Path(path))
    except keys.KeyFileError as exc:
        raise UsageError(str(exc)) from None


def signature(method: str, built: plan_mod.Plan, plan_path: Path,
              key: str | None) -> tuple[Path, Any]:
    """The signature file to write beside `plan_path`, and its JSON value."""
    statement = envelope.Statement(plan_id=built.plan_id, provenance=built.provenance.to_json())
    if method == "key":
        key_id, private = _load_key(str(key))
        signed = keys.sign(statement, key_id=key_id, key=private)
        return sidecar.path_for(plan_path, trust.Method.ED25519), signed.to_json()
    # Imported here: sigstore takes ~0.6 s to import, and only this path signs with it.
    from rtt_controller.signing import keyless  # noqa: PLC0415

    try:
        bundle = keyless.sign(statement, context=keyless.public_context(),
                              identity=keyless.ambient_identity())
    except keyless.KeylessError as exc:
        raise UsageError(str(exc)) from None
    return sidecar.path_for(plan_path, trust.Method.SIGSTORE), json.loads(bundle)


# --- rtt verify -------------------------------------------------------------------------------


def register_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", metavar="PLAN", help="a plan file written by `rtt plan --out`")
    p.add_argument("--trust", metavar="FILE",
                   help="a YAML file with a `trust:` section (default: the repository's policies/)")
    p.add_argument("--repo", metavar="PATH",
                   help="the repository whose policies/ to use (default: the nearest folder "
                        "above PLAN that has policies/)")
    p.add_argument("--signature", metavar="FILE", action="append",
                   help="a signature file to check (default: PLAN's .dsse.json / .sigstore.json)")
    p.add_argument("--format", choices=("text", "json"), default="text")


def verify(args: argparse.Namespace, *, read_snapshot: ReadSnapshot) -> int:
    plan_path = Path(args.plan)
    document = _read_plan(plan_path)
    if document is None:
        return INVALID
    found = _policy(args, plan_path, read_snapshot)
    if isinstance(found, int):
        return found
    policy, source = found
    files = [Path(f) for f in args.signature] if args.signature else sidecar.beside(plan_path)
    verdicts = [(f, _check(f, document, policy)) for f in files]
    ok = bool(verdicts) and all(v.ok for _, v in verdicts)
    _print_verdicts(args, plan_path, document, source, verdicts, ok=ok)
    return OK if ok else INVALID


def refusal(plan_path: Path, document: Mapping[str, Any], *, repo: Path | None,
            read_snapshot: ReadSnapshot) -> str:
    """Why the plan is not verified ('' if every signature beside it is valid, trusted and
    about it), by the trust policy of `repo` (default: the nearest folder above the plan that
    has policies/). Reports a bad policy on stderr, as `rtt verify` does."""
    args = argparse.Namespace(trust=None, repo=str(repo) if repo else None)
    found = _policy(args, plan_path, read_snapshot)
    if isinstance(found, int):
        return "the trust policy is invalid"
    files = sidecar.beside(plan_path)
    if not files:
        return f"{trust.Refusal.UNSIGNED.value}: no signature beside {plan_path}"
    for path in files:
        verdict = _check(path, document, found[0])
        if not verdict.ok:
            return f"{path.name}: {_describe(verdict)}"
    return ""


def _read_plan(path: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        print(f"{path}:1: plan-format: not JSON ({exc})", file=sys.stderr)
        return None
    try:
        plan_mod.load(data)
    except plan_mod.PlanFormatError as exc:
        print(f"{path}:1: plan-format: {exc}", file=sys.stderr)
        return None
    return data  # type: ignore[no-any-return]


def _check(path: Path, document: Mapping[str, Any], policy: trust.TrustPolicy) -> trust.Verdict:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    return trust.bind(trust.verify(data, policy), document)


def _policy(args: argparse.Namespace, plan_path: Path, read_snapshot: ReadSnapshot
            ) -> tuple[trust.TrustPolicy, str] | int:
    """The trust policy and where it came from, or INVALID after reporting why it is bad."""
    if args.trust:
        try:
            data = Path(args.trust).read_bytes()
        except OSError as exc:
            raise UsageError(f"{args.trust}: {exc.strerror}") from None
        parsed = loading.parse_file(args.trust, data)
        return _trust_of([parsed], {args.trust: data}.__getitem__, root=Path())
    root = Path(args.repo) if args.repo else repo_of(plan_path)
    snap = read_snapshot(str(root), None, ParseCache())
    policy_files = [f for f in snap.files if f.path.startswith(loading.POLICIES_DIR)]
    return _trust_of(policy_files, snap.read, root=root)


def repo_of(plan_path: Path) -> Path:
    for folder in plan_path.resolve().parents:
        if (folder / "policies").is_dir():
            return folder
    raise UsageError(f"{plan_path}: no folder above it has policies/; pass --repo or --trust")


def _trust_of(files: Sequence[loading.ParsedFile], read: Callable[[str], bytes], *,
              root: Path) -> tuple[trust.TrustPolicy, str] | int:
    """The `trust:` section among `files` (paths relative to `root`); a relative
    `trusted_root` is taken from the folder of the file that names it."""
    bad = [finding for f in files for finding in f.findings]
    if bad:
        raw = {path: read(path) for path in sorted({b.path for b in bad})}
        for diagnostic in loading.locate(bad, raw):
            print(diagnostic.render(), file=sys.stderr)
        return INVALID
    source = next((f for f in files if any(key == "trust" for key, _ in f.policy)), None)
    if source is None:
        return trust.TrustPolicy.from_dict({}), "defaults (no `trust:` section, so none trusted)"
    section: model.Trust = dict(source.policy)["trust"]
    try:
        policy = trust.TrustPolicy.from_dict(section.model_dump(mode="json"),
                                             base=(root / source.path).parent)
    except trust.PolicyError as exc:
        print(f"{source.path}:1: trust-policy: {exc}", file=sys.stderr)
        return INVALID
    return policy, source.path


def _print_verdicts(args: argparse.Namespace, plan_path: Path, document: Mapping[str, Any],
                    source: str, verdicts: Sequence[tuple[Path, trust.Verdict]], *,
                    ok: bool) -> None:
    if not verdicts:
        print(f"{plan_path}:1: plan-unsigned: no signature beside the plan (looked for "
              + ", ".join(str(sidecar.path_for(plan_path, m)) for m in trust.Method) + ")",
              file=sys.stderr)
    for path, verdict in verdicts:
        if verdict.problem:
            print(f"{path}:1: {verdict.refusal}: {verdict.problem}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"ok": ok, "plan": str(plan_path), "plan_id": document.get("plan_id"),
                          "policy": source,
                          "signatures": [_verdict_json(p, v) for p, v in verdicts]},
                         indent=2, sort_keys=True))
        return
    for path, verdict in verdicts:
        print(f"{path}: {_describe(verdict)}")
    print(f"{'trusted' if ok else 'NOT trusted'}: plan {document.get('plan_id')} "
          f"(policy: {source})")


def _describe(verdict: trust.Verdict) -> str:
    if verdict.method is trust.Method.ED25519:
        who = f"signed with ed25519 key {verdict.signer!r}"
    elif verdict.method is trust.Method.SIGSTORE:
        who = f"signed by {verdict.signer} (issuer {verdict.issuer}) through sigstore"
    else:
        who = "unreadable signature"
    valid = ("valid" if verdict.statement is not None
             else "not checked" if verdict.refusal is trust.Refusal.UNTRUSTED else "invalid")
    trusted = "trusted by policy" if verdict.trusted else "not trusted by policy"
    return f"{who}; {valid}; {trusted}" + (f"; refused: {verdict.refusal}" if verdict.problem
                                          else "")


def _verdict_json(path: Path, verdict: trust.Verdict) -> dict[str, Any]:
    return {"file": str(path), "method": verdict.method, "signer": verdict.signer,
            "issuer": verdict.issuer, "valid": verdict.statement is not None,
            "trusted": verdict.trusted, "ok": verdict.ok, "rule": verdict.refusal,
            "problem": verdict.problem}
