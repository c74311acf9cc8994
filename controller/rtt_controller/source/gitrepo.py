"""Git source seam: read desired/ and policies/ from any commit of a local repo, without checkout.

Uses pygit2 on the object database directly; each blob is parsed once per process (ParseCache).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterator
from pathlib import Path

import pygit2

from rtt_controller.core import loading
from rtt_controller.source.snapshot import ParseCache, Snapshot

_ROOTS = ("desired", "policies")


class SourceError(Exception):
    """The repository or revision cannot be read."""


def open_repo(path: str | Path) -> pygit2.Repository:
    found = pygit2.discover_repository(str(path))
    if found is None:
        raise SourceError(f"{path}: not inside a git repository")
    return pygit2.Repository(found)


def tracked(repo: pygit2.Repository, prefix: str) -> bool:
    """Whether HEAD holds the folder `prefix` (False in a repository with no commit yet)."""
    try:
        commit = resolve(repo, "HEAD")
    except SourceError:
        return False
    top: pygit2.Object = commit.tree
    for part in prefix.split("/"):
        if not isinstance(top, pygit2.Tree) or part not in top:
            return False
        top = repo[top[part].id]
    return isinstance(top, pygit2.Tree)


def prefix_of(repo: pygit2.Repository, path: str | Path) -> str:
    """`path` relative to the repository's work tree, '/'-separated ('' for the root)."""
    if repo.workdir is None:
        return ""
    rel = Path(path).resolve().relative_to(Path(repo.workdir).resolve())
    return "" if rel == Path(".") else rel.as_posix()


def resolve(repo: pygit2.Repository, rev: str) -> pygit2.Commit:
    try:
        obj = repo.revparse_single(rev)
        commit = obj.peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise SourceError(f"{rev}: not a commit in {repo.workdir or repo.path} ({exc})") from None
    return commit


def commit_time(commit: pygit2.Commit) -> str:
    """The committer time in UTC, RFC 3339: the plan's `created_at` (never the wall clock)."""
    moment = datetime.datetime.fromtimestamp(commit.commit_time, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _walk(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str) -> Iterator[tuple[str, str]]:
    for entry in tree:
        path = f"{prefix}{entry.name}"
        if entry.type_str == "tree":
            sub = repo[entry.id]
            assert isinstance(sub, pygit2.Tree)
            yield from _walk(repo, sub, path + "/")
        elif (entry.type_str == "blob" and entry.filemode != pygit2.GIT_FILEMODE_LINK
              and loading.is_state_file(path)):  # a symlink's blob is its target path, not YAML
            yield path, str(entry.id)


def snapshot(repo: pygit2.Repository, rev: str, cache: ParseCache, *, prefix: str = ""
             ) -> Snapshot:
    """The state at `rev`. `prefix` is a folder of the repository holding desired/ and
    policies/ (empty for the repository root); file paths stay relative to it."""
    commit = resolve(repo, rev)
    top: pygit2.Object = commit.tree
    for part in filter(None, prefix.split("/")):
        if not isinstance(top, pygit2.Tree) or part not in top:
            raise SourceError(f"{prefix}: no such folder at {rev}")
        top = repo[top[part].id]
    blobs: dict[str, str] = {}
    for root in _ROOTS:
        if isinstance(top, pygit2.Tree) and root in top:
            sub = repo[top[root].id]
            if isinstance(sub, pygit2.Tree):
                blobs.update(_walk(repo, sub, root + "/"))

    def read(path: str) -> bytes:
        blob = repo[blobs[path]] if path in blobs else None
        return bytes(blob.data) if isinstance(blob, pygit2.Blob) else b""

    files = cache.get_many([(path, oid, functools.partial(read, path))
                            for path, oid in sorted(blobs.items())])
    where = str(Path(repo.workdir or repo.path) / prefix) if prefix else str(repo.workdir)
    return Snapshot(files=files, read=read, repo=where, commit=str(commit.id),
                    created_at=commit_time(commit))
