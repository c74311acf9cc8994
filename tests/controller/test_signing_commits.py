"""Commit signature policy, with real `git commit -S` and keys made by ssh-keygen."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pygit2
import pytest

from rtt_controller.source import commits

pytestmark = pytest.mark.skipif(
    subprocess.run(["ssh-keygen", "-Y", "verify"], capture_output=True).returncode == 127,
    reason="ssh-keygen with -Y verify is not installed")


def _keygen(folder: Path, name: str) -> tuple[Path, str]:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True)
    return key, " ".join(key.with_suffix(".pub").read_text().split()[:2])


class SignedRepo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._git("init", "-q", "-b", "main")
        self._git("config", "gpg.format", "ssh")

    def _git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
        return subprocess.run(["git", "-C", str(self.path), *args], check=True, text=True,
                              capture_output=True, env=env).stdout.strip()

    def commit(self, message: str, key: Path | None) -> str:
        (self.path / "f.txt").write_text(message)
        self._git("add", "-A")
        sign = ["-c", f"user.signingkey={key}", "commit", "-S"] if key else ["commit"]
        self._git(*sign, "-q", "-m", message)
        return self._git("rev-parse", "HEAD")


@pytest.fixture
def setup(tmp_path):
    alice, alice_pub = _keygen(tmp_path, "alice")
    mallory, _ = _keygen(tmp_path, "mallory")
    allowed = commits.write_allowed_signers([("alice@example.invalid", alice_pub)],
                                            tmp_path / "allowed_signers")
    (tmp_path / "repo").mkdir()
    return SignedRepo(tmp_path / "repo"), alice, mallory, allowed


def _verify(repo: SignedRepo, allowed: Path, trusted: str | None, head: str = "HEAD"):
    return commits.verify_commits(pygit2.Repository(str(repo.path)), head=head, trusted=trusted,
                                  allowed_signers=allowed)


def test_a_chain_of_good_signatures_passes(setup):
    repo, alice, _, allowed = setup
    made = [repo.commit(f"c{i}", alice) for i in range(3)]
    checks = _verify(repo, allowed, trusted=None)
    assert [c.commit for c in checks] == made  # oldest first
    assert all(c.ok and c.signer == "alice@example.invalid" for c in checks)
    assert _verify(repo, allowed, trusted=made[1])[0].commit == made[2]  # only since trusted


def test_an_unsigned_commit_in_the_middle_fails_and_is_named(setup):
    repo, alice, _, allowed = setup
    base = repo.commit("base", alice)
    hidden = repo.commit("unsigned", None)
    repo.commit("signed on top", alice)
    checks = _verify(repo, allowed, trusted=base)
    bad = [c for c in checks if not c.ok]
    assert [c.commit for c in bad] == [hidden]
    assert bad[0].problem == "the commit is not signed"
    assert checks[-1].ok  # HEAD alone would have passed


def test_a_key_outside_allowed_signers_fails(setup):
    repo, alice, mallory, allowed = setup
    base = repo.commit("base", alice)
    forged = repo.commit("by mallory", mallory)
    (check,) = _verify(repo, allowed, trusted=base)
    assert check.commit == forged
    assert check.problem == "signed by a key that is not an allowed signer"


def test_rewritten_history_is_refused(setup):
    repo, alice, _, allowed = setup
    repo.commit("root", alice)
    old = repo.commit("old tip", alice)
    repo._git("reset", "-q", "--hard", "HEAD~1")
    repo.commit("new tip", alice)
    (check,) = _verify(repo, allowed, trusted=old)
    assert "is not an ancestor" in check.problem
