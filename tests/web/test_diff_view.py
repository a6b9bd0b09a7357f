"""The DiffView element's props and the card text beside it, from diffs real git produced."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from assistant.web import cards
from assistant.web.cards import diff_view_props

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def changed_repo(tmp_path) -> Path:
    """A commit, then every kind of change staged on top: edit, add, delete, rename to a non-ASCII name, binary."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "old.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
    (repo / "gone.txt").write_text("bye\n")
    (repo / "big.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "mv", "old.txt", "new é.txt")
    (repo / "new é.txt").write_text("alpha\nbeta\ngamma\ndelta\nepsilon\n")
    git(repo, "rm", "-q", "gone.txt")
    (repo / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (repo / "big.txt").write_text("".join(f"LINE {i}\n" for i in range(1000)))
    (repo / "plus.txt").write_text("++x\n--y\n" + "w" * 2000 + "\n")
    git(repo, "add", "-A")
    return repo


def staged_diff(repo: Path) -> str:
    return git(repo, "diff", "--cached", "--find-renames", "--no-color", "HEAD")


def test_every_kind_of_change_is_named_with_its_status_and_counts(changed_repo):
    props = diff_view_props(staged_diff(changed_repo))
    files = {f["path"]: f for f in props["files"]}
    assert set(files) == {"big.txt", "blob.bin", "gone.txt", "new é.txt", "plus.txt"}
    assert files["new é.txt"]["status"] == "renamed" and files["new é.txt"]["old_path"] == "old.txt"
    assert (files["new é.txt"]["added"], files["new é.txt"]["removed"]) == (1, 0)
    assert files["gone.txt"]["status"] == "deleted" and files["gone.txt"]["removed"] == 1
    assert files["blob.bin"]["binary"] and files["blob.bin"]["lines"] == []
    # Lines that begin with "++" or "--" are content, not file headers.
    assert (files["plus.txt"]["added"], files["plus.txt"]["removed"]) == (3, 0)
    assert (props["added"], props["removed"]) == (1 + 3 + 1000, 1 + 1000)


def test_big_files_are_truncated_and_start_folded_while_small_ones_start_open(changed_repo):
    props = diff_view_props(staged_diff(changed_repo))
    files = {f["path"]: f for f in props["files"]}
    big = files["big.txt"]
    assert len(big["lines"]) == cards.MAX_DIFF_LINES_PER_FILE
    assert big["hidden_lines"] == 1 + 2000 - cards.MAX_DIFF_LINES_PER_FILE  # one hunk, every line out and in
    assert big["added"] == 1000 and big["open"] is False
    assert all(files[p]["open"] for p in ("gone.txt", "new é.txt", "plus.txt", "blob.bin"))
    long_line = next(line for line in files["plus.txt"]["lines"] if line.startswith("+www"))
    assert len(long_line) == cards.MAX_DIFF_LINE_CHARS + 1 and long_line.endswith("…")


def test_small_files_stop_opening_once_the_card_budget_is_spent(tmp_path):
    repo = tmp_path / "many"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "keep").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    for n in range(12):
        (repo / f"f{n:02d}.txt").write_text("".join(f"{n}-{i}\n" for i in range(20)))
    git(repo, "add", "-A")
    files = diff_view_props(staged_diff(repo))["files"]
    opened = [f["path"] for f in files if f["open"]]
    assert opened == [f"f{n:02d}.txt" for n in range(cards.OPEN_LINES_BUDGET // 21)]


def test_props_are_plain_json_without_markup(changed_repo):
    props = diff_view_props(staged_diff(changed_repo) + 'diff --git a/x.html b/x.html\nnew file mode 100644\n'
                            '--- /dev/null\n+++ b/x.html\n@@ -0,0 +1 @@\n+<script>alert(1)</script>\n')
    assert json.loads(json.dumps(props)) == props
    html = next(f for f in props["files"] if f["path"] == "x.html")
    assert html["lines"] == ["@@ -0,0 +1 @@", "+<script>alert(1)</script>"]  # text for React, never parsed


def test_files_beyond_the_limit_are_counted_not_listed(monkeypatch, changed_repo):
    monkeypatch.setattr(cards, "MAX_DIFF_FILES", 2)
    props = diff_view_props(staged_diff(changed_repo))
    assert len(props["files"]) == 2 and props["hidden_files"] == 3
    assert props["added"] == 1 + 3 + 1000  # the totals still count every file
