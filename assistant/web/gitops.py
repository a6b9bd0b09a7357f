"""A job's patch committed on a new branch (Apply to the working copy is assistant/jobs/apply.py).

The branch is built with a scratch index (read-tree, apply --cached, commit-tree) so the user's
working copy, index and checked-out branch are never touched by it.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path


class GitOpError(RuntimeError):
    pass


def _git(repo: Path, *args: str, input: str | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], input=input, text=True, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=120)
    if proc.returncode != 0:
        raise GitOpError(f"git {args[0]} failed: {(proc.stderr or proc.stdout).strip()[:500]}")
    return proc.stdout


# Every refresh of a finished job's card asks whether its repository is a local working copy (for the Apply
# and Branch buttons): remembered per path while the directory and its .git look the same, at most a minute.
TOPLEVEL_TTL_S = 60.0
TOPLEVELS_KEPT = 256
_toplevels: dict[Path, tuple[tuple, float, Path | None]] = {}  # path -> (signature, when, answer)


def local_repo(repo: str | None) -> Path | None:
    """The repository as a local git working copy, or None for a URL or a plain directory."""
    if not repo:
        return None
    path = Path(repo).expanduser()
    known = _toplevels.get(path)
    if known is not None and time.monotonic() - known[1] < TOPLEVEL_TTL_S and known[0] == _signature(path, known[2]):
        return known[2]
    answer = _toplevel(path)
    if len(_toplevels) >= TOPLEVELS_KEPT:
        _toplevels.clear()
    _toplevels[path] = (_signature(path, answer), time.monotonic(), answer)
    return answer


def _toplevel(path: Path) -> Path | None:
    if not path.is_dir():
        return None
    try:
        return Path(_git(path, "rev-parse", "--show-toplevel").strip())
    except GitOpError:
        return None


def _signature(path: Path, toplevel: Path | None) -> tuple:
    """What changes when the directory is removed, replaced, made a repository or stops being one."""
    def stamp(p: Path) -> tuple[int, int] | None:
        try:
            st = p.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns
    return stamp(path), stamp(path / ".git"), stamp(toplevel / ".git") if toplevel else None


BRANCH_SLUG_CHARS = 40
SUBJECT_CHARS = 72


def branch_name_for(number: int, title: str) -> str:
    """assistant/job-<number>-<slug of the title's first line>, the slug cut at a word (at most 40 characters)."""
    first = clean_prose((title or "").strip().splitlines()[0] if (title or "").strip() else "")
    slug = re.sub(r"[^a-z0-9]+", "-", first.lower()).strip("-")
    if len(slug) > BRANCH_SLUG_CHARS:
        head = slug[:BRANCH_SLUG_CHARS]
        slug = head if slug[BRANCH_SLUG_CHARS] == "-" or "-" not in head else head.rsplit("-", 1)[0]
    return f"assistant/job-{number}-{slug.strip('-') or 'change'}"


# 【F:calc.py†L1-L2】, 【3fa9c1†L4-L9】 and any other 【…†…】 token (a malformed one too).
_FILE_CITATION = re.compile(r"【F:([^†】]+)†L(\d+)(?:-L?(\d+))?】")
_ANY_CITATION = re.compile(r"【[^】]*】")


def clean_prose(text: str) -> str:
    """Text with its citations rendered for a reader without the job's log: a file citation becomes
    "(calc.py:1-2)", a log citation (and any other 【…】 token) is dropped; no space is left before punctuation."""
    def file_ref(m: re.Match) -> str:
        start, end = m[2], m[3]
        return f"({m[1].strip()}:{start}{'-' + end if end and end != start else ''})"
    text = _FILE_CITATION.sub(file_ref, text or "")
    text = _ANY_CITATION.sub("", text)
    text = re.sub(r"[ \t]+([.,;:!?)])", r"\1", text)
    text = re.sub(r"\(\s*\)", "", text)
    return "\n".join(re.sub(r"[ \t]{2,}", " ", line).rstrip() for line in text.splitlines()).strip()


def commit_message_for(title: str, summary: str | None) -> str:
    """A commit message for a job's branch: a short subject (the title's first line, at most 72 characters, cut
    at a word), a blank line, then the summary as clean prose (citations rendered or dropped)."""
    first = (title or "").strip().splitlines()[0] if (title or "").strip() else ""
    subject = " ".join(clean_prose(first).split()) or "Change made by the assistant"
    if len(subject) > SUBJECT_CHARS:
        subject = subject[:SUBJECT_CHARS - 1].rsplit(" ", 1)[0].rstrip(" ,;:-—") + "…"
    body = re.sub(r"\n{3,}", "\n\n", clean_prose(summary or ""))
    return f"{subject}\n\n{body}" if body else subject


def create_branch(repo: Path, patch: str, *, base_commit: str, branch: str, message: str,
                  before: str | None = None) -> str:
    """A new branch at base_commit plus one commit holding the patch (after `before`: the uncommitted changes a
    job started from, which its patch is taken against); returns the commit id."""
    if _git_ok(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"):
        raise GitOpError(f"branch {branch} already exists")
    with tempfile.TemporaryDirectory(prefix="assistant-branch-") as scratch:
        env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        _git(repo, "read-tree", base_commit, env=env)
        for part in (before, patch):
            if part and part.strip():
                _git(repo, "apply", "--cached", "--whitespace=nowarn", "-", input=part, env=env)
        tree = _git(repo, "write-tree", env=env).strip()
        identity = {"GIT_AUTHOR_NAME": "assistant", "GIT_AUTHOR_EMAIL": "assistant@localhost",
                    "GIT_COMMITTER_NAME": "assistant", "GIT_COMMITTER_EMAIL": "assistant@localhost"}
        has_identity = _git_ok(repo, "config", "user.email")
        commit = _git(repo, "commit-tree", tree, "-p", base_commit, "-m", message,
                      env=env if has_identity else {**env, **identity}).strip()
    _git(repo, "update-ref", f"refs/heads/{branch}", commit, "0" * 40)
    return commit


def _git_ok(repo: Path, *args: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True).returncode == 0
