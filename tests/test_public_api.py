"""The public surface of both packages is what their `__all__` says, and it all resolves."""

from __future__ import annotations

import importlib
from importlib import metadata

import pytest

import rtt_controller

PUBLIC = {
    "rtt_controller": ["__version__"],
    "rtt_fabric": ["Backpressure", "BreakerOpen", "ConnectError", "Connection", "Frame",
                   "Publisher", "Subscriber", "WaitPolicy", "connect"],
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_all_is_the_public_api(name):
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(PUBLIC[name])
    for attr in module.__all__:
        assert hasattr(module, attr)


def test_the_version_is_the_distribution_version():
    assert rtt_controller.__version__ == metadata.version("rtt")
