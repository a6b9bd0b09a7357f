"""Review jobs through the job manager: the real runner, pipeline, proof runs and citation checks over the fake
sandbox (no Docker), the scripted reviewer over real HTTP. The product, not the model, decides what is verified."""
from __future__ import annotations

import json
import subprocess

import pytest

from assistant.domain import states
from assistant.jobs import runner as runner_module
from assistant.jobs.manager import JobManager
from assistant.jobs.review import (REVIEW_PROOFS, ReviewError, fix_blockers, fix_finding, load_review,
                                   submit_review)
from assistant.llm.client import ModelClient
from assistant.sandbox import prepare as real_prepare
from assistant.store import Store
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from tests.fixtures.chunks import (AGENT_FIX, CHUNKS_BUGGY, CHUNKS_REFACTOR, FIX_PATCH, PROOF_CMD, PROOF_TEST,
                                   REVIEWER, bug_findings, finding, make_chunks_repo, reviewer)
from tests.fixtures.repos import git
from tests.jobs.fake_sandbox import FakeSandbox

AGENT = "You are a careful software engineer"


@pytest.fixture
def fake_sandboxes(monkeypatch):
    def start(**kw):
        return FakeSandbox.start(**kw)
    start.backend = "fake"

    def prepare(request, config, *, engine=None, warm=None, **callbacks):
        return real_prepare(request, config, start=start, **callbacks)
    monkeypatch.setattr(runner_module, "prepare", prepare)


@pytest.fixture
def manager(settings_for, scripted_model, fake_sandboxes):
    settings = settings_for(scripted_model)
    store = Store(settings.resolved_database_url)
    made = JobManager(settings, store, ModelClient(settings))
    yield made
    made.shutdown(wait_s=10)
    store.close()


def run_review(manager, **kw):
    job = submit_review(manager, **kw)
    return manager.wait(job.id, timeout=180)


def test_a_branch_with_an_off_by_one_gets_a_verified_blocker(tmp_path, scripted_model, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", head="feature")

    assert job.state == states.SUCCEEDED, job.reason
    result = load_review(manager.store, job.id)
    assert result.verdict == "changes_requested" and result.model_verdict_consistent
    blocker, invented, nit = result.findings
    # The proof the product ran fails on the head and passes on the base: verified.
    assert blocker.verified and blocker.proof.status == "confirmed"
    assert blocker.proof.head.exit_code != 0 and blocker.proof.base.exit_code == 0
    chunks = {c.id: c for c in manager.store.list_chunks(job.id)}
    assert "FAIL" in chunks[blocker.proof.head.chunk_id].text and "OK" in chunks[blocker.proof.base.chunk_id].text
    assert [c["valid"] for c in blocker.citations] == [True, True]
    assert blocker.citations[0]["excerpt"] == "    return [items[i:i + size] for i in range(0, len(items) - 1, size)]"
    # An invented finding with no proof stays unverified; its citation past the file's end is marked invalid.
    assert not invented.verified and invented.proof is None
    assert [c["valid"] for c in invented.citations] == [False]
    # A proof that does not fail on the head shows nothing.
    assert not nit.verified and nit.proof.status == "passes_on_head"
    # The tests ran on both sides before the reviewer started; both pass (they miss the bug).
    assert [(t.side, t.exit_code) for t in result.tests] == [("base", 0), ("head", 0)]
    # The proof test is offered as a patch of its own, which applies to the head.
    proofs = manager.store.get_artifact(job.id, REVIEW_PROOFS)
    assert proofs == result.proof_patch and "+++ b/test_review_proof.py" in proofs
    git(repo, "checkout", "-q", "feature")
    subprocess.run(["git", "apply", "--check", "-"], input=proofs, text=True, cwd=repo, check=True)
    # The summary states only the verified finding as a fact, and its citations are checked.
    assert "verified: its proof" in job.summary and "unverified: no proof was given" in job.summary
    assert any(not c["valid"] for c in job.citations) and any(c["valid"] for c in job.citations)
    assert "range(0, len(items) - 1, size)" in (repo / "chunks.py").read_text()  # the user's repo untouched
    # A review's result is its findings: the log-based claims check is for an agent's own words, not this summary.
    assert job.outcome["kind"] == "findings" and job.outcome["claims"] == []


def test_a_harmless_refactor_is_approved(tmp_path, scripted_model, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_REFACTOR)
    scripted_model.when_system_contains(REVIEWER, [reviewer([], verdict="approve")], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", head="feature")
    result = load_review(manager.store, job.id)
    assert job.state == states.SUCCEEDED and result.verdict == "approve" and result.findings == []
    assert result.model_verdict_consistent and job.summary.startswith("**Review: approve**")
    # Retried, it is the same review again (not a task job with the review's title).
    again = manager.wait(manager.retry(job.id)[0].id, timeout=180)
    assert again.id != job.id and again.state == states.SUCCEEDED
    assert load_review(manager.store, again.id).head_commit == result.head_commit


def test_the_changes_own_diff_flags_reach_the_reviewer_and_the_result(tmp_path, scripted_model, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_REFACTOR)
    git(repo, "checkout", "-q", "feature")
    git(repo, "rm", "-q", "test_chunks.py")
    git(repo, "commit", "-qm", "drop a test")
    scripted_model.when_system_contains(REVIEWER, [reviewer([], verdict="approve")], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", head="feature")
    result = load_review(manager.store, job.id)
    assert [(f["kind"], f["path"]) for f in result.flags] == [("test_deleted", "test_chunks.py")]
    assert "Flags on the diff: test deleted `test_chunks.py`" in job.summary
    asked = next(r for r in scripted_model.requests if REVIEWER in r["messages"][0]["content"])
    assert "test_deleted test_chunks.py" in asked["messages"][1]["content"]


def test_an_invented_blocker_without_proof_is_unverified_and_blocks_nothing(tmp_path, scripted_model, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_REFACTOR)
    invented = [finding("chunked loses items", "blocker", "It drops the tail 【F:chunks.py†L4-L4】.",
                        proof_command="python3 -m unittest -v test_review_proof 2>&1",
                        proof_test_path="test_review_proof.py", proof_test=PROOF_TEST)]
    scripted_model.when_system_contains(REVIEWER, [reviewer(invented)], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", head="feature")
    result = load_review(manager.store, job.id)
    (f,) = result.findings
    # The model said "changes requested" and called it a blocker; its proof passes on the head, so it is not a fact.
    assert not f.verified and f.proof.status == "passes_on_head" and f.citations[0]["valid"]
    assert result.verdict == "comment" and not result.model_verdict_consistent
    assert "unverified: its proof passes on the head" in job.summary


def test_proof_tests_at_a_path_the_repository_has_or_another_proof_took_are_not_run(tmp_path, scripted_model,
                                                                                      manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    proof = dict(proof_command=PROOF_CMD, proof_test=PROOF_TEST)
    items = [finding("one", "blocker", "x", proof_test_path="test_review_proof.py", **proof),
             finding("two", "major", "y", proof_test_path="test_review_proof.py", **proof),
             finding("three", "major", "z", proof_test_path="test_chunks.py", **proof),
             finding("four", "minor", "w", proof_test_path="../outside.py", **proof)]
    scripted_model.when_system_contains(REVIEWER, [reviewer(items)], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", head="feature")
    one, two, three, four = load_review(manager.store, job.id).findings
    assert one.verified
    assert not two.verified and two.proof.status == "not_run" and "another finding" in two.proof.reason
    assert not three.verified and "is a file of the repository" in three.proof.reason
    assert not four.verified and "refused" in four.proof.reason
    assert "test_chunks.py" not in manager.store.get_artifact(job.id, REVIEW_PROOFS)
    assert "unverified: the proof was not run (test_chunks.py is a file of the repository" in job.summary


def test_a_patch_is_reviewed_on_its_base_and_fix_this_makes_the_proof_pass(tmp_path, scripted_model, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    patch = git(repo, "diff", "main", "feature")
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", patch=patch)
    result = load_review(manager.store, job.id)
    assert job.state == states.SUCCEEDED and result.mode == "patch" and result.findings[0].verified
    # The job's patch is what a follow-up starts from: the change under review and the proof test.
    assert "range(0, len(items) - 1, size)" in manager.store.get_artifact(job.id, "patch")

    scripted_model.when_system_contains(AGENT, [AGENT_FIX], repeat_last=True)
    follow = manager.wait(fix_finding(manager, job.id, "f1").id, timeout=180)
    assert follow.state == states.SUCCEEDED, follow.reason
    assert follow.parent_job_id == job.id and follow.title.startswith("Fix: chunked drops")
    assert "python3 -m unittest -v test_review_proof" in follow.task and "test_review_proof.py" in follow.task
    first, _patch, last = [c for c in manager.store.list_chunks(follow.id)][:3]
    assert first.exit_code != 0 and last.exit_code == 0  # the proof test was in its workspace, failing, then passing
    # Its diff, applied on the base, makes the proof test pass.
    fixed = tmp_path / "fixed"
    subprocess.run(["git", "clone", "-q", str(repo), str(fixed)], check=True)
    subprocess.run(["git", "apply", "-"], input=manager.store.get_artifact(follow.id, "patch"), text=True,
                   cwd=fixed, check=True)
    ran = subprocess.run(["bash", "-c", PROOF_CMD], cwd=fixed, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout
    # The follow-up's own diff can be reviewed in turn (job mode), against the commit it started from.
    scripted_model.reset()
    scripted_model.when_system_contains(REVIEWER, [reviewer([], verdict="approve")], repeat_last=True)
    again = run_review(manager, repo=str(repo), job_id=follow.id)
    result = load_review(manager.store, again.id)
    assert again.state == states.SUCCEEDED, again.reason
    assert result.mode == "job" and result.verdict == "approve"
    assert ["added", "test_review_proof.py"] in result.changed_files
    with pytest.raises(ReviewError, match="no blocker"):
        fix_blockers(manager, again.id)


def test_fix_all_blockers_starts_one_follow_up(tmp_path, scripted_model, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", head="feature")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("apply_patch", patch=FIX_PATCH), Reply.call("shell", command=PROOF_CMD),
        lambda r: Reply.text(f"Fixed 【{chunk_ids(r)[-1]}†L1-L3】."))], repeat_last=True)
    follow = manager.wait(fix_blockers(manager, job.id).id, timeout=180)
    assert follow.state == states.SUCCEEDED, follow.reason
    assert "chunked drops the last item" in follow.task and "slow on huge lists" not in follow.task
    assert follow.ref == load_review(manager.store, job.id).head_commit  # a branch review's follow-up starts at the head
    last = manager.store.list_chunks(follow.id)[-1]
    assert last.exit_code == 0 and "OK" in last.text
    with pytest.raises(KeyError, match="no finding 'f9'"):
        fix_finding(manager, job.id, "f9")


def test_asking_wrongly_says_what_to_give(tmp_path, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    with pytest.raises(ReviewError, match="exactly one of"):
        submit_review(manager, repo=str(repo), base="main")
    with pytest.raises(ReviewError, match="exactly one of"):
        submit_review(manager, repo=str(repo), head="feature", patch="x")
    with pytest.raises(ReviewError, match="patch is empty"):
        submit_review(manager, repo=str(repo), patch="  \n")
    with pytest.raises(ReviewError, match="nothing that"):
        submit_review(manager, repo=str(repo), base="feature", head="main")


@pytest.fixture
def small_model_manager(settings_for, scripted_model, fake_sandboxes):
    """A manager whose agent is driven as the embedded model is: the guided harness."""
    settings = settings_for(scripted_model, ASSISTANT_AGENT_HARNESS="guided")
    store = Store(settings.resolved_database_url)
    made = JobManager(settings, store, ModelClient(settings))
    yield made
    made.shutdown(wait_s=10)
    store.close()


def test_a_small_model_reviews_in_one_constrained_reply(tmp_path, scripted_model, small_model_manager):
    """No tool loop for the embedded model: one short request with the diff and the test runs, one JSON reply;
    the product still runs the proof and decides."""
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    report = {"verdict": "changes_requested", "findings": bug_findings(["abcdef"])[:1]}
    scripted_model.when_system_contains(REVIEWER, [Reply.text(json.dumps(report))], repeat_last=True)
    job = run_review(small_model_manager, repo=str(repo), base="main", head="feature")
    assert job.state == states.SUCCEEDED, job.reason
    (request,) = [r for r in scripted_model.requests if REVIEWER in r["messages"][0]["content"]]
    assert "tools" not in request and len(json.dumps(request["messages"])) < 12_000
    assert "range(0, len(items) - 1, size)" in request["messages"][1]["content"]  # the diff is in the prompt
    (f,) = load_review(small_model_manager.store, job.id).findings
    assert f.verified and f.proof.status == "confirmed"
    # The chunk id the model made up does not resolve: that citation is marked invalid, the file one holds.
    assert [(c["kind"], c["valid"]) for c in f.citations] == [("file", True), ("chunk", False)]


def asks_for_the_report(request) -> bool:
    last = request["messages"][-1]
    return last["role"] == "user" and "Give your review of the change as one JSON object" in (last["content"] or "")


def test_a_review_in_prose_is_asked_for_once_more_as_json(tmp_path, scripted_model, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_REFACTOR)
    scripted_model.script([Reply.text(json.dumps({"verdict": "approve", "findings": []}))],
                          match=asks_for_the_report, repeat_last=True)
    scripted_model.when_system_contains(REVIEWER, [by_turn(Reply.call("shell", command="git diff HEAD~1"),
                                                           Reply.text("Looks fine to me."))], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", head="feature")
    assert job.state == states.SUCCEEDED, job.reason
    assert load_review(manager.store, job.id).verdict == "approve"
    assert sum(1 for r in scripted_model.requests if asks_for_the_report(r)) == 1


def test_no_usable_report_fails_the_job_saying_so(tmp_path, scripted_model, manager):
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_REFACTOR)
    scripted_model.when_system_contains(REVIEWER, [by_turn(Reply.call("shell", command="git diff HEAD~1"),
                                                           Reply.text("Looks fine to me."))], repeat_last=True)
    job = run_review(manager, repo=str(repo), base="main", head="feature")
    assert job.state == states.FAILED and "the reviewer gave no usable report" in job.reason
    assert load_review(manager.store, job.id) is None
