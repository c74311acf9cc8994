"""The control protocol's schema file is current, and framing rejects what it must."""

from __future__ import annotations

import json
import struct

import pytest

from rtt_fabric import protocol
from tests.conftest import ROOT
from tests.fabric.conftest import PLAN, link


def test_the_checked_in_schema_is_the_models_schema():
    on_disk = json.loads((ROOT / "fabric" / "protocol.schema.json").read_text())
    assert on_disk == protocol.schema(), "regenerate: python -m rtt_fabric.protocol"


def test_a_prepare_round_trips_through_a_frame():
    message = {"op": "prepare", "id": 7, "txid": "c1.42", "plan_id": PLAN,
               "steps": [{"op": "add", "link": link("rtt://a/b/c", "rtt://a/b/d")}]}
    data = protocol.frame(message)
    assert protocol.frame_length(data[:4]) == len(data) - 4
    request = protocol.parse_request(data[4:])
    assert isinstance(request, protocol.Prepare)
    assert request.steps[0].link.to_link().key == ("rtt://a/b/c", "rtt://a/b/d", "p2p")


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{}", "op"),
    (b'{"op":"commit","txid":"has space"}', "txid"),
    (b'{"op":"update"}', "op"),
    (b'{"op":"status","extra":1}', "extra"),
    (b'{"op":"prepare","txid":"t","plan_id":"sha256-00","steps":[]}', "plan_id"),
])
def test_malformed_requests_are_named(body, fragment):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_request(body)
    assert err.value.code == "malformed"
    assert fragment in str(err.value)


def test_an_update_must_keep_its_key_and_carry_old():
    old = link("rtt://a/b/c", "rtt://a/b/d")
    moved = link("rtt://a/b/c", "rtt://a/b/e")
    body = json.dumps({"op": "prepare", "txid": "t", "plan_id": PLAN,
                       "steps": [{"op": "update", "link": moved, "old": old}]}).encode()
    with pytest.raises(protocol.ProtocolError, match="keeps the link"):
        protocol.parse_request(body)


def test_oversized_lengths_are_fatal():
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.frame_length(struct.pack(">I", protocol.MAX_FRAME + 1))
    assert err.value.fatal
