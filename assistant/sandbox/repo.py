"""Cloning the job's repository on the host into its workspace directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .base import AGENT_GID, AGENT_UID, RepoError

_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.IGNORECASE)
# The workspace belongs to the sandbox user, so host-side git must not refuse it as "dubious ownership".
HOST_GIT = ["git", "-c", "safe.directory=*"]
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true"}


def is_url(repo: str) -> bool:
    return bool(_URL.match(repo))


def repo_identity(repo: str) -> str:
    """A stable name for the repository, without credentials, for cache keys."""
    if is_url(repo):
        return re.sub(r"://[^/@]*@", "://", repo.strip()).rstrip("/")
    return str(Path(repo).expanduser().resolve())


def host_git(workspace: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
             text: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [*HOST_GIT, "-C", str(workspace), *args],
        capture_output=True, text=text, env={**os.environ, **_GIT_ENV, **(env or {})},
    )
    if check and completed.returncode != 0:
        stderr = completed.stderr if text else completed.stderr.decode(errors="replace")
        raise RepoError(f"git {' '.join(args[:2])} failed in {workspace}: {stderr.strip()[-400:]}")
    return completed


def clone_into(repo: str, ref: str | None, dest: Path) -> str:
    """Clone repo (a local path or a git URL) at ref into dest; returns the commit checked out."""
    import git

    source = _source(repo)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Copies, not hard links: the clone is chowned to the sandbox user and must not touch the original.
        cloned = git.Repo.clone_from(source, dest, env=_GIT_ENV, no_hardlinks=True,
                                     **({} if is_url(repo) else {"local": True}))
    except git.GitCommandError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise RepoError(f"could not clone {repo}: {_git_stderr(exc)}. Check the URL or path and your access to it.") from exc
    try:
        if ref:
            _checkout(cloned, ref, repo)
        if not cloned.head.is_valid():
            raise RepoError(f"{repo} has no commits yet; commit something first")
        commit = cloned.head.commit.hexsha
    except Exception:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        cloned.close()
    own_for_sandbox(dest)
    return commit


def _source(repo: str) -> str:
    if is_url(repo):
        return repo
    path = Path(repo).expanduser()
    if not path.exists():
        raise RepoError(f"the repository path {repo} does not exist; give an existing directory or a git URL")
    if not path.is_dir():
        raise RepoError(f"{repo} is a file, not a repository directory")
    probe = subprocess.run([*HOST_GIT, "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RepoError(f"{repo} is not a git repository; run `git init && git add -A && git commit -m init` in it first")
    return str(path.resolve())


def _checkout(cloned, ref: str, repo: str) -> None:
    import git

    try:
        cloned.git.checkout(ref)
        return
    except git.GitCommandError:
        pass
    try:
        # A tag, branch or commit that the default clone did not fetch (e.g. a PR ref).
        cloned.git.fetch("origin", ref)
        cloned.git.checkout("FETCH_HEAD")
    except git.GitCommandError as exc:
        branches = sorted({r.remote_head for r in cloned.remotes.origin.refs if r.remote_head != "HEAD"})
        shown = ", ".join(branches[:10]) or "none"
        raise RepoError(f"the ref {ref!r} does not exist in {repo} (branches: {shown}); name a branch, tag or commit") from exc


def _git_stderr(exc) -> str:
    text = (getattr(exc, "stderr", "") or str(exc)).strip()
    text = re.sub(r"^stderr: ", "", text).strip().strip("'").strip()
    return text.splitlines()[-1] if text else str(exc)


def own_for_sandbox(path: Path) -> None:
    """Give the tree to the sandbox user (uid 1000) so the agent can write it; a no-op unless root."""
    if os.geteuid() != 0:
        return
    os.chown(path, AGENT_UID, AGENT_GID)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), AGENT_UID, AGENT_GID)
