"""Commit signature policy, with real `git commit -S`: SSH keys made by ssh-keygen, and OpenPGP
keys made by gpg in a throwaway home (those tests skip when gpg is not installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pygit2
import pytest

from rtt_controller.core import model
from rtt_controller.source import commits

needs_ssh_keygen = pytest.mark.skipif(
    subprocess.run(["ssh-keygen", "-Y", "verify"], capture_output=True).returncode == 127,
    reason="ssh-keygen with -Y verify is not installed")
needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")


class Signing(NamedTuple):
    format: str  # git's gpg.format: ssh or openpgp
    key: str  # user.signingkey: a private key file for ssh, a fingerprint for openpgp
    program: str = "gpg"  # gpg.program, for openpgp


class SignedRepo:
    def __init__(self, path: Path, gnupg_home: Path | None = None) -> None:
        self.path = path
        self.gnupg_home = gnupg_home
        self._git("init", "-q", "-b", "main")

    def _git(self, *args: str, stdin: str | None = None) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
        if self.gnupg_home is not None:
            env["GNUPGHOME"] = str(self.gnupg_home)
        return subprocess.run(["git", "-C", str(self.path), *args], check=True, text=True,
                              input=stdin, capture_output=True, env=env).stdout.strip()

    def commit(self, message: str, signing: Signing | None) -> str:
        (self.path / "f.txt").write_text(message)
        self._git("add", "-A")
        if signing is None:
            self._git("commit", "-q", "-m", message)
        else:
            self._git("-c", f"gpg.format={signing.format}", "-c", f"gpg.program={signing.program}",
                      "-c", f"user.signingkey={signing.key}", "commit", "-S", "-q", "-m", message)
        return self._git("rev-parse", "HEAD")

    def retell_head(self, message: str) -> str:
        """Replace HEAD by a copy whose message differs but whose signature header is kept."""
        raw = self._git("cat-file", "commit", "HEAD")
        head, _, _ = raw.partition("\n\n")
        forged = self._git("hash-object", "-t", "commit", "-w", "--stdin",
                           stdin=f"{head}\n\n{message}\n")
        self._git("update-ref", "HEAD", forged)
        return forged


def _verify(repo: SignedRepo, trust: model.Trust, trusted: str | None, head: str = "HEAD"):
    return commits.verify_commits(pygit2.Repository(str(repo.path)), head=head, trusted=trusted,
                                  trust=trust)


# --- SSH -----------------------------------------------------------------------------------------

def _keygen(folder: Path, name: str) -> tuple[Signing, str]:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True)
    return Signing("ssh", str(key)), " ".join(key.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture
def setup(tmp_path):
    alice, alice_pub = _keygen(tmp_path, "alice")
    mallory, _ = _keygen(tmp_path, "mallory")
    trust = model.Trust(require_signed_commits=True, allowed_signers=(
        model.AllowedSigner(principal="alice@example.invalid", public_key=alice_pub),))
    (tmp_path / "repo").mkdir()
    return SignedRepo(tmp_path / "repo"), alice, mallory, trust


@needs_ssh_keygen
def test_a_chain_of_good_signatures_passes(setup):
    repo, alice, _, trust = setup
    made = [repo.commit(f"c{i}", alice) for i in range(3)]
    checks = _verify(repo, trust, trusted=None)
    assert [c.commit for c in checks] == made  # oldest first
    assert all(c.ok and c.signer == "alice@example.invalid" for c in checks)
    assert _verify(repo, trust, trusted=made[1])[0].commit == made[2]  # only since trusted


@needs_ssh_keygen
def test_an_unsigned_commit_in_the_middle_fails_and_is_named(setup):
    repo, alice, _, trust = setup
    base = repo.commit("base", alice)
    hidden = repo.commit("unsigned", None)
    repo.commit("signed on top", alice)
    checks = _verify(repo, trust, trusted=base)
    bad = [c for c in checks if not c.ok]
    assert [c.commit for c in bad] == [hidden]
    assert bad[0].problem == "the commit is not signed"
    assert checks[-1].ok  # HEAD alone would have passed


@needs_ssh_keygen
def test_a_key_outside_allowed_signers_fails(setup):
    repo, alice, mallory, trust = setup
    base = repo.commit("base", alice)
    forged = repo.commit("by mallory", mallory)
    (check,) = _verify(repo, trust, trusted=base)
    assert check.commit == forged
    assert check.problem == commits.NOT_ALLOWED


@needs_ssh_keygen
def test_an_ssh_signed_commit_changed_after_signing_fails(setup):
    repo, alice, _, trust = setup
    base = repo.commit("base", alice)
    repo.commit("what alice signed", alice)
    forged = repo.retell_head("what alice never signed")
    (check,) = _verify(repo, trust, trusted=base)
    assert check.commit == forged
    assert check.problem.endswith("the commit was changed after signing")


@needs_ssh_keygen
def test_rewritten_history_is_refused(setup):
    repo, alice, _, trust = setup
    repo.commit("root", alice)
    old = repo.commit("old tip", alice)
    repo._git("reset", "-q", "--hard", "HEAD~1")
    repo.commit("new tip", alice)
    (check,) = _verify(repo, trust, trusted=old)
    assert "is not an ancestor" in check.problem


# --- OpenPGP -------------------------------------------------------------------------------------

class PgpKey(NamedTuple):
    signing: Signing
    signer: model.OpenPgpSigner


def _gpg(home: Path, *args: str) -> str:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
                          check=True, capture_output=True, text=True).stdout


def _pgp_key(home: Path, name: str, *, expire: str = "never",
             faked: tuple[str, ...] = ()) -> PgpKey:
    uid = f"{name.title()} <{name}@example.invalid>"
    _gpg(home, *faked, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", uid,
         "ed25519", "sign", expire)
    colons = _gpg(home, "--with-colons", "--list-keys", f"={uid}").splitlines()
    fpr = next(line.split(":")[9] for line in colons if line.startswith("fpr:"))
    armored = _gpg(home, "--armor", "--export", fpr)
    return PgpKey(Signing("openpgp", fpr), model.OpenPgpSigner(
        principal=f"{name}@example.invalid", fingerprint=fpr, public_key=armored))


@pytest.fixture(scope="module")
def pgp() -> Iterator[tuple[Path, PgpKey, PgpKey]]:
    """One gpg home for the module, with alice's and mallory's keys. It sits under a short
    /tmp path because gpg-agent's socket lives in it and socket paths are short."""
    home = Path(tempfile.mkdtemp(prefix="rtt-gpg-"))
    try:
        yield home, _pgp_key(home, "alice"), _pgp_key(home, "mallory")
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)},
                       check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def expired(pgp) -> PgpKey:
    """A key made on 2020-01-01 that expired a day later, and a gpg.program that signs as of
    that first day, as a signer would have done back then."""
    home = pgp[0]
    faked = ("--faked-system-time", "20200101T000000!")
    old = _pgp_key(home, "olivia", expire="1d", faked=faked)
    program = home / "gpg-in-2020"
    program.write_text(f'#!/bin/sh\nexec gpg {" ".join(faked)} "$@"\n')
    program.chmod(0o755)
    return old._replace(signing=old.signing._replace(program=str(program)))


@pytest.fixture
def pgp_repo(tmp_path, pgp):
    home, alice, mallory = pgp
    (tmp_path / "repo").mkdir()
    trust = model.Trust(require_signed_commits=True, allowed_openpgp_signers=(alice.signer,))
    return SignedRepo(tmp_path / "repo", gnupg_home=home), alice, mallory, trust


@needs_gpg
def test_a_chain_of_good_openpgp_signatures_passes(pgp_repo, tmp_path, monkeypatch):
    repo, alice, _, trust = pgp_repo
    made = [repo.commit(f"c{i}", alice.signing) for i in range(3)]
    users_home = tmp_path / "users-gnupg"
    users_home.mkdir()
    monkeypatch.setenv("GNUPGHOME", str(users_home))  # where a careless gpg call would write
    checks = _verify(repo, trust, trusted=None)
    assert [c.commit for c in checks] == made
    assert all(c.ok and c.signer == "alice@example.invalid" for c in checks)
    assert list(users_home.iterdir()) == []


@needs_gpg
def test_an_unsigned_commit_between_openpgp_ones_fails_and_is_named(pgp_repo):
    repo, alice, _, trust = pgp_repo
    base = repo.commit("base", alice.signing)
    hidden = repo.commit("unsigned", None)
    repo.commit("signed on top", alice.signing)
    checks = _verify(repo, trust, trusted=base)
    assert [(c.commit, c.problem) for c in checks if not c.ok] == [
        (hidden, "the commit is not signed")]
    assert checks[-1].ok


@needs_gpg
def test_an_openpgp_key_outside_policy_fails_and_is_named(pgp_repo):
    repo, alice, mallory, trust = pgp_repo
    base = repo.commit("base", alice.signing)
    forged = repo.commit("by mallory", mallory.signing)
    repo.commit("alice on top", alice.signing)
    checks = _verify(repo, trust, trusted=base)
    assert [(c.commit, c.problem) for c in checks if not c.ok] == [(forged, commits.NOT_ALLOWED)]


@needs_gpg
def test_a_second_key_in_a_listed_block_is_not_trusted(pgp_repo, pgp):
    repo, alice, mallory, _ = pgp_repo
    both = _gpg(pgp[0], "--armor", "--export", alice.signing.key, mallory.signing.key)
    alice_block = alice.signer.model_copy(update={"public_key": both})
    forged = repo.commit("by mallory", mallory.signing)
    (check,) = _verify(repo, model.Trust(allowed_openpgp_signers=(alice_block,)), trusted=None)
    assert (check.commit, check.problem) == (forged, commits.NOT_ALLOWED)


@needs_gpg
def test_an_openpgp_signed_commit_without_openpgp_signers_fails(pgp_repo):
    repo, alice, _, _ = pgp_repo
    made = repo.commit("by alice", alice.signing)
    (check,) = _verify(repo, model.Trust(require_signed_commits=True), trusted=None)
    assert (check.commit, check.problem) == (made, commits.NOT_ALLOWED)


@needs_gpg
def test_an_openpgp_signed_commit_changed_after_signing_fails(pgp_repo):
    repo, alice, _, trust = pgp_repo
    base = repo.commit("base", alice.signing)
    repo.commit("what alice signed", alice.signing)
    forged = repo.retell_head("what alice never signed")
    (check,) = _verify(repo, trust, trusted=base)
    assert check.commit == forged
    assert check.problem == ("the signature does not verify: "
                             "the commit was changed after signing")


@needs_gpg
def test_a_commit_signed_by_an_expired_openpgp_key_fails(pgp_repo, expired):
    repo, alice, _, trust = pgp_repo
    base = repo.commit("base", alice.signing)
    late = repo.commit("by olivia", expired.signing)
    olivia = trust.model_copy(update={"allowed_openpgp_signers": (alice.signer, expired.signer)})
    (check,) = _verify(repo, olivia, trusted=base)
    assert (check.commit, check.problem) == (late, "signed by an OpenPGP key that has expired")


@needs_gpg
@needs_ssh_keygen
def test_ssh_and_openpgp_signers_mix_in_one_chain(pgp_repo, tmp_path):
    repo, alice, _, trust = pgp_repo
    bob, bob_pub = _keygen(tmp_path, "bob")
    both = trust.model_copy(update={"allowed_signers": (
        model.AllowedSigner(principal="bob@example.invalid", public_key=bob_pub),)})
    made = [repo.commit("a", alice.signing), repo.commit("b", bob),
            repo.commit("a again", alice.signing)]
    checks = _verify(repo, both, trusted=None)
    assert [(c.commit, c.signer, c.problem) for c in checks] == [
        (made[0], "alice@example.invalid", None), (made[1], "bob@example.invalid", None),
        (made[2], "alice@example.invalid", None)]
    assert [c.ok for c in _verify(repo, trust, trusted=None)] == [True, False, True]  # no bob


@needs_gpg
def test_a_key_block_without_its_listed_fingerprint_is_a_policy_error(pgp_repo):
    repo, alice, mallory, _ = pgp_repo
    repo.commit("c", alice.signing)
    wrong = alice.signer.model_copy(update={"public_key": mallory.signer.public_key})
    with pytest.raises(commits.SignerKeyError, match=alice.signer.fingerprint):
        _verify(repo, model.Trust(allowed_openpgp_signers=(wrong,)), trusted=None)


# --- the gpg status verdict, on status lines as gpg 2.2 writes them -------------------------------

PRIMARY = "A" * 40
SUBKEY = "B" * 40
VALIDSIG = f"[GNUPG:] VALIDSIG {SUBKEY} 2024-01-01 1704067200 0 4 0 22 10 00 {PRIMARY}"


@pytest.mark.parametrize(("status", "verdict"), [
    (["NEWSIG", "GOODSIG 0123456789ABCDEF Alice", VALIDSIG], ("alice", None)),
    (["NEWSIG", "EXPKEYSIG 0123456789ABCDEF Alice", VALIDSIG],
     (None, "signed by an OpenPGP key that has expired")),
    (["NEWSIG", "REVKEYSIG 0123456789ABCDEF Alice", VALIDSIG],
     (None, "signed by an OpenPGP key that was revoked")),
    (["NEWSIG", "EXPSIG 0123456789ABCDEF Alice", VALIDSIG],
     (None, "the OpenPGP signature has expired")),
    (["NEWSIG", "ERRSIG 0123456789ABCDEF 22 10 00 1704067200 9 -", "NO_PUBKEY 0123456789ABCDEF"],
     (None, commits.NOT_ALLOWED)),
    (["NEWSIG", "GOODSIG 0123456789ABCDEF Alice", VALIDSIG, "NEWSIG",
      "GOODSIG 0123456789ABCDEF Alice", VALIDSIG],
     (None, "the OpenPGP armor holds 2 signatures; exactly one is allowed")),
    ([], (None, "the OpenPGP armor holds 0 signatures; exactly one is allowed")),
    (["NEWSIG", "GOODSIG 0123456789ABCDEF Alice"], (None, "gpg did not report a good signature")),
], ids=["good-by-subkey", "expired-key", "revoked-key", "expired-sig", "unknown-key",
        "two-signatures", "no-signature", "no-validsig"])
def test_gpg_status_verdicts(status, verdict):
    text = "\n".join(line if line.startswith("[GNUPG:]") else f"[GNUPG:] {line}"
                     for line in status)
    assert commits.judge_gpg_status(text, {PRIMARY: "alice"}) == verdict


def test_a_good_signature_by_an_unlisted_primary_key_is_not_allowed():
    status = f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 0123456789ABCDEF Alice\n{VALIDSIG}\n"
    assert commits.judge_gpg_status(status, {SUBKEY: "alice"}) == (None, commits.NOT_ALLOWED)
