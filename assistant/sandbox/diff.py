"""The job's result as a diff of its workspace against the commit it started from."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .repo import host_git

_STATUS_NAMES = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied", "T": "type changed"}


@dataclass
class WorkspaceDiff:
    display: str  # readable; binary files are named, not dumped
    patch: str  # `git apply`-able on the base commit, binary files included (exact when the text is UTF-8)
    files: list[tuple[str, str]] = field(default_factory=list)  # (status, path); a rename reads "old -> new"
    patch_bytes: bytes = b""  # the patch exactly, for files in other encodings

    @property
    def empty(self) -> bool:
        return not self.files


def workspace_diff(workspace: Path, base_commit: str) -> WorkspaceDiff:
    """Everything the job changed, including new untracked files, excluding files .gitignore ignores.

    A scratch index and a scratch object directory keep this read-only for the workspace: the
    agent's own index, HEAD and objects are left exactly as it left them.
    """
    with tempfile.TemporaryDirectory(prefix="workspace-diff-") as scratch:
        objects = Path(scratch) / "objects"
        objects.mkdir()
        git_dir = host_git(workspace, "rev-parse", "--absolute-git-dir").stdout.strip()
        env = {
            "GIT_INDEX_FILE": str(Path(scratch) / "index"),
            "GIT_OBJECT_DIRECTORY": str(objects),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": os.path.join(git_dir, "objects"),
        }
        # Starting from the base tree keeps files that are tracked there even if .gitignore matches them.
        host_git(workspace, "read-tree", base_commit, env=env)
        host_git(workspace, "add", "--all", "--", ".", env=env)
        common = ["diff", "--cached", "--find-renames", "--no-color", "--no-ext-diff", base_commit, "--"]
        patch = host_git(workspace, *common[:-2], "--binary", *common[-2:], env=env, text=False).stdout
        display = host_git(workspace, *common, env=env, text=False).stdout
        status = host_git(workspace, "diff", "--cached", "--find-renames", "--name-status", "-z", base_commit,
                          env=env).stdout
    return WorkspaceDiff(
        display=display.decode("utf-8", "replace"),
        patch=patch.decode("utf-8", "replace"),
        files=_parse_name_status(status),
        patch_bytes=patch,
    )


def _parse_name_status(raw: str) -> list[tuple[str, str]]:
    fields = raw.split("\0")
    files: list[tuple[str, str]] = []
    position = 0
    while position < len(fields) and fields[position]:
        code = fields[position]
        kind = _STATUS_NAMES.get(code[0], code)
        if code[0] in "RC":
            files.append((kind, f"{fields[position + 1]} -> {fields[position + 2]}"))
            position += 3
        else:
            files.append((kind, fields[position + 1]))
            position += 2
    return files
