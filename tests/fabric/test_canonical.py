"""The canonical encoder gives exactly the bytes of the reference RFC 8785 encoder."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from rtt_fabric import canonical, graph

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=1000, deadline=None)
@given(value=JSON)
def test_fast_path_matches_rfc8785(value):
    assert canonical.dumps(value) == rfc8785.dumps(value)


def test_known_vectors():
    assert canonical.dumps({"b": 5.0, "a": [1e-7, 1e21, 0.1, -0.0]}) == \
        b'{"a":[1e-7,1e+21,0.1,0],"b":5}'
    assert canonical.dumps({"\u20ac": 1, "\U0001f600": 2, "z": "\u2028\x1f"}) == \
        rfc8785.dumps({"\u20ac": 1, "\U0001f600": 2, "z": "\u2028\x1f"})


TEXT = st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(fields=st.tuples(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT,
                        st.lists(TEXT, max_size=3),
                        st.floats(min_value=0.001, max_value=60_000, allow_nan=False),
                        st.integers(1, 10**8), TEXT,
                        st.none() | st.tuples(st.integers(1, 10**6),
                                              st.floats(min_value=0.001, max_value=3600))))
def test_a_links_hand_written_canonical_json_matches_the_encoder(fields):
    link = graph.Link(from_=fields[0], to=fields[1], cls=fields[2], lane=fields[3],
                          from_node=fields[4], to_node=fields[5], version=fields[6],
                          caps=tuple(fields[7]), latency_budget_ms=fields[8],
                          throughput_qps=fields[9], backpressure=fields[10], breaker=fields[11])
    assert link.canonical == canonical.dumps(link.to_json()) == rfc8785.dumps(link.to_json())
    assert graph.Link.from_json(link.to_json()) == link
