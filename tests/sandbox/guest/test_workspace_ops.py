"""The workspace operations a review's proof runs use (checkout_commit, tracked_in, write_text, remove_file), run
in-process over a fake sandbox's directory through the Workspace facade: they keep inside the workspace."""
from __future__ import annotations

import os
import subprocess

import pytest

from assistant.sandbox.base import SandboxError
from assistant.sandbox.workspace import Workspace
from tests.fixtures.repos import git, make_repo
from tests.jobs.fake_sandbox import FakeSandbox


@pytest.fixture
def workspace(tmp_path):
    source = make_repo(tmp_path / "src", {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n"})
    (source / "a.py").write_text("x = 3\n")
    git(source, "commit", "-qam", "change a")
    sandbox = FakeSandbox.start(job_id="ops")
    os.rmdir(sandbox.workspace)
    subprocess.run(["git", "clone", "-q", str(source), str(sandbox.workspace)], check=True)
    yield Workspace(sandbox), sandbox
    sandbox.close()


def head_and_base(sandbox):
    out = subprocess.run(["git", "rev-parse", "HEAD", "HEAD~1"], cwd=sandbox.workspace, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], out[1]


def test_checkout_moves_tracked_files_and_keeps_untracked_ones(workspace):
    ws, sandbox = workspace
    head, base = head_and_base(sandbox)
    (sandbox.workspace / "a.py").write_text("edited by the reviewer\n")
    (sandbox.workspace / "built.txt").write_text("made by setup\n")
    assert ws.checkout_commit(base) == base
    assert (sandbox.workspace / "a.py").read_text() == "x = 1\n"
    assert (sandbox.workspace / "built.txt").exists()
    assert ws.checkout_commit(head) == head and (sandbox.workspace / "a.py").read_text() == "x = 3\n"


def test_tracked_in_names_the_paths_a_commit_has(workspace):
    ws, sandbox = workspace
    head, _base = head_and_base(sandbox)
    assert ws.tracked_in(head, ["a.py", "pkg/b.py", "test_new.py"]) == ["a.py", "pkg/b.py"]


def test_write_text_writes_inside_and_replaces_a_link_instead_of_following_it(workspace, tmp_path):
    ws, sandbox = workspace
    outside = tmp_path / "outside.txt"
    outside.write_text("host file\n")
    os.symlink(outside, sandbox.workspace / "proof.py")
    ws.write_text("tests/new/proof.py", "assert True\n")
    ws.write_text("proof.py", "assert 1\n")
    assert (sandbox.workspace / "tests/new/proof.py").read_text() == "assert True\n"
    assert not (sandbox.workspace / "proof.py").is_symlink() and outside.read_text() == "host file\n"
    ws.remove_file("proof.py")
    assert not (sandbox.workspace / "proof.py").exists()


def test_write_text_refuses_a_directory_that_leads_out(workspace, tmp_path):
    ws, sandbox = workspace
    os.symlink(tmp_path, sandbox.workspace / "escape")
    with pytest.raises(SandboxError, match="leaves the workspace"):
        ws.write_text("escape/proof.py", "x\n")
    assert not (tmp_path / "proof.py").exists()
