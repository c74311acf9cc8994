"""The snapshot value a source seam returns, and the parse cache it fills."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from rtt_controller.core import loading


@dataclasses.dataclass(frozen=True)
class Snapshot:
    files: Sequence[loading.ParsedFile]
    read: Callable[[str], bytes]  # raw bytes of one file, for locating findings
    repo: str
    commit: str | None  # None for a directory source
    created_at: str | None  # the commit time (RFC 3339, UTC)

    def raw(self, paths: Sequence[str]) -> Mapping[str, bytes]:
        return {p: self.read(p) for p in paths}


class ParseCache:
    """Parsed files by (path, content id). A git blob id is already a content hash.

    The path is part of the key because it decides how a file is read (symbols, routes, policy).
    Unbounded by design for one process; `retain` drops entries a new snapshot no longer uses.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], loading.ParsedFile] = {}
        self.hits = 0
        self.misses = 0

    def get(self, path: str, content_id: str, read: Callable[[], bytes]) -> loading.ParsedFile:
        key = (path, content_id)
        parsed = self._entries.get(key)
        if parsed is None:
            self.misses += 1
            parsed = self._entries[key] = loading.parse_file(path, read())
        else:
            self.hits += 1
        return parsed

    def retain(self, keys: set[tuple[str, str]]) -> None:
        for key in self._entries.keys() - keys:
            del self._entries[key]
