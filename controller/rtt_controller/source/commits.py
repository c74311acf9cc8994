"""Commit signature policy: every commit since the last trusted one must carry a good signature.

Checking only HEAD lets an unsigned commit hide behind a signed one, so this walks every commit
reachable from the new head and not from the last trusted commit (merge parents included).
pygit2's `Commit.gpg_signature` gives each signature and the exact bytes it signs. The armor
line says which kind it is:

- SSH: `ssh-keygen -Y verify` against an allowed_signers file made from `trust.allowed_signers`,
  in the "git" namespace that `git commit -S` signs in.
- OpenPGP: `gpg --verify` in a throwaway home that holds only the keys of
  `trust.allowed_openpgp_signers`. The signature counts only if gpg calls it good and the
  primary key behind it has a fingerprint that the policy lists; the user's keyring is never read.

The signers should come from the policy at the last trusted commit, not at the head, or a new
commit could let itself in. The reconcile loop is to call this before it plans a revision
(issue 7); until then, tests are its only caller.
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pygit2

from rtt_controller.core import model

SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
OPENPGP_ARMOR = b"-----BEGIN PGP SIGNATURE-----"
NAMESPACE = "git"
NOT_ALLOWED = "signed by a key that is not an allowed signer"
# No agent, no dirmngr, no key fetching, and the policy (not gpg's web of trust) decides.
_GPG = ("gpg", "--batch", "--no-tty", "--no-autostart", "--no-auto-key-retrieve",
        "--trust-model", "always")


@dataclasses.dataclass(frozen=True)
class CommitCheck:
    commit: str
    signer: str | None  # the policy principal whose key made the signature
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class SignerKeyError(ValueError):
    """An `allowed_openpgp_signers` entry whose key block does not hold the fingerprint it names."""


@dataclasses.dataclass(frozen=True)
class _Keyrings:
    allowed_signers: Path  # ssh allowed_signers file
    gnupg_home: Path | None  # None when the policy lists no OpenPGP key
    openpgp_principals: Mapping[str, str]  # primary-key fingerprint -> principal


def write_allowed_signers(signers: Iterable[model.AllowedSigner], path: Path) -> Path:
    """Write SSH signers as an ssh allowed_signers file, each limited to the git namespace."""
    lines = [f'{s.principal} namespaces="{NAMESPACE}" {s.public_key}\n' for s in signers]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def verify_commits(repo: pygit2.Repository, *, head: str, trusted: str | None,
                   trust: model.Trust) -> tuple[CommitCheck, ...]:
    """Check every commit in `trusted..head`, oldest first, against the signers of `trust`.
    `trusted=None` checks the whole history. If `trusted` is not an ancestor of `head` (history
    was rewritten), that is the one problem reported: nothing after it can be chained to what
    was trusted. Costs one or two ssh-keygen or gpg runs per commit. Raises SignerKeyError when
    an OpenPGP key block does not hold its listed fingerprint."""
    head_id = repo.revparse_single(head).peel(pygit2.Commit).id
    walker = repo.walk(head_id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    if trusted is not None:
        trusted_id = repo.revparse_single(trusted).peel(pygit2.Commit).id
        if trusted_id != head_id and not repo.descendant_of(head_id, trusted_id):
            return (CommitCheck(str(head_id), None, f"the last trusted commit {trusted_id} is not "
                                "an ancestor of it: history was rewritten"),)
        walker.hide(trusted_id)
    with tempfile.TemporaryDirectory(prefix="rtt-commit-sig-") as scratch:
        keyrings = _keyrings(trust, Path(scratch))
        return tuple(_check(commit, keyrings, Path(scratch)) for commit in walker)


def _keyrings(trust: model.Trust, scratch: Path) -> _Keyrings:
    allowed = write_allowed_signers(trust.allowed_signers, scratch / "allowed_signers")
    if not trust.allowed_openpgp_signers:
        return _Keyrings(allowed, None, {})
    home = scratch / "gnupg"
    home.mkdir(mode=0o700)
    home.chmod(0o700)  # gpg warns about a home that others can read; mkdir's mode obeys umask
    blocks = "".join(s.public_key.rstrip("\n") + "\n" for s in trust.allowed_openpgp_signers)
    _gpg(home, "--import", stdin=blocks)
    held = _primary_fingerprints(_gpg(home, "--with-colons", "--list-keys").stdout)
    for signer in trust.allowed_openpgp_signers:
        if signer.fingerprint not in held:
            raise SignerKeyError(f"allowed_openpgp_signers: the public_key of {signer.principal} "
                                 f"holds no primary key {signer.fingerprint}")
    return _Keyrings(allowed, home,
                     {s.fingerprint: s.principal for s in trust.allowed_openpgp_signers})


def _check(commit: pygit2.Commit, keyrings: _Keyrings, scratch: Path) -> CommitCheck:
    signature, payload = commit.gpg_signature
    if signature is None:
        return CommitCheck(str(commit.id), None, "the commit is not signed")
    sig_file = scratch / f"{commit.id}.sig"
    sig_file.write_bytes(signature)
    if signature.startswith(SSH_ARMOR):
        signer, problem = _check_ssh(sig_file, payload, keyrings.allowed_signers)
    elif signature.startswith(OPENPGP_ARMOR):
        signer, problem = _check_openpgp(sig_file, payload, keyrings)
    else:
        signer, problem = None, "the signature is neither SSH nor OpenPGP (X.509 is not supported)"
    return CommitCheck(str(commit.id), signer, problem)


def _check_ssh(sig_file: Path, payload: bytes,
               allowed_signers: Path) -> tuple[str | None, str | None]:
    principals = _principals(sig_file, allowed_signers)
    for principal in principals:
        if _verifies(sig_file, payload, principal, allowed_signers):
            return principal, None
    if not principals:
        return None, NOT_ALLOWED
    return None, (f"the signature does not verify for {', '.join(principals)}: "
                  "the commit was changed after signing")


def _principals(sig_file: Path, allowed_signers: Path) -> Sequence[str]:
    done = subprocess.run(["ssh-keygen", "-Y", "find-principals", "-s", str(sig_file),
                           "-f", str(allowed_signers)], capture_output=True, text=True, check=False)
    return done.stdout.splitlines() if done.returncode == 0 else ()


def _verifies(sig_file: Path, payload: bytes, principal: str, allowed_signers: Path) -> bool:
    done = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers),
                           "-I", principal, "-n", NAMESPACE, "-s", str(sig_file)],
                          input=payload, capture_output=True, check=False)
    return done.returncode == 0


def _check_openpgp(sig_file: Path, payload: bytes,
                   keyrings: _Keyrings) -> tuple[str | None, str | None]:
    if keyrings.gnupg_home is None:
        return None, NOT_ALLOWED
    payload_file = sig_file.with_suffix(".payload")
    payload_file.write_bytes(payload)
    done = _gpg(keyrings.gnupg_home, "--status-fd", "1", "--verify", str(sig_file),
                str(payload_file))
    return judge_gpg_status(done.stdout, keyrings.openpgp_principals)


def judge_gpg_status(status: str, principals: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(principal, None) for one good signature by a listed primary key, else (None, problem).
    `status` is gpg's --status-fd output; `principals` maps primary fingerprints to principals.
    Pure: the verdict depends on these status lines alone."""
    lines = [line.split()[1:] for line in status.splitlines() if line.startswith("[GNUPG:] ")]
    words = {fields[0]: fields[1:] for fields in lines if fields}
    newsigs = sum(1 for fields in lines if fields and fields[0] == "NEWSIG")
    if newsigs != 1:
        return None, f"the OpenPGP armor holds {newsigs} signatures; exactly one is allowed"
    refusals = {"BADSIG": "the signature does not verify: the commit was changed after signing",
                "NO_PUBKEY": NOT_ALLOWED,
                "EXPKEYSIG": "signed by an OpenPGP key that has expired",
                "REVKEYSIG": "signed by an OpenPGP key that was revoked",
                "EXPSIG": "the OpenPGP signature has expired",
                "ERRSIG": "gpg could not check the signature (unsupported algorithm?)"}
    for word, problem in refusals.items():
        if word in words:
            return None, problem
    valid = words.get("VALIDSIG", [])
    if "GOODSIG" not in words or len(valid) < 10:
        return None, "gpg did not report a good signature"
    principal = principals.get(valid[9])  # the primary key's fingerprint, also for a subkey
    return (principal, None) if principal is not None else (None, NOT_ALLOWED)


def _gpg(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # --homedir beats $GNUPGHOME, so the user's keyring stays out of it.
    return subprocess.run([*_GPG, "--homedir", str(home), *args], input=stdin,
                          capture_output=True, text=True, check=False)


def _primary_fingerprints(colons: str) -> frozenset[str]:
    """Primary-key fingerprints from `gpg --with-colons --list-keys`: the `fpr` record right
    after each `pub` record (subkey fingerprints follow `sub` records)."""
    records = [line.split(":") for line in colons.splitlines()]
    return frozenset(fpr[9] for pub, fpr in itertools.pairwise(records)
                     if pub[0] == "pub" and fpr[0] == "fpr" and len(fpr) > 9)
