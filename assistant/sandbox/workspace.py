"""The host's typed view of a sandbox's workspace: each operation runs inside the sandbox, as the sandbox user
(sandbox/guest/workspace_ops.py, through the command server), and comes back as a dataclass.

This is the one module that names a guest function; everything else on the host asks `Workspace`.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

from .base import Sandbox
from .diff import WorkspaceDiff, from_sandbox

CITED_FILE_MAX_BYTES = 2_000_000


@dataclass(frozen=True)
class SetupChanges:
    """What setup changed, left out of the job's diff: new untracked entries, and tracked files setup modified
    (path -> object id after setup)."""
    created: list[str] = field(default_factory=list)
    modified: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The form the setup cache and the diff operation keep."""
        return {"created": list(self.created), "modified": dict(self.modified)}


@dataclass(frozen=True)
class FileTexts:
    """Text of workspace files; None for one that is missing, not a regular file, or outside the workspace.
    `sizes` is each file's full size, so a capped text can be marked as such."""
    texts: dict[str, str | None]
    sizes: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PatchResult:
    ok: bool
    summary: str = ""      # what changed, one line a file (when it applied)
    error: str = ""        # why nothing changed (when it did not)


class Workspace:
    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    def clone(self, bundle: str, ref: str, commit: str, branch: str | None = None, origin: str | None = None) -> str:
        """Create the workspace from a git bundle already put into the sandbox; check out `commit`."""
        return self.sandbox.call("clone", bundle=bundle, ref=ref, commit=commit, branch=branch,
                                 origin=origin)["commit"]

    def snapshot(self, base: str) -> SetupChanges:
        """What setup changed since `base` (the diff leaves it out)."""
        reply = self.sandbox.call("snapshot", base=base)
        return SetupChanges(list(reply.get("created") or []), dict(reply.get("modified") or {}))

    def diff(self, base: str, setup: dict | None = None, *, file_cap: int = 5_000_000,
             patch_cap: int = 20_000_000) -> WorkspaceDiff:
        """Everything changed since `base`, less what setup changed."""
        return from_sandbox(self.sandbox.call("diff", base=base, setup=setup, file_cap=file_cap, patch_cap=patch_cap))

    def read_files(self, paths, max_bytes: int = CITED_FILE_MAX_BYTES) -> FileTexts:
        paths = list(paths)
        if not paths:
            return FileTexts({}, {})
        reply = self.sandbox.call("read_files", paths=paths, max_bytes=max_bytes)
        return FileTexts(reply["texts"], reply.get("sizes") or {})

    def apply_patch(self, patch: str) -> PatchResult:
        """The agent's patch (the Codex grammar), all hunks or none."""
        reply = self.sandbox.call("apply_patch", patch=patch)
        return PatchResult(bool(reply["ok"]), reply.get("summary") or "", reply.get("error") or "")

    def apply_parent_patch(self, patch: str) -> PatchResult:
        """A follow-up job's start: its parent's `git apply`-able patch."""
        reply = self.sandbox.call("apply_parent_patch", patch_b64=base64.b64encode(patch.encode()).decode())
        return PatchResult(bool(reply["ok"]), "", reply.get("error") or "")


    def apply_start_patch(self, patch: str, message: str) -> PatchResult:
        """The user's uncommitted changes, applied after the clone and committed (the summary is the new commit)."""
        reply = self.sandbox.call("apply_start_patch", patch_b64=base64.b64encode(patch.encode()).decode(),
                                  message=message)
        return PatchResult(bool(reply["ok"]), reply.get("commit") or "", reply.get("error") or "")

    # A review's two sides: the tracked files at the head or at the base, and its proof tests written and removed.
    def checkout_commit(self, commit: str) -> str:
        return self.sandbox.call("checkout_commit", commit=commit)["commit"]

    def tracked_in(self, commit: str, paths) -> list[str]:
        return list(self.sandbox.call("tracked_in", commit=commit, paths=list(paths))["tracked"])

    def write_text(self, path: str, text: str) -> None:
        self.sandbox.call("write_text", path=path, text=text)

    def remove_file(self, path: str) -> None:
        self.sandbox.call("remove_file", path=path)



def workspace_diff(sandbox: Sandbox, base_commit: str, setup_changes: dict | None = None, *,
                   file_cap: int = 5_000_000, patch_cap: int = 20_000_000) -> WorkspaceDiff:
    """Everything the job changed since base_commit, less what setup changed, computed in the sandbox."""
    return Workspace(sandbox).diff(base_commit, setup_changes, file_cap=file_cap, patch_cap=patch_cap)
