"""RTT's control plane: source, model, planner and CLI.

The pure core lives in `rtt_controller.core`; the I/O seams (git source, solvers, CLI) sit beside it
and call into it, never the other way round. Layering is enforced by import-linter (pyproject.toml).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
