"""The git source: any commit of any local repo, no checkout, parsed once per blob."""

from __future__ import annotations

from rtt_controller.source import gitrepo
from rtt_controller.source.snapshot import ParseCache
from tests.conftest import git


def test_reads_an_old_commit_without_touching_the_work_tree(example_repo):
    first = git(example_repo.path, "rev-parse", "HEAD")
    example_repo.write("desired/routes/extra.yaml", "routes: []\n")
    example_repo.commit("add an empty routes file")
    (example_repo.path / "desired").rename(example_repo.path / "gone")  # no checkout needed
    repo = gitrepo.open_repo(example_repo.path)
    old = gitrepo.snapshot(repo, first, ParseCache())
    new = gitrepo.snapshot(repo, "HEAD", ParseCache())
    assert old.commit == first
    assert "desired/routes/extra.yaml" not in {f.path for f in old.files}
    assert "desired/routes/extra.yaml" in {f.path for f in new.files}
    assert old.created_at == "2026-01-02T03:04:05Z"


def test_a_new_commit_reparses_only_the_changed_blob(example_repo):
    repo = gitrepo.open_repo(example_repo.path)
    cache = ParseCache()
    first = gitrepo.snapshot(repo, "HEAD", cache)
    assert cache.misses == len(first.files)
    assert cache.hits == 0
    path = example_repo.path / "desired/routes/core.yaml"
    path.write_text(path.read_text().replace("throughput_qps: 50,", "throughput_qps: 60,"))
    example_repo.commit("one route changed")
    gitrepo.snapshot(repo, "HEAD", cache)
    assert cache.misses == len(first.files) + 1
    assert cache.hits == len(first.files) - 1


def test_non_state_files_are_ignored(example_repo):
    example_repo.write("desired/README.md", "notes\n")
    example_repo.write("desired/routes/notes.txt", "not yaml\n")
    example_repo.commit()
    snap = gitrepo.snapshot(gitrepo.open_repo(example_repo.path), "HEAD", ParseCache())
    assert all(f.path.endswith(".yaml") for f in snap.files)


def test_a_folder_inside_a_repository_is_read_from_the_commit(make_repo):
    repo = make_repo("mono")
    repo.write("teams/a/desired/routes/r.yaml", "routes: []\n")
    repo.write("desired/routes/root.yaml", "routes: []\n")
    repo.commit()
    git_repo = gitrepo.open_repo(repo.path / "teams" / "a")
    prefix = gitrepo.prefix_of(git_repo, repo.path / "teams" / "a")
    assert prefix == "teams/a"
    snap = gitrepo.snapshot(git_repo, "HEAD", ParseCache(), prefix=prefix)
    assert [f.path for f in snap.files] == ["desired/routes/r.yaml"]
    assert snap.repo.endswith("teams/a")
