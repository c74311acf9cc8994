"""Exit codes shared by every subcommand, and the error that maps to a usage failure."""

OK = 0
INVALID = 1
USAGE = 2
INTERNAL = 3


class UsageError(Exception):
    """A bad argument: a missing repository, an unknown revision, an unreadable file."""
