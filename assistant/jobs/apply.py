"""A job's change brought into the user's working copy, knowing what is there already.

A follow-up job starts from its parent's result, so its patch (taken against the commit it started from) holds
its parent's change too. Applying it after the parent was applied would fail on every hunk the parent made; so
Apply looks at the working copy first:

- the job's whole patch fits: it is applied (and says which earlier jobs' changes come with it);
- the job's change is there already: nothing is done, and it says so;
- an earlier job of the stack is there already (its patch reverses cleanly): only the difference between that
  job's result and this one's is applied. The difference is computed from the stored patches alone, in a scratch
  index (the base commit plus each patch, `git apply --cached`, then `git diff-tree` of the two trees), so the
  user's index, branch and files are untouched until the one `git apply` that changes them;
- anything else: a message naming the files that do not fit and what to do, never git's raw words.

Host git runs only in the user's own working copy, as the user's own Apply button asks; nothing here reads the
job's sandbox.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..domain.review import PROOFS_ARTIFACT
from ..store import Job, Store

MAX_STACK = 50  # ancestors looked at: a conversation's follow-ups, not an unbounded walk
START_PATCH = "uncommitted_patch"  # the artifact: the user's uncommitted changes a job started from (uncommitted.py)


class ApplyError(RuntimeError):
    """Nothing was changed; the message says why and what to do."""


@dataclass(frozen=True)
class Applied:
    message: str            # what happened, for the user
    stat: str = ""          # `git diff --stat` of the working copy afterwards ("" when nothing was applied)
    changed: bool = True    # False: the change was in the working copy already
    files: list[str] = field(default_factory=list)


def _git(repo: Path, *args: str, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
                           *args], input=input, text=True,
                          capture_output=True, env={**os.environ, "LC_ALL": "C", **(env or {})}, timeout=120)


def fits(repo: Path, patch: str, *, reverse: bool = False) -> tuple[bool, str]:
    """Whether the patch applies to the working copy (reverse: whether it is there and could be undone)."""
    done = _git(repo, "apply", "--check", "--whitespace=nowarn", *(["-R"] if reverse else []), "-", input=patch)
    return done.returncode == 0, done.stderr


def patch_files(patch: str) -> list[str]:
    """The paths a git patch touches, in order."""
    found = []
    for match in re.finditer(r"^diff --git a/(.+?) b/(.+)$", patch, re.MULTILINE):
        for path in (match[1], match[2]):
            if path not in found:
                found.append(path)
    return found


_FAILED = (re.compile(r"^error: patch failed: (.+):\d+$"),
           re.compile(r"^error: (.+?): (?:patch does not apply|already exists in working directory|"
                      r"No such file or directory|does not exist in index|does not match index|wrong type|"
                      r"already exists in index)$"))


def failed_files(stderr: str, patch: str) -> list[str]:
    """The files `git apply --check` refused, from its messages (all the patch's files when it names none)."""
    found: list[str] = []
    for line in stderr.splitlines():
        for pattern in _FAILED:
            match = pattern.match(line.strip())
            if match and match[1] not in found:
                found.append(match[1])
    return found or patch_files(patch)


def _tree(repo: Path, base: str, patches: list[str]) -> str | None:
    """The tree of `base` with the patches applied in order, built in a scratch index; None when one of them does
    not apply (or the base commit is not in this repository)."""
    with tempfile.TemporaryDirectory(prefix="assistant-apply-") as scratch:
        env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        if _git(repo, "read-tree", base, env=env).returncode != 0:
            return None
        for patch in patches:
            if patch.strip() and _git(repo, "apply", "--cached", "--whitespace=nowarn", "-", input=patch,
                                      env=env).returncode != 0:
                return None
        done = _git(repo, "write-tree", env=env)
        return done.stdout.strip() if done.returncode == 0 else None


def _delta(repo: Path, base: str, start: list[str], older: str, newer: str) -> str | None:
    """The newer patch relative to the older one's result (both taken against base plus `start`): what the newer
    job changed beyond the older; None when it cannot be computed."""
    older_tree = _tree(repo, base, start + [older])
    newer_tree = _tree(repo, base, start + [newer])
    if older_tree is None or newer_tree is None:
        return None
    done = _git(repo, "diff-tree", "-p", "--binary", "--full-index", "--no-color", "--no-ext-diff", "--no-textconv",
                older_tree, newer_tree)
    return done.stdout if done.returncode == 0 else None


def _ancestors(store: Store, job: Job) -> list[Job]:
    """The jobs this one follows, nearest first (stops at a loop or a missing row)."""
    found: list[Job] = []
    seen = {job.id}
    parent = job.parent_job_id
    while parent and parent not in seen and len(found) < MAX_STACK:
        seen.add(parent)
        try:
            row = store.get_job(parent)
        except LookupError:
            break
        found.append(row)
        parent = row.parent_job_id
    return found


def _names(jobs: list[Job]) -> str:
    numbers = [f"job {j.number}" for j in jobs]
    return numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1]


def conflict_message(job: Job, files: list[str]) -> str:
    shown = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    return (f"Job {job.number}'s change does not fit your working copy: {shown or 'its files'} "
            f"{'differs' if len(files) == 1 else 'differ'} from what the job started from (edits of yours, or "
            f"another change applied since). Nothing was changed. Commit or stash your changes and Apply again, "
            f"or use Create branch instead (a new branch from the job's starting commit; your working copy is left "
            f"alone).")


def _start(store: Store, job: Job) -> list[str]:
    """What the job's workspace had on top of its base commit before any parent's patch: the user's uncommitted
    changes, when the job was asked to include them."""
    patch = store.get_artifact(job.id, START_PATCH)
    return [patch] if patch and patch.strip() else []


def stack(store: Store, job: Job, repo: Path) -> list[tuple[Job, str]]:
    """The earlier jobs whose change the job's patch holds, nearest first, with their patches. A follow-up's
    sandbox applied its parent's patch (which holds the parent's own parent's, and so on) before the agent ran;
    whether it did is replayed here on the same base commit, so a parent whose patch did not apply there (and is
    not in the follow-up's patch) ends the stack."""
    held: list[tuple[Job, str]] = []
    holder = job
    for ancestor in _ancestors(store, job):
        patch = store.get_artifact(ancestor.id, "patch") or ""
        if not patch.strip() or not holder.base_commit:
            break
        if _tree(repo, holder.base_commit, _start(store, holder) + [patch]) is None:
            break
        held.append((ancestor, patch))
        holder = ancestor
    return held


def apply_job(store: Store, job: Job, repo: Path) -> Applied:
    """Bring the job's change into the working copy at `repo` (see the module's docstring). ApplyError when
    nothing could be applied, with a message for the user."""
    patch = store.get_artifact(job.id, "patch") or ""
    if not patch.strip():
        raise ApplyError(f"Job {job.number} changed nothing: there is nothing to apply.")
    held = stack(store, job, repo)
    ok, refused = fits(repo, patch)
    if ok:
        _apply(repo, patch)
        also = (f" This also applies {_names([a for a, _ in reversed(held)])}'s change, which job {job.number} "
                "built on.") if held else ""
        return Applied(f"Applied job {job.number}'s change to {repo} (uncommitted).{also}", _stat(repo),
                       files=patch_files(patch))
    if fits(repo, patch, reverse=True)[0]:
        return Applied(f"Job {job.number}'s change is already in your working copy: nothing to apply.",
                       changed=False, files=patch_files(patch))
    start = _start(store, job)
    for index, (ancestor, older) in enumerate(held):
        if not fits(repo, older, reverse=True)[0]:
            continue
        delta = _delta(repo, job.base_commit, start, older, patch)
        if delta is None:
            continue
        if not delta.strip():
            return Applied(f"Job {job.number}'s change is already in your working copy (it is the same as job "
                           f"{ancestor.number}'s): nothing to apply.", changed=False, files=patch_files(patch))
        delta_ok, delta_refused = fits(repo, delta)
        if not delta_ok:
            raise ApplyError(conflict_message(job, failed_files(delta_refused, delta)))
        _apply(repo, delta)
        between = [a for a, _ in reversed(held[:index])]
        with_between = f" (with {_names(between)}'s)" if between else ""
        return Applied(f"Applied job {job.number}'s change{with_between} on top of job {ancestor.number}'s, "
                       f"already in your working copy (uncommitted).", _stat(repo), files=patch_files(delta))
    raise ApplyError(conflict_message(job, failed_files(refused, patch)))


def _apply(repo: Path, patch: str) -> None:
    done = _git(repo, "apply", "--whitespace=nowarn", "-", input=patch)
    if done.returncode != 0:  # it fitted a moment ago: the working copy changed in between
        raise ApplyError(f"The working copy changed while applying ({failed_files(done.stderr, patch)}); "
                         "check `git status` and try again.")


def _stat(repo: Path) -> str:
    done = _git(repo, "diff", "--stat")
    return done.stdout.strip() if done.returncode == 0 else ""


def apply_proof_tests(store: Store, job: Job, repo: Path) -> Applied:
    """A review job's proof tests (new files, one patch) into the working copy at `repo`: applied when they fit,
    nothing when they are there already; ApplyError, naming the files in the way, otherwise."""
    patch = store.get_artifact(job.id, PROOFS_ARTIFACT) or ""
    if not patch.strip():
        raise ApplyError(f"Review job {job.number} has no proof tests: there is nothing to apply.")
    files = patch_files(patch)
    ok, refused = fits(repo, patch)
    if ok:
        _apply(repo, patch)
        return Applied(f"Added review job {job.number}'s proof tests to {repo} (uncommitted, untracked): "
                       f"{', '.join(files)}. Run them on your branch to see the findings fail.", _stat(repo),
                       files=files)
    if fits(repo, patch, reverse=True)[0]:
        return Applied(f"Review job {job.number}'s proof tests are already in your working copy: nothing to apply.",
                       changed=False, files=files)
    raise ApplyError(f"Review job {job.number}'s proof tests do not fit your working copy "
                     f"({', '.join(failed_files(refused, patch))}: a file of that name is there already); nothing was "
                     "changed. Move it aside, or download the proof tests from the card and apply them by hand.")
