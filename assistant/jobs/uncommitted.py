"""Uncommitted changes in a local working copy, noticed when a job is created.

A job starts from a commit (the host mirror fetches the repository's commits, never its working tree), so what
the user changed but did not commit is not in the job's workspace. When the job starts from the commit the working
copy has checked out, that is said on the job (artifact UNCOMMITTED, shown on its card and by `assistant jobs
show`); asked to (JobRequest.include_uncommitted), the changes are taken as a patch (artifact START_PATCH, made by
git from the user's own working copy: `git diff HEAD` plus untracked files that are not ignored) that the sandbox
applies after cloning and before setup. The patch is data for `git apply` inside the sandbox; nothing on the host
interprets it.

Host git runs in the user's working copy only to read it (status, and a scratch index for the patch: the user's
index, files and branch are untouched).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..sandbox.repo import is_url
from .apply import START_PATCH

log = logging.getLogger(__name__)

UNCOMMITTED = "uncommitted"    # artifact: JSON {"commit", "files", "count", "included"}
MAX_PATCH_BYTES = 20_000_000
FILES_KEPT = 50                # names kept in the artifact (the count is exact)
FILES_SHOWN = 5                # names in the notice


class UncommittedError(ValueError):
    """The uncommitted changes cannot be taken along; the message says what to do."""


@dataclass(frozen=True)
class WorkingCopyChanges:
    commit: str                               # the commit checked out in the working copy (the job starts there)
    files: list[str] = field(default_factory=list)
    patch: str | None = None                  # the changes as a patch, when asked to include them

    def artifacts(self) -> dict[str, str]:
        """What the job keeps of them."""
        kept = {UNCOMMITTED: json.dumps({"commit": self.commit, "files": self.files[:FILES_KEPT],
                                         "count": len(self.files), "included": self.patch is not None})}
        if self.patch is not None:
            kept[START_PATCH] = self.patch
        return kept


def _git(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), "--no-optional-locks", "-c", "core.hooksPath=/dev/null",
                           "-c", "core.fsmonitor=false", *args],
                          capture_output=True, env={**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0",
                                                    **(env or {})}, timeout=300)


def _toplevel(repo: str) -> Path | None:
    if not repo or is_url(repo):
        return None
    path = Path(repo).expanduser()
    if not path.is_dir():
        return None
    done = _git(path, "rev-parse", "--show-toplevel")
    return Path(done.stdout.decode().strip()) if done.returncode == 0 and done.stdout.strip() else None


def _head(top: Path, ref: str | None) -> str | None:
    """The working copy's HEAD commit when the job starts from it (no ref, or a ref naming that commit)."""
    head = _git(top, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    if head.returncode != 0:
        return None
    commit = head.stdout.decode().strip()
    if ref:
        named = _git(top, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
        if named.returncode != 0 or named.stdout.decode().strip() != commit:
            return None
    return commit


def changed_files(top: Path) -> list[str]:
    """Tracked files changed since HEAD (staged or not) and untracked files that are not ignored."""
    done = _git(top, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none")
    if done.returncode != 0:
        raise UncommittedError(f"git status failed in {top}: {done.stderr.decode(errors='replace').strip()[:300]}")
    files: list[str] = []
    records = done.stdout.split(b"\0")
    index = 0
    while index < len(records):
        record = records[index]
        index += 1
        if len(record) < 4:
            continue
        status, path = record[:2], os.fsdecode(record[3:])
        if status[:1] in (b"R", b"C"):
            index += 1  # the rename's source follows
        if status != b"!!" and path not in files:
            files.append(path)
    return files


def capture_patch(top: Path) -> str:
    """The working copy's changes against HEAD, untracked files included, as a binary `git apply`-able patch;
    made in a scratch index (a copy of the user's), which `git add -A` fills."""
    with tempfile.TemporaryDirectory(prefix="assistant-uncommitted-") as scratch:
        index = Path(scratch) / "index"
        own = _git(top, "rev-parse", "--git-path", "index").stdout.decode().strip()
        own_path = Path(own) if os.path.isabs(own) else top / own
        env = {"GIT_INDEX_FILE": str(index)}
        if own_path.is_file():
            # copy2 keeps the index file's mtime: git trusts an entry's cached stat only when the file is older
            # than the index ("racy git"); a fresh mtime would hide an edit of the same size made within the
            # second of its last `git add`
            shutil.copy2(own_path, index)
        elif _git(top, "read-tree", "HEAD", env=env).returncode != 0:
            raise UncommittedError(f"could not read the last commit of {top}")
        added = _git(top, "add", "-A", env=env)
        if added.returncode != 0:
            raise UncommittedError(f"could not take the uncommitted changes of {top} "
                                   f"({added.stderr.decode(errors='replace').strip()[:300]}); commit them instead")
        done = _git(top, "diff-index", "--cached", "-p", "--binary", "--full-index", "--no-color", "HEAD", env=env)
    if done.returncode != 0:
        raise UncommittedError(f"could not make a patch of the uncommitted changes of {top}: "
                               f"{done.stderr.decode(errors='replace').strip()[:300]}")
    if len(done.stdout) > MAX_PATCH_BYTES:
        raise UncommittedError(f"the uncommitted changes of {top} make a {len(done.stdout) / 1e6:.0f} MB patch, "
                               f"over {MAX_PATCH_BYTES / 1e6:.0f} MB; commit them, or run the job without them")
    try:
        return done.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise UncommittedError(f"the uncommitted changes of {top} hold text that is not UTF-8; commit them, or run "
                               "the job without them") from None


def inspect(repo: str, ref: str | None, *, include: bool) -> WorkingCopyChanges | None:
    """The uncommitted changes of a local working copy the job starts from (None when it is not a local working
    copy, the job starts from another commit, or nothing is uncommitted). `include`: with them as a patch
    (UncommittedError when they cannot be taken)."""
    top = _toplevel(repo)
    if top is None:
        return None
    commit = _head(top, ref)
    if commit is None:
        return None
    try:
        files = changed_files(top)
    except UncommittedError:
        if include:
            raise
        log.warning("could not read the status of %s", top)
        return None
    if not files:
        return None
    return WorkingCopyChanges(commit, files, capture_patch(top) if include else None)


def read(store, job_id: str) -> dict | None:
    """The job's record of its working copy's uncommitted changes, or None."""
    text = store.get_artifact(job_id, UNCOMMITTED)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def notice_text(info: dict) -> str:
    """What the card and `assistant jobs show` say of them."""
    count = int(info.get("count") or len(info.get("files") or []))
    names = list(info.get("files") or [])[:FILES_SHOWN]
    shown = ", ".join(names) + ("…" if count > len(names) else "")
    files = f"{count} file{'s' if count != 1 else ''}"
    commit = str(info.get("commit") or "")[:12]
    if info.get("included"):
        return (f"Your working copy had uncommitted changes in {files} ({shown}); this job starts from commit "
                f"{commit} with them applied.")
    return (f"Your working copy has uncommitted changes in {files} ({shown}); this job starts from commit "
            f"{commit} without them.")
