"""RTT's data plane: the node daemon, lanes, rings, WAL and the SDK services import.

It never imports `rtt_controller` (an import-linter contract): services install and import only
this package. A service's entry point is `rtt_fabric.connect` (docs/sdk.md); the names below are
loaded on first use, so the controller, which imports the graph and step modules, does not pay
for the SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtt_fabric.endpoints import Backpressure, BreakerOpen, Frame, Publisher, Subscriber
    from rtt_fabric.ring import WaitPolicy
    from rtt_fabric.sdk import ConnectError, Connection, connect

__all__ = ["Backpressure", "BreakerOpen", "ConnectError", "Connection", "Frame", "Publisher",
           "Subscriber", "WaitPolicy", "connect"]

_HOME = {"Backpressure": "endpoints", "BreakerOpen": "endpoints", "Frame": "endpoints",
         "Publisher": "endpoints", "Subscriber": "endpoints", "WaitPolicy": "ring",
         "Connection": "sdk", "ConnectError": "sdk", "connect": "sdk"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'rtt_fabric' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rtt_fabric.{_HOME[name]}"), name)
