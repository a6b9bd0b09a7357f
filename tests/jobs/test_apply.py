"""Apply of a job's change to a real working copy: stacked follow-ups (a follow-up's patch holds its parent's),
the same job twice, and conflicts explained by file. The jobs' patches are made as the sandbox makes them: a clone
of the repository at its base commit, the parent's patch applied by the guest's own operation, the change made, and
the guest's diff taken against the base commit."""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from assistant.jobs.apply import ApplyError, apply_job, failed_files
from assistant.sandbox.diff import from_sandbox
from assistant.sandbox.guest import workspace_ops
from tests.fixtures.repos import git, make_repo

CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
MUL = "\n\ndef mul(a, b):\n    return a * b\n"
DIV = "\n\ndef div(a, b):\n    return a / b\n"


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo", {"calc.py": CALC, "README.md": "calc\n"})


def sandbox_patch(monkeypatch, tmp_path: Path, repo: Path, base: str, change, parent_patch: str | None = None) -> str:
    """A job's patch as the sandbox takes it: clone at base, the parent's patch applied (guest op), `change` made
    in the workspace, the guest's diff against base."""
    workspace = tmp_path / f"ws-{len(list(tmp_path.glob('ws-*')))}"
    subprocess.run(["git", "clone", "-q", str(repo), str(workspace)], check=True)
    git(workspace, "checkout", "-q", base)
    scratch = workspace.with_name(workspace.name + "-tmp")
    scratch.mkdir()
    monkeypatch.setattr(workspace_ops, "WORKSPACE", str(workspace))
    monkeypatch.setattr(workspace_ops, "SCRATCH_ROOT", str(scratch))
    if parent_patch:
        assert workspace_ops.apply_parent_patch(base64.b64encode(parent_patch.encode()).decode())["ok"]
    change(workspace)
    return from_sandbox(workspace_ops.diff(base)).patch


def append(path: str, text: str):
    def change(workspace: Path) -> None:
        target = workspace / path
        target.write_text((target.read_text() if target.exists() else "") + text)
    return change


def job_with(store, _thread, patch: str, base: str, parent=None, repo: Path | None = None):
    if store.get_thread("th") is None:
        store.create_thread(user_id=None, thread_id="th", name="c")
    job = store.create_job(task="t", repo=str(repo), thread_id="th", parent_job_id=parent.id if parent else None,
                           title="t", artifacts={"patch": patch})
    return store.update_job(job.id, base_commit=base)


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def test_a_follow_up_after_its_parent_applies_only_its_own_change(store, repo, monkeypatch, tmp_path):
    base = head(repo)
    parent_patch = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", MUL))
    child_patch = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", DIV), parent_patch)
    parent = job_with(store, "th", parent_patch, base, repo=repo)
    child = job_with(store, "th", child_patch, base, parent, repo=repo)
    assert "mul" in child_patch and "div" in child_patch  # the follow-up's patch holds its parent's change

    first = apply_job(store, parent, repo)
    assert first.changed and "Applied job 1's change" in first.message
    assert (repo / "calc.py").read_text() == CALC + MUL

    second = apply_job(store, child, repo)
    assert second.changed
    assert second.message.startswith("Applied job 2's change on top of job 1's, already in your working copy")
    assert (repo / "calc.py").read_text() == CALC + MUL + DIV
    assert "calc.py" in second.stat

    again = apply_job(store, child, repo)
    assert not again.changed
    assert again.message == "Job 2's change is already in your working copy: nothing to apply."
    assert (repo / "calc.py").read_text() == CALC + MUL + DIV


def test_a_follow_up_whose_parent_is_not_applied_applies_the_whole_stack_and_says_so(store, repo, monkeypatch,
                                                                                     tmp_path):
    base = head(repo)
    parent_patch = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", MUL))
    child_patch = sandbox_patch(monkeypatch, tmp_path, repo, base, append("notes.txt", "new file\n"), parent_patch)
    parent = job_with(store, "th", parent_patch, base, repo=repo)
    child = job_with(store, "th", child_patch, base, parent, repo=repo)

    applied = apply_job(store, child, repo)
    assert applied.message == (f"Applied job 2's change to {repo} (uncommitted). This also applies job 1's change, "
                               "which job 2 built on.")
    assert (repo / "calc.py").read_text() == CALC + MUL and (repo / "notes.txt").read_text() == "new file\n"
    # The parent now: its change is in the working copy (with the follow-up's on top).
    assert "already in your working copy" in apply_job(store, parent, repo).message


def test_a_three_job_stack_with_the_first_applied_brings_the_other_two(store, repo, monkeypatch, tmp_path):
    base = head(repo)
    one = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", MUL))
    two = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", DIV), one)
    three = sandbox_patch(monkeypatch, tmp_path, repo, base, append("README.md", "more\n"), two)
    j1 = job_with(store, "th", one, base, repo=repo)
    j2 = job_with(store, "th", two, base, j1, repo=repo)
    j3 = job_with(store, "th", three, base, j2, repo=repo)
    apply_job(store, j1, repo)
    applied = apply_job(store, j3, repo)
    assert applied.message.startswith("Applied job 3's change (with job 2's) on top of job 1's, already in your "
                                      "working copy")
    assert (repo / "calc.py").read_text() == CALC + MUL + DIV and (repo / "README.md").read_text() == "calc\nmore\n"


def test_a_parent_committed_since_still_lets_the_follow_up_apply_its_delta(store, repo, monkeypatch, tmp_path):
    base = head(repo)
    parent_patch = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", MUL))
    child_patch = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", DIV), parent_patch)
    parent = job_with(store, "th", parent_patch, base, repo=repo)
    child = job_with(store, "th", child_patch, base, parent, repo=repo)
    apply_job(store, parent, repo)
    git(repo, "commit", "-qam", "job 1")
    applied = apply_job(store, child, repo)
    assert "on top of job 1's" in applied.message
    assert git(repo, "diff").count("+def div") == 1 and "+def mul" not in git(repo, "diff")


def test_a_follow_up_whose_sandbox_could_not_apply_its_parent_is_applied_alone(store, repo, monkeypatch, tmp_path):
    base = head(repo)
    parent_patch = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", MUL))
    # The follow-up ran on another base, where the parent's patch did not apply: its patch lacks the parent's.
    git(repo, "rm", "-q", "calc.py")
    git(repo, "commit", "-qm", "drop calc")
    other = head(repo)
    child_patch = sandbox_patch(monkeypatch, tmp_path, repo, other, append("README.md", "more\n"))
    parent = job_with(store, "th", parent_patch, base, repo=repo)
    child = job_with(store, "th", child_patch, other, parent, repo=repo)
    applied = apply_job(store, child, repo)
    assert applied.message == f"Applied job 2's change to {repo} (uncommitted)."  # no claim about job 1
    assert not (repo / "calc.py").exists()


def test_a_conflict_names_the_files_and_what_to_do_and_changes_nothing(store, repo, monkeypatch, tmp_path):
    base = head(repo)
    patch = sandbox_patch(monkeypatch, tmp_path, repo, base,
                          lambda ws: (ws / "calc.py").write_text(CALC.replace("a + b", "b + a")))
    job = job_with(store, "th", patch, base, repo=repo)
    (repo / "calc.py").write_text(CALC.replace("a + b", "a+b"))
    (repo / "README.md").write_text("mine\n")
    with pytest.raises(ApplyError) as raised:
        apply_job(store, job, repo)
    message = str(raised.value)
    assert message.startswith("Job 1's change does not fit your working copy: calc.py differs")
    assert "Commit or stash your changes" in message and "Create branch" in message
    assert "git apply" not in message and "patch failed" not in message
    assert (repo / "calc.py").read_text() == CALC.replace("a + b", "a+b")  # untouched


def test_a_follow_up_conflicting_on_top_of_its_applied_parent_names_the_file(store, repo, monkeypatch, tmp_path):
    base = head(repo)
    parent_patch = sandbox_patch(monkeypatch, tmp_path, repo, base, append("calc.py", MUL))
    child_patch = sandbox_patch(monkeypatch, tmp_path, repo, base,
                                lambda ws: (ws / "README.md").write_text("calc, documented\n"), parent_patch)
    parent = job_with(store, "th", parent_patch, base, repo=repo)
    child = job_with(store, "th", child_patch, base, parent, repo=repo)
    apply_job(store, parent, repo)
    (repo / "README.md").write_text("my own words\n")
    with pytest.raises(ApplyError, match=r"^Job 2's change does not fit your working copy: README\.md differs"):
        apply_job(store, child, repo)
    assert (repo / "calc.py").read_text() == CALC + MUL


def test_failed_files_reads_git_apply_messages():
    stderr = ("error: patch failed: calc.py:5\nerror: calc.py: patch does not apply\n"
              "error: new.py: already exists in working directory\nerror: gone.py: No such file or directory\n")
    assert failed_files(stderr, "") == ["calc.py", "new.py", "gone.py"]
    assert failed_files("", "diff --git a/x.py b/x.py\n") == ["x.py"]


def test_nothing_to_apply_says_so(store, repo):
    job = job_with(store, "th", "", head(repo), repo=repo)
    with pytest.raises(ApplyError, match="changed nothing"):
        apply_job(store, job, repo)


# ---------------------------------------------------------------------- a review's proof tests
PROOF = ("diff --git a/test_review_proof.py b/test_review_proof.py\nnew file mode 100644\n--- /dev/null\n"
         "+++ b/test_review_proof.py\n@@ -0,0 +1,2 @@\n+from calc import add\n+assert add(2, 2) == 4\n")


def review_job(store, repo: Path, proofs: str):
    from assistant.domain.review import PROOFS_ARTIFACT
    job = store.create_job(task="Review feature against main", repo=str(repo), thread_id="t1", state="succeeded")
    store.put_artifact(job.id, PROOFS_ARTIFACT, proofs)
    return job


def test_a_reviews_proof_tests_are_added_once_and_a_file_in_the_way_is_named(store, repo):
    from assistant.jobs.apply import apply_proof_tests
    job = review_job(store, repo, PROOF)
    applied = apply_proof_tests(store, job, repo)
    assert applied.changed and applied.files == ["test_review_proof.py"]
    assert (repo / "test_review_proof.py").read_text() == "from calc import add\nassert add(2, 2) == 4\n"
    again = apply_proof_tests(store, job, repo)
    assert not again.changed and "already in your working copy" in again.message
    (repo / "test_review_proof.py").write_text("mine\n")
    with pytest.raises(ApplyError, match=r"\(test_review_proof.py: a file of that name is there already\); "
                                         "nothing was changed"):
        apply_proof_tests(store, job, repo)
    assert (repo / "test_review_proof.py").read_text() == "mine\n"
    with pytest.raises(ApplyError, match="has no proof tests"):
        apply_proof_tests(store, review_job(store, repo, ""), repo)
