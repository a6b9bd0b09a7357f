"""Which repositories a conversation, a job or a CLI call may name: the one place that decides.

With one possible user the host is theirs: any local path will do. With several (more than one password
user, or a trusted proxy header) a local path is allowed only under ASSISTANT_REPO_ROOTS, so one user
cannot read another's files or the host's through quick answers, citations or jobs. Either way the data
dir (the database, the generated admin password, other jobs' artifacts) is never a repository.

Paths are judged after resolving symlinks and `..`, and again at every use, not only when set: a link
swapped after the check does not widen what can be read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .config import Settings

REMOTE_SCHEMES = ("https", "http", "ssh", "git")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:(?!//)")  # git@host:org/repo.git


class RepoNotAllowed(ValueError):
    """The repository may not be used here; the message says why and what to do."""


def is_url(repo: str) -> bool:
    return "://" in repo or bool(_SCP_LIKE.match(repo))


def local_path_of(repo: str) -> str | None:
    """The host path a repository names (a plain path or a file:// URL), or None for a remote URL."""
    if repo.startswith("file://"):
        return unquote(urlparse(repo).path)
    return None if is_url(repo) else repo


def multi_user(settings: Settings) -> bool:
    return bool(settings.header_auth) or len(settings.user_passwords()) > 1


def repo_roots(settings: Settings) -> tuple[Path, ...]:
    raw = settings.repo_roots or ""
    return tuple(Path(part).expanduser().resolve() for part in raw.split(":") if part.strip())


@dataclass(frozen=True)
class RepoPolicy:
    data_dir: Path
    roots: tuple[Path, ...] = ()
    restricted: bool = False      # several users: local paths only under `roots`

    @classmethod
    def from_settings(cls, settings: Settings) -> "RepoPolicy":
        return cls(data_dir=Path(settings.data_dir).expanduser().resolve(), roots=repo_roots(settings),
                   restricted=multi_user(settings))

    def check(self, repo: str) -> str:
        """The repository as given, if it may be used; RepoNotAllowed otherwise."""
        repo = (repo or "").strip()
        if not repo:
            raise RepoNotAllowed("no repository given: set a local path or a git URL")
        path = local_path_of(repo)
        if path is None:
            self._check_remote(repo)
        else:
            self.check_path(path, shown=repo)
        return repo

    def check_path(self, path: str | Path, shown: str | None = None) -> Path:
        """The resolved local path, if a repository may live there."""
        shown = shown or str(path)
        resolved = Path(path).expanduser().resolve()
        if resolved.is_relative_to(self.data_dir):
            raise RepoNotAllowed(f"{shown} is inside the assistant's data directory, which is never a repository; "
                                 "name the project's own directory")
        if not self.restricted:
            return resolved
        if self.data_dir.is_relative_to(resolved):
            raise RepoNotAllowed(f"{shown} contains the assistant's data directory; name the project's own directory")
        if not self.roots:
            raise RepoNotAllowed("local repositories are turned off on this multi-user server (ASSISTANT_REPO_ROOTS "
                                 "is not set); use a git URL, or ask the administrator to set ASSISTANT_REPO_ROOTS")
        if not any(resolved.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise RepoNotAllowed(f"{shown} is outside the directories repositories may come from ({allowed}; "
                                 "ASSISTANT_REPO_ROOTS); name a directory under one of them, or a git URL")
        return resolved

    @staticmethod
    def _check_remote(repo: str) -> None:
        if _SCP_LIKE.match(repo):
            return
        scheme = urlparse(repo).scheme.lower()
        if scheme not in REMOTE_SCHEMES:
            raise RepoNotAllowed(f"{repo}: unsupported URL scheme {scheme!r}; use https://, ssh://, git:// or "
                                 "git@host:path, or a local path")

    def may_read(self, root: Path, target: Path) -> bool:
        """Whether a file or directory under a repository's root may be read: not the data dir, unless the
        root itself lives there (a checkout of a git URL in the cache)."""
        target = target.resolve()
        return not target.is_relative_to(self.data_dir) or root.resolve().is_relative_to(self.data_dir)
