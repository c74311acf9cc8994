"""Directory source seam: read desired/ and policies/ from a plain folder (no git).

For working-tree validation before a commit exists. The content id is a sha256 of the bytes.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from rtt_controller.core import loading
from rtt_controller.source.snapshot import ParseCache, Snapshot


def snapshot(root: Path, cache: ParseCache) -> Snapshot:
    data: dict[str, bytes] = {}
    for top in ("desired", "policies"):
        for path in sorted((root / top).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and loading.is_state_file(rel):
                data[rel] = path.read_bytes()
    files = cache.get_many([(rel, hashlib.sha256(raw).hexdigest(), functools.partial(bytes, raw))
                            for rel, raw in data.items()])
    return Snapshot(files=files, read=lambda p: data.get(p, b""), repo=str(root),
                    commit=None, created_at=None)
