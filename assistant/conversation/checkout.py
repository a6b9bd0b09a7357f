"""The host-side checkout quick answers read: a local path as it is, a git URL cloned once into the cache."""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import git

_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


class CheckoutError(RuntimeError):
    pass


def is_url(repo: str) -> bool:
    return "://" in repo or repo.startswith("git@")


def checkout_for(repo: str, ref: str | None, cache_dir: Path) -> Path:
    """A read-only view of the repository for answering questions (never written by answers)."""
    if not repo:
        raise CheckoutError("this conversation has no repository yet: set one in the chat settings "
                            "(a local path or a git URL)")
    if not is_url(repo):
        path = Path(repo).expanduser()
        if not path.is_dir():
            raise CheckoutError(f"the repository path {repo} does not exist or is not a directory; "
                                "check the path in the chat settings")
        return path.resolve()
    key = hashlib.sha256(f"{repo}@{ref or ''}".encode()).hexdigest()[:16]
    dest = cache_dir / "checkouts" / key
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if (dest / ".git").is_dir():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            cloned = git.Repo.clone_from(repo, dest, no_checkout=ref is not None)
            if ref:
                cloned.git.checkout(ref)
        except git.GitCommandError as exc:
            raise CheckoutError(f"cannot clone {repo}{' at ' + ref if ref else ''}: "
                                f"{exc.stderr.strip() or exc}") from exc
        return dest
