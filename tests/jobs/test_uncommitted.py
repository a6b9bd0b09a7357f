"""Uncommitted changes of a local working copy: noticed and said when a job is created, and taken into the job's
workspace (after the clone, before setup) only when asked; the job's diff is its own change alone."""
from __future__ import annotations

import json

import pytest

from assistant.jobs.apply import START_PATCH
from assistant.jobs.uncommitted import UNCOMMITTED, UncommittedError, changed_files, inspect, notice_text
from assistant.sandbox import PrepareRequest, SandboxConfig, SandboxError, prepare
from assistant.sandbox.workspace import workspace_diff
from tests.fixtures.repos import git, make_repo
from tests.jobs.fake_sandbox import FakeSandbox

CALC = "def add(a, b):\n    return a - b\n"


@pytest.fixture
def dirty(tmp_path):
    """A repository with a tracked change, a new file, and an ignored file."""
    repo = make_repo(tmp_path / "repo", {"calc.py": CALC, ".gitignore": "*.log\n", "README.md": "calc\n"})
    (repo / "calc.py").write_text(CALC.replace("a - b", "a + b"))
    (repo / "helpers.py").write_text("HELP = 1\n")
    (repo / "debug.log").write_text("ignored\n")
    return repo


def test_the_changes_are_noticed_without_taking_them(dirty):
    changes = inspect(str(dirty), None, include=False)
    assert changes is not None and changes.patch is None
    assert sorted(changes.files) == ["calc.py", "helpers.py"]  # the ignored file is not one of them
    assert changes.commit == git(dirty, "rev-parse", "HEAD").strip()
    info = json.loads(changes.artifacts()[UNCOMMITTED])
    assert START_PATCH not in changes.artifacts()
    text = notice_text(info)
    assert text.startswith("Your working copy has uncommitted changes in 2 files (")
    assert text.endswith(f"this job starts from commit {changes.commit[:12]} without them.")
    assert "calc.py" in text and "helpers.py" in text
    assert git(dirty, "status", "--porcelain") == " M calc.py\n?? helpers.py\n"  # nothing staged, nothing moved


def test_taken_along_they_make_a_patch_of_tracked_and_new_files_and_the_index_is_untouched(dirty):
    git(dirty, "add", "calc.py")  # staged or not, a change is a change
    changes = inspect(str(dirty), None, include=True)
    assert changes.patch and "+    return a + b" in changes.patch and "+HELP = 1" in changes.patch
    assert "debug.log" not in changes.patch
    assert "with them applied" in notice_text(json.loads(changes.artifacts()[UNCOMMITTED]))
    assert git(dirty, "status", "--porcelain") == "M  calc.py\n?? helpers.py\n"


def test_nothing_is_said_of_a_clean_copy_a_url_or_another_ref(tmp_path, dirty):
    clean = make_repo(tmp_path / "clean", {"a.py": "x = 1\n"})
    assert inspect(str(clean), None, include=True) is None
    assert inspect("https://example.invalid/r.git", None, include=True) is None
    assert inspect(str(tmp_path / "missing"), None, include=False) is None
    git(dirty, "branch", "other")
    assert inspect(str(dirty), "main", include=False) is not None  # the checked-out branch: its HEAD
    git(dirty, "commit", "-qm", "more", "--allow-empty")
    assert inspect(str(dirty), "other", include=False) is None  # another commit: the changes are not its


def test_renames_list_the_new_name_once(dirty):
    git(dirty, "mv", "README.md", "READ.md")
    assert sorted(changed_files(dirty)) == ["READ.md", "calc.py", "helpers.py"]


def test_a_huge_patch_is_refused_with_what_to_do(dirty, monkeypatch):
    import assistant.jobs.uncommitted as uncommitted
    monkeypatch.setattr(uncommitted, "MAX_PATCH_BYTES", 100)
    with pytest.raises(UncommittedError, match="commit them, or run the job without them"):
        inspect(str(dirty), None, include=True)


def _prepare(tmp_path, repo, start_patch=None):
    config = SandboxConfig(data_dir=tmp_path / "data", cache_enabled=False)
    return prepare(PrepareRequest(job_id="j1", repo=str(repo), setup=["cat calc.py > seen-by-setup.txt"],
                                  start_patch=start_patch), config, start=FakeSandbox.start)


def test_the_workspace_has_the_changes_only_when_asked_and_the_diff_leaves_them_out(tmp_path, dirty):
    changes = inspect(str(dirty), None, include=True)
    with_them = _prepare(tmp_path, dirty, changes.patch)
    try:
        workspace = with_them.sandbox.workspace
        assert (workspace / "calc.py").read_text() == CALC.replace("a - b", "a + b")
        assert (workspace / "helpers.py").read_text() == "HELP = 1\n"
        assert (workspace / "seen-by-setup.txt").read_text() == CALC.replace("a - b", "a + b")  # before setup
        assert with_them.base_commit == changes.commit and with_them.diff_base not in (None, changes.commit)
        diff = workspace_diff(with_them.sandbox, with_them.diff_base, with_them.setup_changes)
        assert diff.patch == ""  # the user's changes are where the job starts, not part of its change
    finally:
        with_them.sandbox.close()

    without = _prepare(tmp_path / "2", dirty)
    try:
        assert (without.sandbox.workspace / "calc.py").read_text() == CALC
        assert not (without.sandbox.workspace / "helpers.py").exists() and without.diff_base is None
    finally:
        without.sandbox.close()


def test_changes_that_do_not_apply_fail_the_preparation_with_what_to_do(tmp_path, dirty):
    patch = inspect(str(dirty), None, include=True).patch.replace("-    return a - b", "-    return a * b")
    with pytest.raises(SandboxError, match="your uncommitted changes did not apply to commit .*calc.py.*; commit "
                                           "them, or run the job without them"):
        _prepare(tmp_path, dirty, patch)


def test_the_notice_is_on_the_job_card(store, dirty):
    from assistant.web.cards import render_job_card
    changes = inspect(str(dirty), None, include=False)
    store.create_thread(user_id=None, thread_id="th", name="c")
    job = store.create_job(task="fix add", repo=str(dirty), thread_id="th", title="fix add",
                           artifacts=changes.artifacts())
    card = render_job_card(store, job.id)
    assert "⚠ Your working copy has uncommitted changes in 2 files" in card
    assert f"this job starts from commit {changes.commit[:12]} without them." in card
    other = store.create_job(task="t", repo=str(dirty), thread_id="th", title="t")
    assert "uncommitted" not in render_job_card(store, other.id)


def test_a_branch_of_a_job_that_started_from_them_holds_them_and_the_job_change(tmp_path, dirty):
    from assistant.web import gitops
    changes = inspect(str(dirty), None, include=True)
    job_patch = ("diff --git a/helpers.py b/helpers.py\n--- a/helpers.py\n+++ b/helpers.py\n@@ -1 +1,2 @@\n"
                 " HELP = 1\n+MORE = 2\n")
    commit = gitops.create_branch(dirty, job_patch, base_commit=changes.commit, branch="b", message="m",
                                  before=changes.patch)
    assert git(dirty, "show", f"{commit}:helpers.py") == "HELP = 1\nMORE = 2\n"
    assert "a + b" in git(dirty, "show", f"{commit}:calc.py")


def test_an_edit_of_the_same_size_within_the_second_of_its_add_is_taken(tmp_path):
    """Racy git: an entry whose file is not older than the index is checked by content. Copying the user's index
    with a fresh mtime made git trust the cached stat and miss such an edit (seen as a flaky branch test)."""
    import os
    repo = make_repo(tmp_path / "repo", {"calc.py": CALC})
    git(repo, "config", "core.trustctime", "false")  # the edit below changes ctime; only mtime and size may speak
    then = 1_700_000_000
    os.utime(repo / "calc.py", (then, then))
    git(repo, "update-index", "--refresh")  # the entry now caches that mtime
    (repo / "calc.py").write_text(CALC.replace("a - b", "a + b"))  # same size, same inode
    os.utime(repo / "calc.py", (then, then))
    os.utime(repo / ".git" / "index", (then, then))  # written in the same second as the file
    changes = inspect(str(repo), None, include=True)  # before any git status (which would rewrite the index)
    assert changes is not None and "+    return a + b" in changes.patch
    assert git(repo, "status", "--porcelain") == " M calc.py\n"  # as git itself sees it
