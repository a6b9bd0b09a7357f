"""Read-only tools for quick answers, run on the host checkout: list, search, read. They never write.

They read only inside the repository's root (symlinks resolved) and never inside the assistant's data
dir, even when that lies under the root (one user's home as the repository, say). A name that cannot be read as
a regular file there (a symlink loop, a dangling link, a link out of the repository, a directory, a FIFO or device,
a file this process may not read) is answered like a missing file; nothing they answer names a host path.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from ..access import RepoPolicy
from ..agent.citations import UNRESOLVABLE, NotText, file_text, safe_file

SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache", "dist", "build",
             ".tox", ".eggs"}
MAX_READ_LINES = 400
MAX_LIST = 400
MAX_MATCHES = 80

READ_TOOLS = [
    {"type": "function", "function": {
        "name": "list_files", "description": "List files of the repository under a directory (recursive, relative paths).",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": "Directory relative to the repository root; default the root."},
            "pattern": {"type": "string", "description": "Optional glob on the file name, e.g. *.py"}},
            "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "search", "description": "Search the repository for a regular expression; returns path:line: text.",
        "parameters": {"type": "object", "properties": {
            "pattern": {"type": "string"}, "path": {"type": "string", "description": "Directory to search in."}},
            "required": ["pattern"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "read_file", "description": "Read lines of a file, numbered (cite them as 【F:path†Lx-Ly】).",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}},
            "required": ["path"], "additionalProperties": False}}},
]


class ReadOnlyRepo:
    def __init__(self, root: Path, policy: RepoPolicy):
        self.root = Path(root).resolve()
        self.policy = policy

    def _readable(self, target: Path) -> bool:
        try:
            target = target.resolve()
            return target.is_relative_to(self.root) and self.policy.may_read(self.root, target)
        except UNRESOLVABLE:  # a symlink loop, a name the file system refuses
            return False

    def _dir(self, rel: str | None) -> Path:
        rel = (rel or "").strip().strip("/") or "."
        try:
            target = (self.root / rel).resolve()
            if self._readable(target) and target.is_dir():
                return target
        except UNRESOLVABLE:
            pass
        raise ValueError(f"no directory {rel!r} in the repository")

    def _file(self, path: str) -> Path | None:
        target = safe_file([self.root], path)
        return target if target is not None and self._readable(target) else None

    def _listed(self, path: Path) -> bool:
        """Whether list_files shows a name: a regular file, or a link to a readable regular file in the repository."""
        try:
            mode = path.lstat().st_mode
        except UNRESOLVABLE:
            return False
        if stat.S_ISLNK(mode):
            return self._file(path.relative_to(self.root).as_posix()) is not None
        return stat.S_ISREG(mode)

    def run(self, name: str, args: dict[str, Any]) -> str:
        try:
            if name == "list_files":
                return self.list_files(args.get("path"), args.get("pattern"))
            if name == "search":
                return self.search(str(args["pattern"]), args.get("path"))
            if name == "read_file":
                return self.read_file(str(args["path"]), args.get("start"), args.get("end"))
            return f"error: no tool {name!r}"
        except (ValueError, KeyError, re.error) as exc:
            return f"error: {exc}"
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # no message of these reaches the model:
            return f"error: {name} failed ({type(exc).__name__})"  # it may name a host path

    def list_files(self, path: str | None = None, pattern: str | None = None) -> str:
        base = self._dir(path)
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and self._readable(Path(dirpath) / d))
            for f in sorted(filenames):
                if (pattern and not fnmatch.fnmatch(f, pattern)) or not self._listed(Path(dirpath) / f):
                    continue
                out.append((Path(dirpath) / f).relative_to(self.root).as_posix())
                if len(out) >= MAX_LIST:
                    return "\n".join(out) + f"\n… (stopped at {MAX_LIST} files; narrow the path)"
        return "\n".join(out) or "(no files)"

    def search(self, pattern: str, path: str | None = None) -> str:
        base = self._dir(path)
        re.compile(pattern)
        if shutil.which("rg"):
            proc = subprocess.run(["rg", "--line-number", "--no-heading", "--color=never", "--max-count=20",
                                   "--max-columns=300", "-e", pattern, "."], cwd=base, capture_output=True,
                                  encoding="utf-8", errors="replace", timeout=30)  # lines of any encoding
            lines = [ln.removeprefix("./") for ln in proc.stdout.splitlines()]
            if base != self.root:
                prefix = base.relative_to(self.root).as_posix() + "/"
                lines = [prefix + ln for ln in lines]
            lines = [ln for ln in lines if self._readable(self.root / ln.split(":", 1)[0])]
        else:
            rx = re.compile(pattern)
            lines = []
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and self._readable(Path(dirpath) / d)]
                for f in filenames:
                    p = Path(dirpath) / f
                    if not self._readable(p):  # a symlink out of the repository
                        continue
                    try:
                        text = file_text(p)
                    except NotText:
                        continue
                    for i, line in enumerate((text or "").splitlines(), 1):
                        if rx.search(line):
                            lines.append(f"{p.relative_to(self.root).as_posix()}:{i}:{line[:300]}")
        if len(lines) > MAX_MATCHES:
            return "\n".join(lines[:MAX_MATCHES]) + f"\n… {len(lines) - MAX_MATCHES} more matches"
        return "\n".join(lines) or "(no matches)"

    def read_file(self, path: str, start: int | None = None, end: int | None = None) -> str:
        target = self._file(path)
        try:
            text = file_text(target) if target is not None else None
        except NotText as exc:
            raise ValueError(f"{path!r} {exc}; search it for the lines you need") from None
        if text is None:
            raise ValueError(f"no file {path!r} in the repository")
        return numbered_excerpt(path, text, start, end)

    def text_of(self, path: str) -> str | None:
        """A file's text, or None when the repository has no such file that may be read (see the module's note),
        or the file is too large or binary."""
        target = self._file(path)
        try:
            return file_text(target) if target is not None else None
        except NotText:
            return None

    def line_count(self, path: str) -> int | None:
        """How many lines a file of the repository has, for checking a citation; None if there is no such file."""
        text = self.text_of(path)
        return None if text is None else len(text.splitlines())


def numbered_excerpt(path: str, text: str, start: int | None = None, end: int | None = None, note: str = "") -> str:
    """Lines of a file as read_file shows them: numbered, at most MAX_READ_LINES, with how to read on."""
    lines = text.splitlines()
    first = max(1, int(start or 1))
    last = min(len(lines), int(end or first + MAX_READ_LINES - 1), first + MAX_READ_LINES - 1)
    body = "\n".join(f"{i:>5} | {lines[i - 1]}" for i in range(first, last + 1))
    more = f"\n… file has {len(lines)} lines; read on with start={last + 1}" if last < len(lines) else ""
    return f"{path}{note} (lines {first}-{last} of {len(lines)})\n{body}{more}"
