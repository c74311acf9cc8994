"""RTT's data plane: the node daemon, lanes, rings, WAL and the SDK services import.

It never imports `rtt_controller` (an import-linter contract): services install and import only
this package. The fabric itself arrives with the fabric issues; today the package holds no code.
"""

__all__: list[str] = []
