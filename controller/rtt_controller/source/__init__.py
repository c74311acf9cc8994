"""Source seams: where desired-state bytes come from (a git commit, or a plain directory).

Both produce a `Snapshot`: the parsed files (through a cache keyed by content id, so a new commit
re-parses only what changed) and a way to read raw bytes back for locating errors.
Called by the CLI and, later, the reconcile loop.
"""
