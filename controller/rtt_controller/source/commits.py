"""Commit signature policy: every commit since the last trusted one must carry a good signature.

Checking only HEAD lets an unsigned commit hide behind a signed one, so this walks every commit
reachable from the new head and not from the last trusted commit (merge parents included) and
checks each SSH signature with `ssh-keygen -Y verify` against an allowed_signers file, in the
"git" namespace that `git commit -S` signs in. pygit2's `Commit.gpg_signature` gives the
signature and the exact bytes it signs. The reconcile loop is to call this before it plans
a revision (issue 7); until then, tests are its only caller.
"""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pygit2

SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
NAMESPACE = "git"


@dataclasses.dataclass(frozen=True)
class CommitCheck:
    commit: str
    signer: str | None  # the allowed_signers principal whose key made the signature
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def write_allowed_signers(signers: Iterable[tuple[str, str]], path: Path) -> Path:
    """Write (principal, "ssh-ed25519 AAAA...") pairs as an ssh allowed_signers file."""
    lines = [f'{principal} namespaces="{NAMESPACE}" {key}\n' for principal, key in signers]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def verify_commits(repo: pygit2.Repository, *, head: str, trusted: str | None,
                   allowed_signers: Path) -> tuple[CommitCheck, ...]:
    """Check every commit in `trusted..head`, oldest first. `trusted=None` checks the whole
    history. If `trusted` is not an ancestor of `head` (history was rewritten), that is the
    one problem reported: nothing after it can be chained to what was trusted."""
    head_id = repo.revparse_single(head).peel(pygit2.Commit).id
    walker = repo.walk(head_id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    if trusted is not None:
        trusted_id = repo.revparse_single(trusted).peel(pygit2.Commit).id
        if trusted_id != head_id and not repo.descendant_of(head_id, trusted_id):
            return (CommitCheck(str(head_id), None, f"the last trusted commit {trusted_id} is not "
                                "an ancestor of it: history was rewritten"),)
        walker.hide(trusted_id)
    with tempfile.TemporaryDirectory(prefix="rtt-commit-sig-") as scratch:
        return tuple(_check(commit, allowed_signers, Path(scratch)) for commit in walker)


def _check(commit: pygit2.Commit, allowed_signers: Path, scratch: Path) -> CommitCheck:
    signature, payload = commit.gpg_signature
    if signature is None:
        return CommitCheck(str(commit.id), None, "the commit is not signed")
    if not signature.startswith(SSH_ARMOR):
        return CommitCheck(str(commit.id), None,
                           "the commit has a GPG signature; this policy verifies SSH signatures")
    sig_file = scratch / f"{commit.id}.sig"
    sig_file.write_bytes(signature)
    principals = _principals(sig_file, allowed_signers)
    for principal in principals:
        if _verifies(sig_file, payload, principal, allowed_signers):
            return CommitCheck(str(commit.id), principal)
    if not principals:
        return CommitCheck(str(commit.id), None, "signed by a key that is not an allowed signer")
    return CommitCheck(str(commit.id), None, f"the signature does not verify for "
                       f"{', '.join(principals)}: the commit was changed after signing")


def _principals(sig_file: Path, allowed_signers: Path) -> Sequence[str]:
    done = subprocess.run(["ssh-keygen", "-Y", "find-principals", "-s", str(sig_file),
                           "-f", str(allowed_signers)], capture_output=True, text=True, check=False)
    return done.stdout.splitlines() if done.returncode == 0 else ()


def _verifies(sig_file: Path, payload: bytes, principal: str, allowed_signers: Path) -> bool:
    done = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers),
                           "-I", principal, "-n", NAMESPACE, "-s", str(sig_file)],
                          input=payload, capture_output=True, check=False)
    return done.returncode == 0
