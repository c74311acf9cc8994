"""Fuzz the loader: arbitrary bytes and YAML-shaped documents never crash it or raise."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtt_controller.core import loading

PATHS = st.sampled_from(["desired/symbols/f.yaml", "desired/routes/f.yaml", "policies/f.yaml"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(
                        ["rtt://a/b/c", "rtt://ui/hook/refresh", "^1", "1.2.3", "shm", "bus"]))
KEYS = st.sampled_from(["symbols", "routes", "saddr", "type", "version", "caps", "node", "from",
                        "to", "lane", "class", "qos", "latency_budget_ms", "acl", "rules",
                        "routing", "nodes", "pins", "rollout", "steps", "trust", "x"])
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)), max_leaves=25)
FUZZ = settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_and_locate(path: str, data: bytes) -> None:
    parsed = loading.parse_file(path, data)
    diagnostics = loading.locate(parsed.findings, {path: data})
    for d in diagnostics:
        assert d.path == path
        assert d.line >= 1
        assert d.render().startswith(f"{path}:{d.line}: {d.rule.value}: ")


@FUZZ
@given(path=PATHS, data=st.binary(max_size=300))
def test_arbitrary_bytes(path, data):
    _parse_and_locate(path, data)


@FUZZ
@given(path=PATHS, document=DOCUMENTS)
def test_arbitrary_yaml_documents(path, document):
    _parse_and_locate(path, yaml.safe_dump(document).encode())


@settings(max_examples=300, deadline=None)
@given(path=PATHS, text=st.text(alphabet=st.sampled_from(list("[]{}:-,'\"&*!|>#% \n\tab1")),
                                max_size=120))
def test_yaml_punctuation_soup(path, text):
    _parse_and_locate(path, text.encode())


def test_deep_nesting_is_an_error_not_a_crash():
    data = b"routes: " + b"[" * 5000 + b"]" * 5000
    parsed = loading.parse_file("desired/routes/deep.yaml", data)
    assert parsed.findings
