"""The repository a job starts from, prepared on the host from sources no job ever touched.

The host keeps one bare mirror per repository (a local path or a git URL) under <data dir>/mirrors. Host
git only ever runs there — in a directory that no setup command or agent has written — and what goes into
the sandbox is a git bundle streamed through the command server; the workspace itself is created inside
the sandbox. Setup detection reads files from the mirror too, so the setup cache can be consulted before
any sandbox exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .base import RepoError

_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.IGNORECASE)
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true", "LC_ALL": "C"}
SOURCE_HEAD = "refs/assistant/source-head"


def is_url(repo: str) -> bool:
    return bool(_URL.match(repo))


def repo_identity(repo: str) -> str:
    """A stable name for the repository, without credentials, for cache keys."""
    if is_url(repo):
        return re.sub(r"://[^/@]*@", "://", repo.strip()).rstrip("/")
    return str(Path(repo).expanduser().resolve())


def _display(repo: str) -> str:
    return re.sub(r"://[^/@]*@", "://", repo)


def _git(args: list[str], cwd: Path | None = None, check: bool = True, text: bool = True,
         input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
    completed = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=text and input_bytes is None,
                               input=input_bytes, env={**os.environ, **_GIT_ENV})
    if check and completed.returncode != 0:
        stderr = completed.stderr if isinstance(completed.stderr, str) else completed.stderr.decode(errors="replace")
        raise RepoError(f"git {args[0]} failed: {_last_line(stderr)}")
    return completed


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if line.lower().startswith(("fatal:", "error:"))] or lines
    return re.sub(r"^(fatal|error): ", "", meaningful[-1]).strip().strip("'") if meaningful else "no details"


@dataclass
class RepoSource:
    """A commit of the repository, ready to go into a sandbox."""

    repo: str
    mirror: Path
    commit: str
    branch: str | None      # the local branch to check out, or None for a detached commit

    @property
    def origin(self) -> str:
        return _display(self.repo) if is_url(self.repo) else str(Path(self.repo).expanduser().resolve())

    def read(self, path: str) -> str | None:
        """A file of the commit, read from the mirror (never from a workspace)."""
        completed = _git(["cat-file", "blob", f"{self.commit}:{path}"], cwd=self.mirror, check=False, text=False)
        return completed.stdout.decode("utf-8", "replace") if completed.returncode == 0 else None

    def top_level(self) -> list[str]:
        """Names at the top of the commit's tree, directories with a trailing slash."""
        listed = _git(["ls-tree", "-z", self.commit], cwd=self.mirror).stdout
        names = []
        for record in listed.split("\0"):
            if record:
                meta, _, name = record.partition("\t")
                names.append(name + "/" if meta.split()[1] == "tree" else name)
        return names

    @contextmanager
    def bundle(self, name: str):
        """A bundle file holding the commit (and its history) under a ref named for the job."""
        ref = f"refs/assistant/jobs/{re.sub(r'[^A-Za-z0-9_.-]', '-', name)}"
        with _locked(self.mirror), tempfile.TemporaryDirectory(prefix="bundle-") as scratch:
            path = Path(scratch) / "repo.bundle"
            _git(["update-ref", ref, self.commit], cwd=self.mirror)
            try:
                _git(["bundle", "create", "-q", str(path), ref], cwd=self.mirror)
            finally:
                _git(["update-ref", "-d", ref], cwd=self.mirror, check=False)
            yield path, ref


def mirror_lock_path(mirror: Path) -> Path:
    return mirror.with_name(mirror.name + ".lock")


@contextmanager
def _locked(mirror: Path):
    """The mirror's lock, held exclusively; its mtime is the mirror's last use (retention reads it).
    Retention unlinks the lock file of a mirror it removed while holding it, so a lock won on a file that is
    no longer the one at the path is stale: lock the new file."""
    lock_path = mirror_lock_path(mirror)
    while True:
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(lock.fileno()).st_ino:
                os.utime(lock.fileno())
                yield
                return


def mirror_path(repo: str, data_dir: Path) -> Path:
    key = hashlib.sha256(repo_identity(repo).encode()).hexdigest()[:16]
    return Path(data_dir) / "mirrors" / f"{key}.git"


def prepare_source(repo: str, ref: str | None, data_dir: Path) -> RepoSource:
    """Bring the host mirror up to date with the repository and resolve ref (default: its HEAD)."""
    source = _source(repo)
    mirror = mirror_path(repo, data_dir)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with _locked(mirror):
        if not (mirror / "HEAD").exists():
            completed = _git(["clone", "--bare", "--quiet", "--no-hardlinks", source, str(mirror)], check=False)
            if completed.returncode != 0:
                _remove_tree(mirror)
                raise RepoError(f"could not clone {_display(repo)}: {_last_line(completed.stderr)}. "
                                "Check the URL or path and your access to it.")
        fetched = _git(["fetch", "--quiet", "--prune", "--force", source, "+refs/heads/*:refs/heads/*",
                        "+refs/tags/*:refs/tags/*", f"+HEAD:{SOURCE_HEAD}"], cwd=mirror, check=False)
        if fetched.returncode != 0:
            if "couldn't find remote ref HEAD" in fetched.stderr or "bad object" in fetched.stderr.lower():
                raise RepoError(f"{_display(repo)} has no commits yet; commit something first")
            raise RepoError(f"could not fetch {_display(repo)}: {_last_line(fetched.stderr)}. "
                            "Check the URL or path and your access to it.")
        commit, branch = _resolve(mirror, source, repo, ref)
    return RepoSource(repo=repo, mirror=mirror, commit=commit, branch=branch)


def _resolve(mirror: Path, source: str, repo: str, ref: str | None) -> tuple[str, str | None]:
    if not ref:
        head = _git(["symbolic-ref", "--short", "-q", "HEAD"], cwd=mirror, check=False).stdout.strip()
        commit = _git(["rev-parse", "--verify", "-q", f"{SOURCE_HEAD}^{{commit}}"], cwd=mirror, check=False)
        if commit.returncode != 0:
            raise RepoError(f"{_display(repo)} has no commits yet; commit something first")
        return commit.stdout.strip(), head or None
    for candidate, branch in ((f"refs/heads/{ref}", ref), (f"refs/tags/{ref}", None), (ref, None)):
        found = _git(["rev-parse", "--verify", "-q", f"{candidate}^{{commit}}"], cwd=mirror, check=False)
        if found.returncode == 0:
            return found.stdout.strip(), branch
    # A ref the mirror does not carry (a pull request's ref, say): ask the repository itself.
    fetched = _git(["fetch", "--quiet", source, ref], cwd=mirror, check=False)
    if fetched.returncode == 0:
        return _git(["rev-parse", "FETCH_HEAD^{commit}"], cwd=mirror).stdout.strip(), None
    listed = _git(["for-each-ref", "--format=%(refname:short)", "refs/heads"], cwd=mirror, check=False).stdout.split()
    shown = ", ".join(sorted(listed)[:10]) or "none"
    raise RepoError(f"the ref {ref!r} does not exist in {_display(repo)} (branches: {shown}); "
                    "name a branch, tag or commit")


def _source(repo: str) -> str:
    if is_url(repo):
        return repo
    path = Path(repo).expanduser()
    if not path.exists():
        raise RepoError(f"the repository path {repo} does not exist; give an existing directory or a git URL")
    if not path.is_dir():
        raise RepoError(f"{repo} is a file, not a repository directory")
    probe = _git(["-C", str(path), "rev-parse", "--git-dir"], check=False)
    if probe.returncode != 0:
        raise RepoError(f"{repo} is not a git repository; run `git init && git add -A && git commit -m init` in it first")
    return str(path.resolve())


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def review_range(repo: str, base_ref: str, head_ref: str, data_dir: Path) -> tuple[str, str]:
    """(base, head) commits of a branch review: the head's commit and where it forked from the base (their merge
    base, as a pull request's diff has it). Runs in the bare mirror, which no job writes."""
    head = prepare_source(repo, head_ref, data_dir)
    with _locked(head.mirror):
        base_commit, _branch = _resolve(head.mirror, _source(repo), repo, base_ref)
        fork = _git(["merge-base", base_commit, head.commit], cwd=head.mirror, check=False)
    if fork.returncode != 0:
        raise RepoError(f"{base_ref!r} and {head_ref!r} share no history in {_display(repo)}; "
                        "name a base the head branched from")
    return fork.stdout.strip(), head.commit
