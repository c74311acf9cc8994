"""Symbol addresses (`rtt://<domain>/<kind>/<name>`) and the globs that policies match them with.

Called by the model (field validation) and by policy evaluation (ACL, pins, fan-out limits).
"""

from __future__ import annotations

import functools
import re

_SEGMENT = r"[a-z0-9][a-z0-9_-]*"
SADDR_RE = re.compile(rf"rtt://({_SEGMENT})/({_SEGMENT})/({_SEGMENT})")  # used with fullmatch
_GLOB_SEGMENT = re.compile(r"\*\*|[a-z0-9_*-]+")


def is_saddr(text: str) -> bool:
    return SADDR_RE.fullmatch(text) is not None


def domain(saddr: str) -> str:
    """The `<domain>` part; callers pass only validated addresses."""
    return saddr[len("rtt://") :].split("/", 1)[0]


def check_glob(pattern: str) -> str | None:
    """Return an error message if `pattern` is not a valid saddr glob, else None.

    A glob is `rtt://` followed by `/`-separated segments where `*` matches within a segment and a
    whole `**` segment matches any number of segments.
    """
    if not pattern.startswith("rtt://"):
        return f"glob {pattern!r} must start with rtt://"
    segments = pattern[len("rtt://") :].split("/")
    for seg in segments:
        if not _GLOB_SEGMENT.fullmatch(seg):
            return f"glob {pattern!r} has an invalid segment {seg!r}"
    return None


@functools.lru_cache(maxsize=4096)
def _compile_glob(pattern: str) -> re.Pattern[str]:
    parts = []
    for seg in pattern[len("rtt://") :].split("/"):
        if seg == "**":
            parts.append(r"(?:[^/]+(?:/[^/]+)*)")
        else:
            parts.append("[^/]*".join(re.escape(p) for p in seg.split("*")))
    return re.compile("^rtt://" + "/".join(parts) + "$")


def glob_match(pattern: str, saddr: str) -> bool:
    return _compile_glob(pattern).match(saddr) is not None
