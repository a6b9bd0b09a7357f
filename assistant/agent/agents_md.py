"""AGENTS.md discovery, merged the way Codex does: from the repository root down to the working
directory, deeper files later (so they win where they disagree), capped in size."""
from __future__ import annotations

from pathlib import Path

NAMES = ("AGENTS.override.md", "AGENTS.md")
MAX_BYTES = 32 * 1024


def discover_agents_md(root: Path, workdir: str = "", max_bytes: int = MAX_BYTES) -> str:
    root = Path(root).resolve()
    target = (root / workdir).resolve() if workdir else root
    if not target.is_relative_to(root):
        target = root
    dirs = [root] + [root.joinpath(*target.relative_to(root).parts[:i + 1])
                     for i in range(len(target.relative_to(root).parts))]
    parts: list[str] = []
    used = 0
    for d in dirs:
        for name in NAMES:  # an override replaces the plain file of the same folder
            path = d / name
            if path.is_file() and path.resolve().is_relative_to(root):
                text = path.read_text(errors="replace").strip()
                rel = path.relative_to(root).as_posix()
                budget = max_bytes - used
                if budget <= 0:
                    return "\n\n".join(parts)
                if len(text.encode()) > budget:
                    text = text.encode()[:budget].decode(errors="ignore") + "\n[… truncated at the size cap]"
                parts.append(f"--- {rel} ---\n{text}")
                used += len(text.encode())
                break
    return "\n\n".join(parts)


def commands_in(agents_md: str) -> tuple[str, ...]:
    """Commands an AGENTS.md names in backticks or code blocks, so runs of them count as checks."""
    import re
    found = re.findall(r"`([^`\n]{2,120})`", agents_md)
    return tuple(sorted({f.strip() for f in found if " " in f.strip() or f.strip().isalpha()}))
