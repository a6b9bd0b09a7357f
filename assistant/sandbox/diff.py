"""The job's result: the agent's change, computed inside the sandbox (guest/workspace_ops.diff, asked for through
workspace.Workspace.diff) and received as data.

The host only decodes bytes and rewrites text here; it never runs git on, or opens, the workspace.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

# Git writes the forward and the reverse payload, each "literal|delta N", base85 lines, a blank line.
_BINARY_SECTION = re.compile(rb"^GIT binary patch\n(?:(?:literal|delta) \d+\n.*?\n\n){1,2}", re.S | re.M)


@dataclass
class WorkspaceDiff:
    display: str  # readable; binary files are named, not dumped
    patch: str  # `git apply`-able on the base commit, binary files included (exact when the text is UTF-8)
    files: list[tuple[str, str]] = field(default_factory=list)  # (status, path); a rename reads "old -> new"
    patch_bytes: bytes = b""  # the patch exactly, for files in other encodings
    omitted: list[dict] = field(default_factory=list)  # files over the size cap: path, size, sha256
    truncated: bool = False  # the patch stops before the last files (the patch cap)
    total_bytes: int = 0  # the whole patch's size, had it not been cut
    setup_excluded: list[str] = field(default_factory=list)  # paths setup changed, left out of the diff

    @property
    def empty(self) -> bool:
        return not self.files and not self.omitted

    def notes(self) -> list[str]:
        """What a reviewer must know about what the diff does not show."""
        notes = [f"{item['path']}: {item['size']:,} bytes, sha256 {item['sha256']} — over the size cap, "
                 "listed but not included" for item in self.omitted]
        if self.truncated:
            notes.append(f"the patch was truncated at the patch size cap ({self.total_bytes:,} bytes in all); "
                         "the last files are missing from it")
        return notes


def from_sandbox(result: dict[str, Any]) -> WorkspaceDiff:
    patch = base64.b64decode(result.get("patch_b64") or "")
    return WorkspaceDiff(
        display=readable(patch, result),
        patch=patch.decode("utf-8", "replace"),
        files=[(status, path) for status, path in result.get("files") or []],
        patch_bytes=patch,
        omitted=list(result.get("omitted") or []),
        truncated=bool(result.get("truncated")),
        total_bytes=int(result.get("total_bytes") or len(patch)),
        setup_excluded=list(result.get("setup_excluded") or []),
    )


def readable(patch: bytes, result: dict[str, Any] | None = None) -> str:
    """The patch as a person reads it: binary payloads replaced by a line that names them."""
    text = _BINARY_SECTION.sub(b"Binary files differ\n", patch).decode("utf-8", "replace")
    result = result or {}
    if result.get("truncated"):
        text += f"\n[… patch truncated: {int(result.get('total_bytes') or 0):,} bytes in all, over the patch cap …]\n"
    for item in result.get("omitted") or []:
        text += (f"\n[omitted: {item['path']} — {item['size']:,} bytes, sha256 {item['sha256']}; "
                 "over the per-file size cap]\n")
    return text
