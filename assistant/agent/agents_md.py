"""AGENTS.md discovery, merged the way Codex does: from the repository root down to the working
directory, deeper files later (so they win where they disagree), capped in size.

Files are read through a callable (inside the job's sandbox, for a job), never from a host workspace.
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable

NAMES = ("AGENTS.override.md", "AGENTS.md")
MAX_BYTES = 32 * 1024

Reader = Callable[[Iterable[str]], dict[str, str | None]]


def candidate_paths(workdir: str = "") -> list[str]:
    """Every path discovery may read, root first; a workdir that leaves the repository counts as the root."""
    normal = posixpath.normpath(workdir or ".")
    parts = [] if normal == "." or normal.startswith("..") or normal.startswith("/") else normal.split("/")
    folders = [""] + ["/".join(parts[:i + 1]) for i in range(len(parts))]
    return [posixpath.join(folder, name) for folder in folders for name in NAMES]


def discover_agents_md(read: Reader, workdir: str = "", max_bytes: int = MAX_BYTES) -> str:
    paths = candidate_paths(workdir)
    texts = read(paths)
    parts: list[str] = []
    used = 0
    for index in range(0, len(paths), len(NAMES)):
        for path in paths[index:index + len(NAMES)]:  # an override replaces the plain file of the same folder
            text = texts.get(path)
            if text is None:
                continue
            text = text.strip()
            budget = max_bytes - used
            if budget <= 0:
                return "\n\n".join(parts)
            if len(text.encode()) > budget:
                text = text.encode()[:budget].decode(errors="ignore") + "\n[… truncated at the size cap]"
            parts.append(f"--- {path} ---\n{text}")
            used += len(text.encode())
            break
    return "\n\n".join(parts)


def commands_in(agents_md: str) -> tuple[str, ...]:
    """Commands an AGENTS.md names in backticks or code blocks, so runs of them count as checks."""
    found = re.findall(r"`([^`\n]{2,120})`", agents_md)
    return tuple(sorted({f.strip() for f in found if " " in f.strip() or f.strip().isalpha()}))
