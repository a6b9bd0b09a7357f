"""apply_patch against the fixture scenarios in patch_fixtures/, plus what fixtures cannot hold.

A scenario is a folder with `before/` (the input tree; a `.keep` file stands for an empty
folder and is not part of the tree), `patch`, and either `after/` (the exact expected tree) or
`error` (text the PatchError message must contain, with the tree left exactly as it was).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from assistant.sandbox.guest.apply_patch import (
    AddFile,
    DeleteFile,
    PatchError,
    PatchResult,
    UpdateChunk,
    UpdateFile,
    apply_patch,
    parse_patch,
)

FIXTURES = Path(__file__).parent / "patch_fixtures"
SCENARIOS = sorted(path.name for path in FIXTURES.iterdir() if path.is_dir())
PLACEHOLDER = ".keep"


def copy_tree(source: Path, destination: Path) -> None:
    for path in sorted(source.rglob("*")):
        target = destination / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != PLACEHOLDER:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under root, placeholders left out."""
    tree: dict[str, bytes | None] = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if path.is_dir():
            tree[relative] = None
        elif path.name != PLACEHOLDER:
            tree[relative] = path.read_bytes()
    return tree


def test_there_are_enough_scenarios():
    assert len(SCENARIOS) >= 25


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario: str, tmp_path: Path):
    folder = FIXTURES / scenario
    copy_tree(folder / "before", tmp_path)
    patch = (folder / "patch").read_bytes().decode("utf-8")
    before = snapshot(tmp_path)

    if (folder / "error").exists():
        expected_message = (folder / "error").read_text(encoding="utf-8").strip()
        with pytest.raises(PatchError) as refused:
            apply_patch(patch, tmp_path)
        assert expected_message in str(refused.value)
        assert snapshot(tmp_path) == before
    else:
        apply_patch(patch, tmp_path)
        assert snapshot(tmp_path) == snapshot(folder / "after")


def test_result_lists_each_kind_of_change(tmp_path: Path):
    (tmp_path / "old.py").write_text("x = 1\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.py").write_text("y = 1\n")
    (tmp_path / "a.py").write_text("a = 1\n")
    patch = (
        "*** Begin Patch\n*** Add File: new.py\n+n = 1\n*** Update File: src/x.py\n@@\n-y = 1\n+y = 2\n"
        "*** Delete File: old.py\n*** Update File: a.py\n*** Move to: b.py\n*** End Patch"
    )

    result = apply_patch(patch, tmp_path)

    assert result == PatchResult(
        added=["new.py"], modified=["src/x.py"], deleted=["old.py"], moved=[("a.py", "b.py")]
    )
    assert result.summary() == "A new.py\nM src/x.py\nD old.py\nR a.py -> b.py"


def test_chained_moves_report_one_rename(tmp_path: Path):
    (tmp_path / "a.txt").write_text("a\n")
    patch = (
        "*** Begin Patch\n*** Update File: a.txt\n*** Move to: b.txt\n"
        "*** Update File: b.txt\n*** Move to: c.txt\n*** End Patch"
    )

    result = apply_patch(patch, tmp_path)

    assert result.summary() == "R a.txt -> c.txt"
    assert snapshot(tmp_path) == {"c.txt": b"a\n"}


def test_parse_patch_gives_structured_hunks():
    patch = (
        "*** Begin Patch\n*** Add File: a.txt\n+one\n*** Delete File: b.txt\n"
        "*** Update File: c.py\n*** Move to: d.py\n@@ class Foo\n@@     def bar(self):\n"
        "     x = 1\n-    y = 2\n+    y = 3\n*** End of File\n*** End Patch\n"
    )

    assert parse_patch(patch) == [
        AddFile("a.txt", "one\n"),
        DeleteFile("b.txt"),
        UpdateFile(
            "c.py",
            "d.py",
            (
                UpdateChunk(
                    anchors=("class Foo", "    def bar(self):"),
                    old_lines=("    x = 1", "    y = 2"),
                    new_lines=("    x = 1", "    y = 3"),
                    is_end_of_file=True,
                    new_line_sources=(0, None),
                ),
            ),
        ),
    ]


def test_parse_errors_name_the_patch_line():
    patch = "*** Begin Patch\n*** Update File: a.txt\n@@\n-a\n+b\n*** Bogus: x\n*** End Patch"

    with pytest.raises(PatchError, match=r"line 6: '\*\*\* Bogus: x' is not a valid file header"):
        parse_patch(patch)


def test_symlinked_directory_leading_outside_is_refused(tmp_path: Path):
    workspace, outside = tmp_path / "workspace", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (workspace / "escape").symlink_to(outside, target_is_directory=True)
    before = snapshot(workspace)

    with pytest.raises(PatchError, match="resolves outside the workspace"):
        apply_patch("*** Begin Patch\n*** Add File: escape/evil.txt\n+x\n*** End Patch", workspace)

    assert list(outside.iterdir()) == []
    assert snapshot(workspace) == before


def test_symlinked_file_leading_outside_is_refused(tmp_path: Path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    (workspace / "link.txt").symlink_to(secret)
    patch = "*** Begin Patch\n*** Update File: link.txt\n@@\n-secret\n+leaked\n*** End Patch"

    with pytest.raises(PatchError, match="resolves outside the workspace"):
        apply_patch(patch, workspace)

    assert secret.read_text() == "secret\n"


def test_symlink_inside_workspace_is_deleted_as_a_link(tmp_path: Path):
    (tmp_path / "target.txt").write_text("kept\n")
    (tmp_path / "alias.txt").symlink_to("target.txt")

    result = apply_patch("*** Begin Patch\n*** Delete File: alias.txt\n*** End Patch", tmp_path)

    assert result.deleted == ["alias.txt"]
    assert not os.path.lexists(tmp_path / "alias.txt")
    assert (tmp_path / "target.txt").read_text() == "kept\n"


def test_update_keeps_file_mode_and_move_carries_it(tmp_path: Path):
    script = tmp_path / "run.sh"
    script.write_text("echo one\n")
    script.chmod(0o750)
    other = tmp_path / "other.sh"
    other.write_text("echo two\n")
    other.chmod(0o711)
    patch = (
        "*** Begin Patch\n*** Update File: run.sh\n@@\n-echo one\n+echo 1\n"
        "*** Update File: other.sh\n*** Move to: bin/other.sh\n@@\n-echo two\n+echo 2\n*** End Patch"
    )

    apply_patch(patch, tmp_path)

    assert stat.S_IMODE(script.stat().st_mode) == 0o750
    assert script.read_text() == "echo 1\n"
    assert stat.S_IMODE((tmp_path / "bin" / "other.sh").stat().st_mode) == 0o711


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file ownership needs root")
def test_owner_applies_to_created_files_and_directories_only(tmp_path: Path):
    existing = tmp_path / "existing.txt"
    existing.write_text("old\n")
    patch = (
        "*** Begin Patch\n*** Add File: pkg/sub/new.py\n+x = 1\n"
        "*** Update File: existing.txt\n@@\n-old\n+new\n*** End Patch"
    )

    apply_patch(patch, tmp_path, owner=(1000, 1000))

    for created in ("pkg", "pkg/sub", "pkg/sub/new.py"):
        status = (tmp_path / created).stat()
        assert (status.st_uid, status.st_gid) == (1000, 1000), created
    assert (existing.stat().st_uid, existing.stat().st_gid) == (0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file ownership needs root")
def test_rollback_restores_deleted_file_with_its_owner_and_mode(tmp_path: Path):
    doomed = tmp_path / "doomed.txt"
    doomed.write_text("still here\n")
    doomed.chmod(0o600)
    os.chown(doomed, 1000, 1000)
    (tmp_path / "blocker").write_text("a file\n")
    patch = "*** Begin Patch\n*** Delete File: doomed.txt\n*** Add File: blocker/x.txt\n+x\n*** End Patch"

    with pytest.raises(PatchError, match="Every change already written was undone"):
        apply_patch(patch, tmp_path)

    status = doomed.stat()
    assert doomed.read_text() == "still here\n"
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (1000, 1000, 0o600)


def test_bytes_that_are_not_utf8_survive_an_edit_elsewhere(tmp_path: Path):
    legacy = tmp_path / "legacy.txt"
    legacy.write_bytes(b"caf\xe9\nchange me\n")

    apply_patch("*** Begin Patch\n*** Update File: legacy.txt\n@@\n-change me\n+changed\n*** End Patch", tmp_path)

    assert legacy.read_bytes() == b"caf\xe9\nchanged\n"


def test_byte_order_mark_is_kept_and_ignored_for_matching(tmp_path: Path):
    marked = tmp_path / "bom.txt"
    marked.write_bytes("\ufefffirst\nsecond\n".encode())

    apply_patch("*** Begin Patch\n*** Update File: bom.txt\n@@\n-first\n+1st\n*** End Patch", tmp_path)

    assert marked.read_bytes() == "\ufeff1st\nsecond\n".encode()
