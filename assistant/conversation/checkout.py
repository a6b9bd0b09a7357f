"""The host-side checkout quick answers read: a local path as it is, a git URL cloned once into the cache.

A URL's checkout lives in <data_dir>/checkouts/<key> beside a lock file <key>.lock. Readers hold the lock
shared for as long as they read (and touch it: its mtime is the checkout's last use); retention removes a
checkout only when it gets that lock exclusively, so it never pulls one from under an answer. The flocks
work between processes (`assistant gc` beside the server) and between threads alike.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import git

CHECKOUTS_DIR = "checkouts"


class CheckoutError(RuntimeError):
    pass


def is_url(repo: str) -> bool:
    return "://" in repo or repo.startswith("git@")


def lock_path(checkout: Path) -> Path:
    """Held shared by readers, exclusively by retention while it removes the checkout."""
    return checkout.with_name(checkout.name + ".lock")


def clone_lock_path(checkout: Path) -> Path:
    """Held exclusively while the checkout is being cloned, so that two readers do not clone it twice."""
    return checkout.with_name(checkout.name + ".clone-lock")


@contextmanager
def reading_checkout(repo: str, ref: str | None, cache_dir: Path) -> Iterator[Path]:
    """A read-only view of the repository for answering questions (never written by answers), kept from
    retention until the block ends."""
    if not repo:
        raise CheckoutError("this conversation has no repository yet: set one in the chat settings "
                            "(a local path or a git URL)")
    if not is_url(repo):
        path = Path(repo).expanduser()
        if not path.is_dir():
            raise CheckoutError(f"the repository path {repo} does not exist or is not a directory; "
                                "check the path in the chat settings")
        yield path.resolve()
        return
    key = hashlib.sha256(f"{repo}@{ref or ''}".encode()).hexdigest()[:16]
    dest = cache_dir / CHECKOUTS_DIR / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(lock_path(dest), fcntl.LOCK_SH) as reading:
        if not (dest / ".git").is_dir():
            with locked(clone_lock_path(dest), fcntl.LOCK_EX):
                if not (dest / ".git").is_dir():
                    _clone(repo, ref, dest)
        os.utime(reading.fileno())
        yield dest


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
        cloned = git.Repo.clone_from(repo, dest, no_checkout=ref is not None)
        if ref:
            cloned.git.checkout(ref)
    except git.GitCommandError as exc:
        shutil.rmtree(dest, ignore_errors=True)  # a half clone would make every later clone fail
        raise CheckoutError(f"cannot clone {repo}{' at ' + ref if ref else ''}: "
                            f"{exc.stderr.strip() or exc}") from exc
