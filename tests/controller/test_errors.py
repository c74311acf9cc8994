"""Bad input: each error class exits 1 with `path:line: rule: message (hint: ...)`, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rtt_controller.cli import main

SYMBOLS = """\
symbols:
  - saddr: rtt://ui/hook/refresh
    type: hook
    version: 2.1.0
    caps: [metrics.read]
    node: n0
  - saddr: rtt://core/api/metrics
    type: api
    version: [1.4.0, 2.0.0]
    caps: [metrics.read]
    node: n0
  - saddr: rtt://core/api/other
    type: api
    version: 1.0.0
    caps: [metrics.read]
    node: n1
"""
ROUTES = """\
routes:
  - from: rtt://ui/hook/refresh
    to: rtt://core/api/metrics
    lane: shm
    version: ^2
"""
POLICY = """\
acl:
  default: allow
types:
  allowed_pairs: [[hook, api], [api, api]]
nodes: [{name: n0}, {name: n1}]
routing:
  fanout: {default_max: 1}
"""


@pytest.fixture
def repo(make_repo):
    r = make_repo("state")
    r.write("desired/symbols/s.yaml", SYMBOLS)
    r.write("desired/routes/r.yaml", ROUTES)
    r.write("policies/p.yaml", POLICY)
    return r


def _validate(repo, capsys, *extra):
    repo.commit()
    code = main.main(["validate", "--repo", str(repo.path), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_the_fixture_is_valid(repo, capsys):
    code, out, _ = _validate(repo, capsys)
    assert code == 0, out
    assert out.startswith("ok: 3 symbols, 1 routes")


CASES = [
    # (description, file, content, expected "path:line: rule")
    ("yaml syntax", "desired/routes/r.yaml", "routes:\n  - from: [unclosed\n",
     "desired/routes/r.yaml:3: yaml-syntax"),
    ("unknown field", "desired/routes/r.yaml", ROUTES + "    colour: blue\n",
     "desired/routes/r.yaml:6: unknown-field"),
    ("missing field", "desired/routes/r.yaml", "routes:\n  - from: rtt://ui/hook/refresh\n",
     "desired/routes/r.yaml:2: missing-field"),
    ("malformed saddr", "desired/routes/r.yaml", ROUTES.replace("rtt://core/api/metrics",
                                                               "rtt://Core/api"),
     "desired/routes/r.yaml:3: bad-saddr"),
    ("unknown symbol", "desired/routes/r.yaml", ROUTES.replace("metrics", "missing"),
     "desired/routes/r.yaml:2: unknown-symbol"),
    ("type pair", "policies/p.yaml", POLICY.replace("[hook, api], ", ""),
     "desired/routes/r.yaml:2: type-pair-not-allowed"),
    ("version meet", "desired/routes/r.yaml", ROUTES.replace("^2", "^3"),
     "desired/routes/r.yaml:2: version-meet-empty"),
    ("capability negotiation", "desired/routes/r.yaml", ROUTES + "    caps: [metrics.write]\n",
     "desired/routes/r.yaml:2: caps-negotiation-empty"),
    ("acl denial", "policies/p.yaml", POLICY.replace(
        "default: allow", "default: allow\n  rules: [{from: 'rtt://ui/**', to: 'rtt://**', "
        "action: deny}]"),
     "desired/routes/r.yaml:2: acl-denied"),
    ("duplicate active link", "desired/routes/r2.yaml",
     "routes:\n  - {from: rtt://ui/hook/refresh, to: rtt://core/api/other, lane: tcp}\n",
     "desired/routes/r2.yaml:2: duplicate-active-link"),
    ("pin to an unusable lane", "policies/p.yaml", POLICY + "  pins:\n"
     "    - {from: 'rtt://ui/**', to: 'rtt://**', lane: uds}\n"
     "  prefer: [shm, tcp]\n",
     "desired/routes/r.yaml:2: pin-lane-unusable"),
    ("dependency cycle", "desired/routes/r2.yaml",
     "routes:\n  - {from: rtt://core/api/metrics, to: rtt://core/api/other, class: bus}\n"
     "  - {from: rtt://core/api/other, to: rtt://core/api/metrics}\n",
     "desired/routes/r2.yaml:2: dependency-cycle"),
    ("non-UTF-8", "desired/routes/r.yaml", ROUTES.encode() + b"# caf\xe9\n",
     "desired/routes/r.yaml:6: not-utf8"),
    ("size limit", "desired/routes/r.yaml", ROUTES + "#" * (4 * 1024 * 1024) + "\n",
     "desired/routes/r.yaml:1: file-too-large"),
]


@pytest.mark.parametrize(("what", "path", "content", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_each_error_class_is_located_and_named(repo, capsys, what, path, content, expected):
    repo.write(path, content)
    code, out, err = _validate(repo, capsys)
    assert code == 1, (what, out, err)
    assert expected + ":" in err, err
    line = next(line for line in err.splitlines() if line.startswith(expected))
    assert "(hint: " in line


def test_fanout_over_its_limit(repo, capsys):
    repo.write("desired/symbols/more.yaml", "symbols:\n" + "".join(
        f"  - {{saddr: rtt://sink/api/s{i}, type: api, version: 1.0.0, caps: [metrics.read]}}\n"
        for i in range(3)))
    repo.write("desired/routes/r2.yaml", "routes:\n" + "".join(
        f"  - {{from: rtt://core/api/other, to: rtt://sink/api/s{i}, class: bus}}\n"
        for i in range(3)))
    code, _, err = _validate(repo, capsys)
    assert code == 1
    assert "desired/routes/r2.yaml:3: fanout-limit: rtt://core/api/other fans out to 3" in err


def test_all_errors_are_reported_in_one_run(repo, capsys):
    repo.write("desired/routes/r.yaml", ROUTES.replace("^2", "^3") + "    colour: blue\n")
    repo.write("desired/routes/r2.yaml",
               "routes:\n  - {from: rtt://nope/api/x, to: rtt://ui/hook/refresh}\n")
    repo.write("policies/q.yaml", "acl: {default: deny}\n")
    code, _, err = _validate(repo, capsys)
    assert code == 1
    located = [line for line in err.splitlines() if line.startswith(("desired/", "policies/"))]
    rules = {line.split(": ")[1] for line in located}
    assert {"unknown-field", "unknown-symbol", "duplicate-policy-key"} <= rules
    assert err.strip().endswith("3 error(s)")


def test_json_format_lists_diagnostics(repo, capsys):
    repo.write("desired/routes/r.yaml", ROUTES.replace("^2", "^3"))
    code, out, _ = _validate(repo, capsys, "--format", "json")
    assert code == 1
    payload = json.loads(out)
    assert payload["ok"] is False
    assert payload["diagnostics"] == [{
        "path": "desired/routes/r.yaml", "line": 2, "rule": "version-meet-empty",
        "message": "rtt://core/api/metrics offers 1.4.0, 2.0.0; none is in '^3'",
        "hint": payload["diagnostics"][0]["hint"]}]
    assert payload["diagnostics"][0]["hint"]


def test_the_installed_script_prints_no_traceback(repo):
    repo.write("desired/routes/r.yaml", b"routes: [\xff\n")
    repo.commit()
    done = subprocess.run([sys.executable, "-m", "rtt_controller.cli.main", "plan", "--repo",
                           str(repo.path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("desired/routes/r.yaml:1: not-utf8: ")


@pytest.mark.parametrize(("argv", "code"), [
    (["plan", "--repo", "/nonexistent/dir"], 2),
    (["plan", "--rev", "no-such-rev"], 2),
    (["plan", "--bogus"], 2),
    (["show", "/nonexistent/plan.json"], 2),
])
def test_usage_errors_exit_2(argv, code, repo, capsys):
    repo.commit()
    if "--repo" not in argv and argv[0] == "plan":
        argv = [*argv, "--repo", str(repo.path)]
    if "--bogus" in argv:  # argparse itself exits 2 on an unknown option
        with pytest.raises(SystemExit) as exited:
            main.main(argv)
        assert exited.value.code == code
    else:
        assert main.main(argv) == code
    assert "Traceback" not in capsys.readouterr().err


def test_a_value_yaml_cannot_build_is_an_error_not_a_crash(repo, capsys):
    repo.write("desired/routes/r.yaml", ROUTES + "    when: 2001-02-30\n")
    code, _, err = _validate(repo, capsys)
    assert code == 1
    assert "desired/routes/r.yaml:1: yaml-syntax: a value cannot be read" in err


def test_an_error_inside_a_version_list_names_the_item_once(repo, capsys):
    repo.write("desired/symbols/s.yaml", SYMBOLS.replace(
        "    version: [1.4.0, 2.0.0]\n", "    version:\n      - 1.4.0\n      - not-a-version\n"))
    code, _, err = _validate(repo, capsys)
    assert code == 1
    located = [line for line in err.splitlines() if line.startswith("desired/symbols/")]
    assert len(located) == 1, located
    assert located[0].startswith("desired/symbols/s.yaml:11: bad-version: ")
