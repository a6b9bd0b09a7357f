"""The job's diff, computed inside the sandbox: adds, edits, deletes, renames and binary files, applied with
`git apply` on a fresh clone; setup's litter left out; big files listed, not embedded."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from assistant.sandbox import PrepareRequest, prepare
from assistant.sandbox.workspace import workspace_diff

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


@pytest.fixture
def sandbox_on(config_for):
    opened = []

    def make(repo: Path, setup=None, **overrides):
        prepared = prepare(PrepareRequest(job_id=f"diff{len(opened)}", repo=str(repo), setup=setup or []),
                           config_for(**overrides))
        opened.append(prepared.sandbox)
        return prepared
    yield make
    for sandbox in opened:
        sandbox.close()


CHANGES = (
    "printf 'def f():\\n    return 2\\n' > edit.py && rm remove.txt && mv old_name.md new_name.md && "
    "mkdir -p added/deep && echo \"print('new')\" > added/deep/new.py && "
    "python3 -c \"import sys; sys.stdout.buffer.write(bytes([0x89,0x50,0x4E,0x47,13,10,26,10,0,0,0,13]) + "
    "bytes(range(255,-1,-1)))\" > image.bin && "
    "python3 -c \"import sys; sys.stdout.buffer.write(bytes([0,1,2,255,254])*50)\" > fresh.bin && "
    "echo ignored > debug.log && mkdir build && printf '\\0ignored' > build/out.o"
)


def fresh_clone_with(patch: bytes, repo: Path, base: str, tmp_path: Path) -> Path:
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(repo), str(fresh)], check=True)
    git(fresh, "checkout", "-q", base)
    (tmp_path / "job.patch").write_bytes(patch)
    git(fresh, "apply", "--check", str(tmp_path / "job.patch"))
    git(fresh, "apply", str(tmp_path / "job.patch"))
    return fresh


def test_diff_applies_cleanly_on_a_fresh_clone(base_repo, sandbox_on, tmp_path):
    prepared = sandbox_on(base_repo)
    sandbox = prepared.sandbox
    assert sandbox.exec(CHANGES).exit_code == 0
    index_before = sandbox.exec("sha256sum .git/index").output

    diff = workspace_diff(sandbox, prepared.base_commit)

    assert sorted(diff.files) == sorted([
        ("modified", "edit.py"), ("deleted", "remove.txt"), ("renamed", "old_name.md -> new_name.md"),
        ("added", "added/deep/new.py"), ("modified", "image.bin"), ("added", "fresh.bin"),
    ])
    assert "GIT binary patch" in diff.patch and "GIT binary patch" not in diff.display
    assert diff.display.count("Binary files differ") == 2
    assert "debug.log" not in diff.patch and "build/out.o" not in diff.patch
    assert sandbox.exec("sha256sum .git/index").output == index_before  # the agent's own index is untouched

    fresh = fresh_clone_with(diff.patch_bytes, base_repo, prepared.base_commit, tmp_path)
    assert (fresh / "edit.py").read_text() == "def f():\n    return 2\n"
    assert (fresh / "image.bin").read_bytes() == PNG_HEADER + bytes(range(255, -1, -1))
    assert (fresh / "fresh.bin").read_bytes() == bytes([0, 1, 2, 255, 254]) * 50
    assert not (fresh / "remove.txt").exists() and (fresh / "new_name.md").exists()


def test_diff_is_against_the_base_even_after_the_agent_commits(base_repo, sandbox_on):
    prepared = sandbox_on(base_repo)
    sandbox = prepared.sandbox
    sandbox.exec("echo committed > edit.py && git commit -qam 'agent commit' && echo uncommitted > later.txt")
    diff = workspace_diff(sandbox, prepared.base_commit)
    assert sorted(diff.files) == [("added", "later.txt"), ("modified", "edit.py")]


def test_unchanged_workspace_has_an_empty_diff(base_repo, sandbox_on):
    prepared = sandbox_on(base_repo)
    diff = workspace_diff(prepared.sandbox, prepared.base_commit)
    assert diff.empty and diff.patch == "" and diff.display == ""


def test_setup_litter_is_not_the_agents_change(tmp_path, sandbox_on):
    """A repository that does not ignore .venv/, and a setup that makes one there: the diff is the agent's alone."""
    repo = make_repo(tmp_path / "proj", {".gitignore": "*.pyc\n", "pyproject.toml": "[project]\nname = 'p'\n",
                                         "p.py": "VALUE = 1\n", "version.txt": "1.0\n"})
    prepared = sandbox_on(repo, setup=["python3 -m venv .venv", "echo stamped >> version.txt", "touch setup.log.txt"])
    sandbox = prepared.sandbox
    assert prepared.setup_changes["created"] == [".venv/", "setup.log.txt"]
    assert list(prepared.setup_changes["modified"]) == ["version.txt"]
    sandbox.exec("echo 'VALUE = 2' > p.py && echo extra > .venv/agent-note && echo new > notes.md")
    diff = workspace_diff(sandbox, prepared.base_commit, prepared.setup_changes)
    assert sorted(diff.files) == [("added", "notes.md"), ("modified", "p.py")]
    assert sorted(diff.setup_excluded) == [".venv/", "setup.log.txt", "version.txt"]
    fresh = fresh_clone_with(diff.patch_bytes, repo, prepared.base_commit, tmp_path)
    assert (fresh / "p.py").read_text() == "VALUE = 2\n" and (fresh / "version.txt").read_text() == "1.0\n"


def test_big_files_are_listed_not_embedded_and_the_patch_is_capped(base_repo, sandbox_on):
    prepared = sandbox_on(base_repo)
    sandbox = prepared.sandbox
    sandbox.exec("head -c 3000000 /dev/urandom > big.bin && for i in 1 2 3 4 5; do "
                 "python3 -c \"print('x' * 400000)\" > text$i.txt; done")
    diff = workspace_diff(sandbox, prepared.base_commit, file_cap=2_000_000, patch_cap=1_000_000)
    assert [item["path"] for item in diff.omitted] == ["big.bin"]
    assert diff.omitted[0]["size"] == 3_000_000 and len(diff.omitted[0]["sha256"]) == 64
    assert diff.truncated and diff.total_bytes > 2_000_000 and len(diff.patch_bytes) <= 1_000_000
    assert "big.bin" in diff.display and "patch truncated" in diff.display
    assert any("over the size cap" in note for note in diff.notes())


def test_changes_made_inside_the_sandbox_show_in_the_diff(base_repo, sandbox_on):
    prepared = sandbox_on(base_repo)
    result = prepared.sandbox.exec("git mv old_name.md renamed.md && rm remove.txt && echo hi >> keep.txt "
                                   "&& printf '\\x00\\x01' > blob.bin && git add -A && git commit -qm wip")
    assert result.exit_code == 0, result.output
    diff = workspace_diff(prepared.sandbox, prepared.base_commit)
    assert sorted(diff.files) == sorted([("renamed", "old_name.md -> renamed.md"), ("deleted", "remove.txt"),
                                         ("modified", "keep.txt"), ("added", "blob.bin")])
