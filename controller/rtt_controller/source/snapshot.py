"""The snapshot value a source seam returns, and the parse cache it fills."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from rtt_controller.core import loading

# Below these, a process pool costs more than it saves (measured: bench/planner.py).
PARALLEL_MIN_FILES = 16
PARALLEL_MIN_BYTES = 1 << 20


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

    def get_many(self, items: Sequence[tuple[str, str, Callable[[], bytes]]]
                 ) -> list[loading.ParsedFile]:
        """`get` for many files; a large cold load reads YAML on every core.

        YAML parsing is most of a cold plan's time and runs in Python, so it is spread over
        forked workers; validation stays here, where the models live.
        """
        missing = [(path, cid, read) for path, cid, read in items
                   if (path, cid) not in self._entries]
        data = [read() for _, _, read in missing]
        paths = [path for path, _, _ in missing]
        workers = min(os.cpu_count() or 1, len(missing) // PARALLEL_MIN_FILES)
        if workers > 1 and sum(map(len, data)) >= PARALLEL_MIN_BYTES:
            context = multiprocessing.get_context("fork")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                # Results arrive in order, chunk by chunk: validating each as it lands overlaps
                # this process's share with the workers' parsing.
                documents = pool.map(loading.read, paths, data,
                                     chunksize=max(1, len(paths) // (8 * workers)))
                self._validate(missing, documents)
        else:
            self._validate(missing, map(loading.read, paths, data))
        self.hits += len(items) - len(missing)
        return [self._entries[path, cid] for path, cid, _ in items]

    def _validate(self, missing: Sequence[tuple[str, str, object]],
                  documents: Iterable[object]) -> None:
        for (path, cid, _), document in zip(missing, documents, strict=True):
            self.misses += 1
            self._entries[path, cid] = loading.validate(path, document)

    def retain(self, keys: set[tuple[str, str]]) -> None:
        for key in self._entries.keys() - keys:
            del self._entries[key]
