"""The fast canonical encoder gives exactly the bytes of the reference RFC 8785 encoder."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from rtt_controller.core import canonical

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
