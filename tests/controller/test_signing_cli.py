"""`rtt keys generate`, `rtt plan --sign` and `rtt verify` through the CLI entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rtt_controller.cli.main import main
from rtt_controller.signing import keyless
from tests.sigstore_instance import GITHUB_ISSUER, Instance

RTT = shutil.which("rtt", path=str(Path(sys.executable).parent))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _trust_keys(repo: Path, public: Path, key_id: str = "ci-1") -> None:
    path = repo / "policies" / "trust.yaml"
    entry = f"  keys:\n    - key_id: {key_id}\n      public_key: {public.read_text().strip()}"
    text = path.read_text().replace("  keys: []", entry)
    path.write_text(text)


@pytest.fixture
def signed(example_repo, tmp_path, capsys):
    """The example repository, a trusted key, and a plan signed with it."""
    repo = example_repo.path
    assert main(["keys", "generate", "--key-id", "ci-1", "--out", str(tmp_path / "keys")]) == 0
    assert "mode 0600" in capsys.readouterr().out
    _trust_keys(repo, tmp_path / "keys" / "ci-1.pub")
    example_repo.commit("trust ci-1")
    assert main(["plan", "--repo", str(repo), "--out", f"{repo}/plans/", "--sign", "key",
                 "--key", str(tmp_path / "keys" / "ci-1.key"), "--format", "json"]) == 0
    plan_id = json.loads(capsys.readouterr().out)["plan_id"]
    return repo, repo / "plans" / f"{plan_id}.json", tmp_path / "keys" / "ci-1.key"


def test_verify_prints_the_signer_and_exits_0(signed, capsys):
    _, plan, _ = signed
    assert plan.with_name(plan.name.replace(".json", ".dsse.json")).is_file()
    assert json.loads(plan.read_text())["sign"] is None  # the plan file is never rewritten
    assert main(["verify", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "signed with ed25519 key 'ci-1'; valid; trusted by policy" in out
    assert out.splitlines()[-1].startswith("trusted: plan sha256-")
    assert main(["verify", str(plan), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["policy"] == "policies/trust.yaml"
    assert report["signatures"][0]["signer"] == "ci-1"


def test_verify_exits_1_naming_the_file_for_tampered_untrusted_and_unsigned(signed, tmp_path,
                                                                             capsys):
    repo, plan, _ = signed
    tampered = tmp_path / "tampered.json"
    doc = json.loads(plan.read_text())
    doc["provenance"]["source"]["commit"] = "0" * 40
    tampered.write_text(json.dumps(doc))
    sig = plan.with_name(plan.name.replace(".json", ".dsse.json"))
    assert main(["verify", str(tampered), "--signature", str(sig), "--repo", str(repo)]) == 1
    assert f"{sig}:1: plan-mismatch: the plan's provenance differs" in capsys.readouterr().err

    other = tmp_path / "trust.yaml"
    other.write_text("trust:\n  keys: []\n  sigstore_identities: []\n")
    assert main(["verify", str(plan), "--trust", str(other)]) == 1
    err = capsys.readouterr().err
    assert f"{sig}:1: signer-untrusted: key id 'ci-1' is not in the trust policy" in err

    sig.unlink()
    assert main(["verify", str(plan)]) == 1
    assert f"{plan}:1: plan-unsigned: no signature beside the plan" in capsys.readouterr().err


def test_a_bad_trust_file_is_reported_with_its_line(signed, tmp_path, capsys):
    _, plan, _ = signed
    bad = tmp_path / "trust.yaml"
    bad.write_text("trust:\n  keys:\n    - key_id: k\n      public_key: nope\n")
    assert main(["verify", str(plan), "--trust", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4: schema:" in err


def test_sign_usage_errors_exit_2(example_repo, tmp_path, capsys):
    repo = str(example_repo.path)
    assert main(["plan", "--repo", repo, "--sign", "key", "--key", "x.key"]) == 2
    assert "--sign needs --out" in capsys.readouterr().err
    assert main(["plan", "--repo", repo, "--out", f"{tmp_path}/", "--sign", "key"]) == 2
    assert "--sign key needs --key FILE" in capsys.readouterr().err
    assert main(["plan", "--repo", repo, "--out", f"{tmp_path}/", "--sign", "key",
                 "--key", str(tmp_path / "missing.key")]) == 2
    assert "missing.key" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nope.json")]) == 2


def test_plan_sign_sigstore_writes_a_bundle_that_verify_trusts(example_repo, tmp_path,
                                                                monkeypatch, capsys):
    """The CLI's keyless path, with the test instance behind the signing seam."""
    inst = Instance()
    root = inst.write_root(tmp_path / "trusted_root.json")
    workflow = "rtt-project/rtt/.github/workflows/sign.yml@refs/heads/main"
    monkeypatch.setattr(keyless, "public_context", lambda **_: inst.context(root))
    monkeypatch.setattr(keyless, "ambient_identity", lambda: inst.token(
        issuer=GITHUB_ISSUER, subject="repo:rtt-project/rtt:ref:refs/heads/main",
        repository="rtt-project/rtt", ref="refs/heads/main", workflow=workflow))
    repo = example_repo.path
    path = repo / "policies" / "trust.yaml"
    path.write_text(path.read_text().replace("trusted_root: production",
                                             f"trusted_root: {root}"))
    example_repo.commit("pin the test root")
    out = repo / "plans" / "p.json"
    assert main(["plan", "--repo", str(repo), "--out", str(out), "--sign", "sigstore"]) == 0
    assert (repo / "plans" / "p.sigstore.json").is_file()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert f"signed by https://github.com/{workflow}" in capsys.readouterr().out


@pytest.mark.e2e
def test_the_installed_script_verifies(signed):
    repo, plan, _ = signed
    assert RTT, "the rtt console script is not installed in this environment"
    done = subprocess.run([RTT, "verify", str(plan), "--format", "json"], capture_output=True,
                          text=True, cwd=repo)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signatures"][0]["trusted"] is True
    plan.write_text(plan.read_text().replace('"cbc"', '"highs"'))
    done = subprocess.run([RTT, "verify", str(plan)], capture_output=True, text=True, cwd=repo)
    assert done.returncode == 1
    assert "solver_backend" in done.stderr
