"""The job's diff: adds, edits, deletes, renames and binary files, applied with `git apply` on a fresh clone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from assistant.sandbox import PrepareRequest, prepare, workspace_diff
from assistant.sandbox.repo import clone_into

from .conftest import git, make_repo

PNG_HEADER = bytes([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13])


@pytest.fixture
def base_repo(tmp_path) -> Path:
    return make_repo(tmp_path / "origin", {
        ".gitignore": "*.log\nbuild/\n",
        "keep.txt": "unchanged\n",
        "edit.py": "def f():\n    return 1\n",
        "remove.txt": "going away\n",
        "old_name.md": "# A document long enough that git sees the rename\n" + "line\n" * 20,
        "image.bin": PNG_HEADER + bytes(range(256)),
    })


def tree_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def change_workspace(workspace: Path) -> None:
    (workspace / "edit.py").write_text("def f():\n    return 2\n")
    (workspace / "remove.txt").unlink()
    (workspace / "old_name.md").rename(workspace / "new_name.md")
    (workspace / "added" / "deep").mkdir(parents=True)
    (workspace / "added" / "deep" / "new.py").write_text("print('new')\n")
    (workspace / "image.bin").write_bytes(PNG_HEADER + bytes(range(255, -1, -1)))
    (workspace / "fresh.bin").write_bytes(bytes([0, 1, 2, 255, 254]) * 50)
    (workspace / "debug.log").write_text("ignored\n")
    (workspace / "build").mkdir()
    (workspace / "build" / "out.o").write_bytes(b"\0ignored")


def test_diff_applies_cleanly_on_a_fresh_clone(base_repo, tmp_path):
    workspace = tmp_path / "workspace"
    base = clone_into(str(base_repo), None, workspace)
    change_workspace(workspace)
    index_before = (workspace / ".git" / "index").read_bytes()

    diff = workspace_diff(workspace, base)

    assert sorted(diff.files) == sorted([
        ("modified", "edit.py"), ("deleted", "remove.txt"), ("renamed", "old_name.md -> new_name.md"),
        ("added", "added/deep/new.py"), ("modified", "image.bin"), ("added", "fresh.bin"),
    ])
    assert "Binary files a/image.bin and b/image.bin differ" in diff.display
    assert "Binary files /dev/null and b/fresh.bin differ" in diff.display
    assert "GIT binary patch" in diff.patch and "GIT binary patch" not in diff.display
    assert "debug.log" not in diff.patch and "build/out.o" not in diff.patch
    assert (workspace / ".git" / "index").read_bytes() == index_before

    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(base_repo), str(fresh)], check=True)
    git(fresh, "checkout", "-q", base)
    (tmp_path / "job.patch").write_bytes(diff.patch_bytes)
    git(fresh, "apply", "--check", str(tmp_path / "job.patch"))
    git(fresh, "apply", str(tmp_path / "job.patch"))
    expected = {k: v for k, v in tree_of(workspace).items() if k not in ("debug.log", "build/out.o")}
    assert tree_of(fresh) == expected


def test_diff_is_against_the_base_even_after_the_agent_commits(base_repo, tmp_path):
    workspace = tmp_path / "workspace"
    base = clone_into(str(base_repo), None, workspace)
    (workspace / "edit.py").write_text("committed\n")
    git(workspace, "commit", "-qam", "agent commit")
    (workspace / "later.txt").write_text("uncommitted\n")
    diff = workspace_diff(workspace, base)
    assert sorted(diff.files) == [("added", "later.txt"), ("modified", "edit.py")]


def test_unchanged_workspace_has_an_empty_diff(base_repo, tmp_path):
    workspace = tmp_path / "workspace"
    base = clone_into(str(base_repo), None, workspace)
    diff = workspace_diff(workspace, base)
    assert diff.empty and diff.patch == "" and diff.display == ""


def test_changes_made_inside_the_sandbox_show_in_the_diff(config_for, base_repo):
    prepared = prepare(PrepareRequest(job_id="diffjob", repo=str(base_repo), setup=[]), config_for())
    try:
        result = prepared.sandbox.exec("git mv old_name.md renamed.md && rm remove.txt && echo hi >> keep.txt "
                                       "&& printf '\\x00\\x01' > blob.bin && git add -A && git commit -qm wip")
        assert result.exit_code == 0, result.output
        diff = workspace_diff(prepared.sandbox.workspace, prepared.base_commit)
    finally:
        prepared.sandbox.close()
    assert sorted(diff.files) == sorted([("renamed", "old_name.md -> renamed.md"), ("deleted", "remove.txt"),
                                         ("modified", "keep.txt"), ("added", "blob.bin")])
    # host-side git must not leave root-owned objects the sandbox user could not write next to
    owners = {os.stat(p).st_uid for p in (prepared.sandbox.workspace / ".git").rglob("*")}
    assert owners == {1000}
