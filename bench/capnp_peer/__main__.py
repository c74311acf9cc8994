"""`python -m bench.capnp_peer SOCKET`: serve the Cap'n Proto status peer (bench/fabric.py)."""

import sys
from pathlib import Path

from bench import capnp_peer

if __name__ == "__main__":
    capnp_peer.serve(Path(sys.argv[1]))
