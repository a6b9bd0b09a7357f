"""Self-review (ASSISTANT_SELF_REVIEW) through the job manager: a coding job's own diff reviewed in its own sandbox
(the fake sandbox, no Docker) by the scripted reviewer over real HTTP, with the proofs run by the product. A
verified serious finding turns the job's fix into a draft; an unproved one changes nothing; a reviewer that fails
or runs out of time leaves the job's own result, with a note."""
from __future__ import annotations

import time

import pytest

from assistant.domain import states
from assistant.domain.events import Notice
from assistant.jobs.manager import JobManager, JobRequest
from assistant.jobs.review import added_paths
from assistant.jobs.self_review import load_self_review, self_review_lines
from assistant.llm.client import ModelClient
from assistant.store import Store
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from assistant.web.cards import render_job_card
from tests.fixtures.chunks import (CHUNKS, PROOF_CMD, PROOF_TEST, REVIEWER, TESTS, bug_findings, finding,
                                   reviewer)
from tests.fixtures.repos import make_repo
from tests.jobs.fake_sandbox import run_jobs_in_fake_sandboxes

AGENT = "You are a careful software engineer"
TEST_CMD = "python3 -m unittest -v 2>&1"
# The agent's change: a note file, and a "tidier" range that drops the last item of an odd-length list (the
# repository's only test uses an even length, so the agent's test run passes).
BUGGY_CHANGE = """*** Begin Patch
*** Add File: NOTES.md
+chunked: the range is computed once.
*** Update File: chunks.py
@@
-    return [items[i:i + size] for i in range(0, len(items), size)]
+    return [items[i:i + size] for i in range(0, len(items) - 1, size)]
*** End Patch"""
HARMLESS_CHANGE = """*** Begin Patch
*** Update File: chunks.py
@@
-    return [items[i:i + size] for i in range(0, len(items), size)]
+    starts = range(0, len(items), size)
+    return [items[i:i + size] for i in starts]
*** End Patch"""


def coder(change: str):
    """Edit, run the tests (they pass), summarise."""
    return by_turn(Reply.call("apply_patch", patch=change), Reply.call("shell", command=TEST_CMD),
                   lambda r: Reply.text(f"Done; the tests pass 【{chunk_ids(r)[-1]}†L1-L3】."))


@pytest.fixture
def fake_sandboxes(monkeypatch):
    run_jobs_in_fake_sandboxes(monkeypatch)


@pytest.fixture
def make_manager(settings_for, scripted_model, fake_sandboxes):
    made = []

    def make(**overrides):
        settings = settings_for(scripted_model, **overrides)
        store = Store(settings.resolved_database_url)
        manager = JobManager(settings, store, ModelClient(settings))
        made.append((manager, store))
        return manager
    yield make
    for manager, store in made:
        manager.shutdown(wait_s=10)
        store.close()


def run_task(manager, repo, task="Compute the range in chunked once"):
    job = manager.submit(JobRequest(task=task, repo=str(repo)))[0]
    return manager.wait(job.id, timeout=180)


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "chunks", {"chunks.py": CHUNKS, "test_chunks.py": TESTS,
                                           "AGENTS.md": "Run the tests with `python3 -m unittest -v`.\n"})


def reviewer_requests(scripted_model) -> list[dict]:
    return [r for r in scripted_model.requests if REVIEWER in r["messages"][0]["content"]]


def notices(manager, job) -> list[str]:
    return [e.text for e in manager.store.read_events(job.id) if isinstance(e, Notice)]


def test_a_proved_bug_in_the_jobs_own_diff_is_attached_verified_and_the_fix_becomes_a_draft(repo, scripted_model,
                                                                                           make_manager):
    manager = make_manager(ASSISTANT_SELF_REVIEW="on")
    scripted_model.when_system_contains(AGENT, [coder(BUGGY_CHANGE)], repeat_last=True)
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    job = run_task(manager, repo)

    assert job.state == states.SUCCEEDED, job.reason
    review = load_self_review(manager.store, job.id)
    assert review.status == "done" and review.result.mode == "self"
    assert review.result.base_commit == job.base_commit
    blocker, invented, nit = review.result.findings
    # The product ran the proof: it fails on the job's change and passes on the commit the job started from.
    assert blocker.verified and blocker.severity == "blocker" and blocker.proof.status == "confirmed"
    chunks = {c.id: c for c in manager.store.list_chunks(job.id)}
    assert "FAIL" in chunks[blocker.proof.head.chunk_id].text and "OK" in chunks[blocker.proof.base.chunk_id].text
    assert blocker.citations[0]["valid"] and "len(items) - 1" in blocker.citations[0]["excerpt"]
    assert not invented.verified and invented.proof is None
    assert not nit.verified and nit.proof.status == "passes_on_head"
    # The reviewer was told what the change was for, and saw the job's own diff (the added note file too).
    asked = reviewer_requests(scripted_model)[0]["messages"][1]["content"]
    assert "Compute the range in chunked once" in asked and "NOTES.md" in asked and "len(items) - 1" in asked
    # The agent's tests passed, but the job is not presented as a clean fix.
    assert job.outcome["kind"] == "draft"
    assert job.outcome["kind_reason"].startswith("self-review verified a blocker finding: f1 chunked drops the last")
    assert blocker.proof.head.chunk_id in job.outcome["kind_reason"]
    # The job's diff is its agent's change alone: no proof test in it.
    patch = manager.store.get_artifact(job.id, "patch")
    assert "+++ b/NOTES.md" in patch and "test_review_proof" not in patch
    assert not manager.store.has_artifact(job.id, "review_proofs")
    lines = self_review_lines(manager.store, job.id)
    assert lines[0].startswith("self-review: changes requested — 3 findings, 1 verified")
    assert lines[1].startswith("  f1 [blocker] chunked drops the last item") and "✔ verified" in lines[1]
    assert "⚠ unverified: no proof was given" in lines[2]
    assert any(n.startswith("self-review: changes requested") for n in notices(manager, job))
    # The review's log chunks are the review's: the agent's own evidence (its test run) still decides the rest.
    assert [e["command"] for e in job.outcome["evidence"]] == [TEST_CMD]
    # The card shows the draft with the reason, and the self-review under it.
    card = render_job_card(manager.store, job.id)
    assert "### Result: ✎ draft" in card and "self-review verified a blocker finding" in card
    assert card.index("### Result: ✎ draft") < card.index("#### Self-review of this change: ✗ Changes requested")
    assert "- ✔ **f1 · blocker · chunked drops the last item of an odd-length list — verified**" in card


def test_an_invented_finding_without_proof_stays_unverified_and_the_fix_stays_a_fix(repo, scripted_model,
                                                                                    make_manager):
    manager = make_manager(ASSISTANT_SELF_REVIEW="on")
    scripted_model.when_system_contains(AGENT, [coder(HARMLESS_CHANGE)], repeat_last=True)
    invented = [finding("chunked loses items", "blocker", "It drops the tail 【F:chunks.py†L4-L4】.",
                        proof_command=PROOF_CMD, proof_test_path="test_review_proof.py", proof_test=PROOF_TEST),
                finding("starts is a bad name", "major", "Say why not.")]
    scripted_model.when_system_contains(REVIEWER, [reviewer(invented)], repeat_last=True)
    job = run_task(manager, repo)

    assert job.state == states.SUCCEEDED, job.reason
    review = load_self_review(manager.store, job.id)
    proved, unproved = review.result.findings
    assert not proved.verified and proved.proof.status == "passes_on_head"
    assert not unproved.verified and unproved.proof is None
    assert review.result.verdict == "comment" and not review.result.model_verdict_consistent
    assert job.outcome["kind"] == "fix", job.outcome["kind_reason"]
    assert "⚠ unverified: its proof passes on the head" in self_review_lines(manager.store, job.id)[1]


def test_with_self_review_off_no_review_pass_runs(repo, scripted_model, make_manager):
    manager = make_manager(ASSISTANT_SELF_REVIEW="off")
    scripted_model.when_system_contains(AGENT, [coder(BUGGY_CHANGE)], repeat_last=True)
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    job = run_task(manager, repo)

    assert job.state == states.SUCCEEDED and job.outcome["kind"] == "fix"
    assert reviewer_requests(scripted_model) == []
    assert load_self_review(manager.store, job.id) is None and self_review_lines(manager.store, job.id) == []
    assert not [c for c in manager.store.list_chunks(job.id) if c.phase == "review"]


def test_a_job_without_a_change_is_not_reviewed(repo, scripted_model, make_manager):
    manager = make_manager(ASSISTANT_SELF_REVIEW="on")
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=TEST_CMD),
                                                        Reply.text("The tests pass; nothing to change."))],
                                        repeat_last=True)
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    job = run_task(manager, repo, task="Check the tests pass")
    assert job.state == states.SUCCEEDED
    assert reviewer_requests(scripted_model) == [] and load_self_review(manager.store, job.id) is None


def test_a_reviewer_that_errors_leaves_the_jobs_result_with_a_note(repo, scripted_model, make_manager):
    manager = make_manager(ASSISTANT_SELF_REVIEW="on")
    scripted_model.when_system_contains(AGENT, [coder(BUGGY_CHANGE)], repeat_last=True)
    scripted_model.when_system_contains(REVIEWER, [Reply.error(500)], repeat_last=True)
    job = run_task(manager, repo)

    assert job.state == states.SUCCEEDED, job.reason
    review = load_self_review(manager.store, job.id)
    assert review.status == "incomplete" and review.result is None and "no usable report" in review.reason
    assert job.outcome["kind"] == "fix"  # its own result, unreviewed: said so, not downgraded
    assert "+++ b/NOTES.md" in manager.store.get_artifact(job.id, "patch")
    assert any(n.startswith("self-review did not complete") for n in notices(manager, job))
    assert self_review_lines(manager.store, job.id)[0].startswith("self-review: did not complete")
    card = render_job_card(manager.store, job.id)
    assert "### Result: ✔ fix" in card and "#### Self-review: did not complete" in card
    assert len(reviewer_requests(scripted_model)) >= 2  # the reviewer was asked, and asked once more


def test_a_reviewer_that_runs_out_of_time_is_stopped_and_the_job_ends_with_its_own_result(repo, scripted_model,
                                                                                         make_manager):
    manager = make_manager(ASSISTANT_SELF_REVIEW="on", ASSISTANT_SELF_REVIEW_MAX_SECONDS="10")
    scripted_model.when_system_contains(AGENT, [coder(BUGGY_CHANGE)], repeat_last=True)
    # It runs commands that would take minutes, and never reports.
    scripted_model.when_system_contains(REVIEWER, [Reply.call("shell", command="sleep 300")], repeat_last=True)
    started = time.monotonic()
    job = run_task(manager, repo)

    assert job.state == states.SUCCEEDED, job.reason
    assert time.monotonic() - started < 150
    review = load_self_review(manager.store, job.id)
    assert review.status == "incomplete" and review.reason.startswith("its time (10 s) ran out")
    sleeps = [c for c in manager.store.list_chunks(job.id) if c.command == "sleep 300"]
    assert sleeps and all(c.timed_out and c.duration_s < 15 for c in sleeps)  # cut at the pass's length
    assert job.outcome["kind"] == "fix"
    assert any(n.startswith("self-review did not complete") for n in notices(manager, job))


def test_the_setting_reads_off_on_and_auto(settings_for, scripted_model):
    from assistant.jobs.pipeline import JobLimits
    assert JobLimits.from_settings(settings_for(scripted_model, ASSISTANT_SELF_REVIEW="on")).self_review
    assert not JobLimits.from_settings(settings_for(scripted_model, ASSISTANT_SELF_REVIEW="off")).self_review
    assert JobLimits.from_settings(settings_for(scripted_model, ASSISTANT_SELF_REVIEW="auto")).self_review
    assert not JobLimits.from_settings(settings_for(None, ASSISTANT_SELF_REVIEW="auto")).self_review  # embedded
    limits = JobLimits.from_settings(settings_for(scripted_model, ASSISTANT_SELF_REVIEW_MAX_SECONDS="42",
                                                  ASSISTANT_SELF_REVIEW_MAX_STEPS="3"))
    assert (limits.self_review_seconds, limits.self_review_steps) == (42, 3)


def test_added_paths_are_the_files_a_patch_creates():
    patch = ("diff --git a/new.py b/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+x\n"
             "diff --git a/old.py b/old.py\n--- a/old.py\n+++ b/old.py\n@@ -1 +1 @@\n-a\n+b\n"
             "diff --git a/a.py b/moved.py\nsimilarity index 100%\nrename from a.py\nrename to moved.py\n")
    assert added_paths(patch) == ["new.py", "moved.py"]
    assert added_paths("") == []


def test_a_cancel_during_the_self_review_cancels_the_job(repo, scripted_model, make_manager):
    manager = make_manager(ASSISTANT_SELF_REVIEW="on", ASSISTANT_SELF_REVIEW_MAX_SECONDS="300")
    scripted_model.when_system_contains(AGENT, [coder(BUGGY_CHANGE)], repeat_last=True)
    scripted_model.when_system_contains(REVIEWER, [Reply.call("shell", command="sleep 300")], repeat_last=True)
    job = manager.submit(JobRequest(task="Compute the range in chunked once", repo=str(repo)))[0]
    deadline = time.monotonic() + 120
    while not reviewer_requests(scripted_model):  # the reviewer has been asked: the pass is under way
        assert time.monotonic() < deadline, "the self-review never started"
        time.sleep(0.1)
    assert manager.cancel(job.id)
    job = manager.wait(job.id, timeout=120)
    assert job.state == states.CANCELLED and job.reason == "cancelled by the user"
    review = load_self_review(manager.store, job.id)
    assert review is None or review.status != "done"  # no review is presented as complete
