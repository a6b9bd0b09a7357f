"""Review flags on diffs real git produced: tampered tests, churn, scratch files, binaries, lockfiles, litter."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from assistant.agent.review import parse_diff, review_diff, tampered_tests, task_intent

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}

CALC = ("def add(a, b):\n    return a - b\n\n\n" + "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(4))
        + "SETTINGS = {'mode': 'fast', 'size': 3}\n")
TESTS = ("import unittest\n\nfrom calc import add\n\n\nclass CalcTest(unittest.TestCase):\n"
         "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n"
         "    def test_zero(self):\n        self.assertEqual(add(0, 0), 0)\n")


def git(repo: Path, *args: str, binary: bool = False):
    out = subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True, text=not binary)
    return out.stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "calc.py").write_text(CALC)
    (root / "tests").mkdir()
    (root / "tests" / "test_calc.py").write_text(TESTS)
    (root / "poetry.lock").write_text("[[package]]\nname = 'x'\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return root


def diff_of(repo: Path) -> tuple[str, str]:
    git(repo, "add", "-A")
    display = git(repo, "diff", "--cached", "--find-renames", "--no-color", "HEAD")
    patch = git(repo, "diff", "--cached", "--find-renames", "--no-color", "--binary", "HEAD")
    return display, patch


def flags(repo: Path, task: str = "Fix the failing test") -> list[tuple[str, str, str]]:
    display, patch = diff_of(repo)
    return [(f.kind, f.path, f.detail) for f in review_diff(display, task, patch=patch)]


def fix_source(repo: Path) -> None:
    (repo / "calc.py").write_text(CALC.replace("a - b", "a + b"))


def test_a_clean_fix_raises_no_flag(repo):
    fix_source(repo)
    assert flags(repo) == []


def test_editing_the_test_to_pass_is_flagged(repo):
    (repo / "tests" / "test_calc.py").write_text(TESTS.replace("add(2, 3), 5", "add(2, 3), -1"))
    found = flags(repo)
    assert found == [("test_changed", "tests/test_calc.py",
                      "1 assertion rewritten in an existing test, though the task asked for no test changes")]
    assert tampered_tests(review_diff(*diff_of(repo)[:1], "Fix the failing test")) == ["tests/test_calc.py"]


def test_removed_assertions_skips_and_deleted_tests_are_weakening(repo):
    weakened = TESTS.replace("        self.assertEqual(add(0, 0), 0)\n", "        pass\n")
    weakened = weakened.replace("    def test_add(self):", "    @unittest.skip('flaky')\n    def test_add(self):")
    (repo / "tests" / "test_calc.py").write_text(weakened)
    [(kind, path, detail)] = flags(repo)
    assert (kind, path) == ("test_weakened", "tests/test_calc.py")
    assert "1 assertion removed" in detail and "skip/xfail added: `@unittest.skip('flaky')`" in detail
    (repo / "tests" / "test_calc.py").unlink()
    assert flags(repo) == [("test_deleted", "tests/test_calc.py", "test file deleted")]
    assert flags(repo, "Delete the obsolete calc tests") == []


def test_test_changes_are_fine_when_the_task_asks_for_them(repo):
    (repo / "tests" / "test_calc.py").write_text(TESTS.replace("add(2, 3), 5", "add(2, 4), 6"))
    assert flags(repo, "Update the test to use other numbers") == []
    (repo / "tests" / "test_new.py").write_text("def test_new():\n    assert True\n")  # a new test file is no tampering
    assert all(kind != "test_changed" for kind, _p, _d in flags(repo, "Update the test to use other numbers"))


def test_whitespace_and_formatting_churn(repo):
    fix_source(repo)
    (repo / "calc.py").write_text((repo / "calc.py").read_text().replace("{'mode': 'fast', 'size': 3}",
                                                                         '{"mode": "fast",  "size": 3}'))
    assert flags(repo) == [("formatting_only", "calc.py", "1 of 2 hunks change only formatting")]
    git(repo, "checkout", "--", "calc.py")
    (repo / "calc.py").write_text(CALC.replace("    return", "\treturn"))
    assert flags(repo) == [("formatting_only", "calc.py", "only whitespace changes")]
    assert flags(repo, "Reformat calc.py with tabs") == []


def test_new_files_nothing_refers_to(repo):
    fix_source(repo)
    (repo / "debug_add.py").write_text("from calc import add\nprint(add(2, 3))\n")
    (repo / "out.txt").write_text("5\n")
    (repo / "helpers.py").write_text("def twice(x):\n    return 2 * x\n")
    (repo / "util.py").write_text("def used():\n    return 1\n")
    (repo / "calc.py").write_text((repo / "calc.py").read_text() + "\nfrom util import used\n")
    (repo / "NOTES.md").write_text("notes\n")
    found = flags(repo)
    assert ("unreferenced_file", "debug_add.py", "new file that looks like a debug script or scratch output") in found
    assert ("unreferenced_file", "out.txt", "new file that looks like a debug script or scratch output") in found
    assert ("unreferenced_file", "helpers.py", "new file that nothing in the change or the task refers to") in found
    assert not [f for f in found if f[1] in ("util.py", "NOTES.md")]
    assert not [f for f in flags(repo, "Add helpers.py with a twice() function") if f[1] == "helpers.py"]


def test_a_short_module_name_the_task_gives_is_a_reference(repo):
    fix_source(repo)
    (repo / "m9.py").write_text("def f9():\n    return 9\n")
    assert not [f for f in flags(repo, "Create module m9 with a function f9") if f[1] == "m9.py"]
    assert ("unreferenced_file", "m9.py", "new file that nothing in the change or the task refers to") in flags(
        repo, "Create a module with a function f9")


def test_binary_large_lockfile_and_environment_litter(repo):
    fix_source(repo)
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    (repo / "data.bin").write_bytes(os.urandom(300 * 1024))
    (repo / "table.py").write_text("".join(f"V{i} = {i}\n" for i in range(1500)) + "")
    (repo / "calc.py").write_text((repo / "calc.py").read_text() + "from table import V1\nLOGO = 'logo.png'\nDATA = 'data.bin'\n")
    (repo / "poetry.lock").write_text("[[package]]\nname = 'y'\n")
    for rel in (".venv/bin/python3", ".venv/lib/python3.11/site-packages/pytest/__init__.py", "pkg/__pycache__/m.pyc"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x\n")
    found = flags(repo)
    assert ("binary_file", "logo.png", "binary file added (2,056 bytes)") in found
    assert ("large_file", "data.bin", "binary file added (307,200 bytes)") in found
    assert ("large_file", "table.py", "1,500 lines added") in found
    assert ("lockfile", "poetry.lock", "lockfile modified, though the task asked for no dependency change") in found
    assert ("generated_files", ".venv/", "2 files of an environment or build output, not part of the work") in found
    assert ("generated_files", "pkg/__pycache__/", "1 file of an environment or build output, not part of the work") in found
    assert found[0][0] == "generated_files"   # nothing about tests here; litter comes first
    assert not [f for f in flags(repo, "Upgrade the dependencies") if f[0] == "lockfile"]


def test_parse_diff_reads_renames_quoted_paths_and_hunks(repo):
    git(repo, "mv", "calc.py", "calculator é.py")
    (repo / "calculator é.py").write_text(CALC.replace("a - b", "a + b"))
    [change] = [c for c in parse_diff(diff_of(repo)[0]) if c.status == "renamed"]
    assert change.path == "calculator é.py" and change.old_path == "calc.py"
    assert change.removed == ["    return a - b"] and change.added == ["    return a + b"]


def test_task_intent():
    assert not task_intent("Fix the failing test in calc").tests
    assert task_intent("Also add a test for that").tests
    assert task_intent("Skip the flaky network tests").test_removal
    assert task_intent("Bump the dependencies").dependencies and not task_intent("Fix add()").dependencies
