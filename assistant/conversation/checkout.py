"""The host-side checkout quick answers read: a local path as it is, a git URL cloned once into the cache.

Both pass the repository policy (assistant.access) first, at every use: what was allowed when the
setting was saved may not be any more (a swapped symlink, a changed ASSISTANT_REPO_ROOTS).

A URL's checkout lives in <data_dir>/checkouts/<key> beside a lock file <key>.lock. Readers hold the lock
shared for as long as they read (and touch it: its mtime is the checkout's last use); retention removes a
checkout only when it gets that lock exclusively, so it never pulls one from under an answer. The flocks
work between processes (`assistant gc` beside the server) and between threads alike.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import git

from ..access import RepoNotAllowed, RepoPolicy, is_url

CHECKOUTS_DIR = "checkouts"
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true"}
REACH_TIMEOUT_S = 20

__all__ = ["CheckoutError", "reading_checkout", "checkout_dir", "check_repository", "clean_git_error",
           "existing_checkout", "is_url", "lock_path", "clone_lock_path", "locked", "CHECKOUTS_DIR"]


class CheckoutError(RuntimeError):
    pass


def checkout_dir(repo: str, ref: str | None, cache_dir: Path) -> Path:
    """Where the clone of a git URL at a ref lives in the cache (whether or not it exists yet)."""
    key = hashlib.sha256(f"{repo}@{ref or ''}".encode()).hexdigest()[:16]
    return Path(cache_dir) / CHECKOUTS_DIR / key


def lock_path(checkout: Path) -> Path:
    """Held shared by readers, exclusively by retention while it removes the checkout."""
    return checkout.with_name(checkout.name + ".lock")


def clone_lock_path(checkout: Path) -> Path:
    """Held exclusively while the checkout is being cloned, so that two readers do not clone it twice."""
    return checkout.with_name(checkout.name + ".clone-lock")


def clean_git_error(stderr: str, *scrub: str) -> str:
    """What git said went wrong, without progress lines, server paths or quotes: one readable sentence."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    wanted = [ln for ln in lines if re.match(r"^(fatal|error|remote):", ln, re.I)] or lines[-1:]
    text = "; ".join(re.sub(r"^(fatal|error|remote):\s*", "", ln, flags=re.I).rstrip(".") for ln in wanted)
    for secret in scrub:
        if secret:
            text = text.replace(secret, "the cache")
    text = re.sub(r"'([^']*)'|\"([^\"]*)\"", lambda m: m.group(1) or m.group(2) or "", text).strip().rstrip(".")
    return text[:300] or "git gave no reason"


def _checked_path(repo: str, policy: RepoPolicy) -> Path:
    path = policy.check_path(repo)
    if not path.is_dir():
        raise CheckoutError(f"the repository path {repo} does not exist or is not a directory; "
                            "check the path in the chat settings")
    return path


def check_repository(repo: str, policy: RepoPolicy) -> str:
    """For the settings panel: the repository may be used and is there (a directory, or a git URL that
    answers). Raises CheckoutError or RepoNotAllowed with a message for the user."""
    repo = policy.check(repo)
    if not is_url(repo):
        _checked_path(repo, policy)
        return repo
    try:
        proc = subprocess.run(["git", "ls-remote", "--exit-code", repo, "HEAD"], capture_output=True, text=True,
                              timeout=REACH_TIMEOUT_S, env={**os.environ, **_GIT_ENV})
    except subprocess.TimeoutExpired:
        raise CheckoutError(f"{repo} did not answer within {REACH_TIMEOUT_S} s; check the URL") from None
    if proc.returncode not in (0, 2):  # 2: reachable, but HEAD is not set (an empty repository)
        raise CheckoutError(f"cannot reach {repo}: {clean_git_error(proc.stderr)}")
    return repo


@contextmanager
def reading_checkout(repo: str, ref: str | None, cache_dir: Path, policy: RepoPolicy) -> Iterator[Path]:
    """A read-only view of the repository for answering questions (never written by answers), kept from
    retention until the block ends."""
    if not repo:
        raise CheckoutError("this conversation has no repository yet: set one in the chat settings "
                            "(a local path or a git URL)")
    try:
        repo = policy.check(repo)
        local = None if is_url(repo) else _checked_path(repo, policy)
    except RepoNotAllowed as exc:
        raise CheckoutError(str(exc)) from None
    if local is not None:
        yield local
        return
    dest = checkout_dir(repo, ref, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(lock_path(dest), fcntl.LOCK_SH) as reading:
        if not (dest / ".git").is_dir():
            with locked(clone_lock_path(dest), fcntl.LOCK_EX):
                if not (dest / ".git").is_dir():
                    _clone(repo, ref, dest)
        os.utime(reading.fileno())
        yield dest


def existing_checkout(repo: str, ref: str | None, cache_dir: Path, policy: RepoPolicy) -> Path | None:
    """The checkout answers read, if the policy allows it and it is there; never clones (for links to cited lines)."""
    repo = policy.check(repo)
    if not is_url(repo):
        path = policy.check_path(repo)
        return path if path.is_dir() else None
    dest = checkout_dir(repo, ref, cache_dir)
    return dest if (dest / ".git").is_dir() else None


@contextmanager
def locked(path: Path, mode: int) -> Iterator[IO[str]]:
    """The lock file at `path`, flocked with `mode`. Retention unlinks the lock files of a checkout it
    removed, so a lock won on a file that is no longer the one at `path` is stale: lock the new file."""
    while True:
        handle = open(path, "a+")
        fcntl.flock(handle, mode)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    try:
        yield handle
    finally:
        handle.close()


def _clone(repo: str, ref: str | None, dest: Path) -> None:
    try:
        cloned = git.Repo.clone_from(repo, dest, no_checkout=ref is not None, env=_GIT_ENV)
        if ref:
            cloned.git.checkout(ref)
    except git.GitCommandError as exc:
        shutil.rmtree(dest, ignore_errors=True)  # a clone without its ref must not pass for a good one later
        at = f" at {ref}" if ref else ""
        raise CheckoutError(f"cannot clone {repo}{at}: {clean_git_error(str(exc.stderr or exc), str(dest))}; "
                            "check the repository and ref in the chat settings") from exc
