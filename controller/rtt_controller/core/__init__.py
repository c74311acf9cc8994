"""The pure core: values in, values out, no I/O.

Holds the desired-state model and its validation, the route graph, the planner and the plan format.
Callers are the CLI and, later, the reconcile loop; they hand in bytes and receive frozen values.
"""
