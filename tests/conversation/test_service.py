"""Conversation.delegate without Docker: the jobs are written to a real store by a real JobManager whose
execution keeps them queued. What a follow-up job's task, title and branch say about the job it follows."""
from __future__ import annotations

import pytest

from assistant.conversation.router import FOLLOWUP_JOB, JOB, Route
from assistant.conversation.service import Conversation, followup_title
from assistant.jobs.manager import JobManager
from assistant.llm.client import ModelClient
from assistant.store import Job, Store
from assistant.web.gitops import branch_name_for

PARENT_TASK = "Handle None in merge_configs: a None section must be skipped, not raise TypeError."
PARENT_SUMMARY = "merge_configs now skips None sections 【F:config.py†L10-L14】; the tests pass."


class HeldExecution:
    """Writes the job rows and runs nothing (the tests look at what was asked, not at a run)."""
    warm = None

    def __init__(self, store: Store):
        self.store = store

    def admit(self, fields: dict) -> Job:
        return self.store.create_job(**fields)

    def start(self, job: Job) -> None:
        pass

    def stop(self, job_id: str) -> bool:
        return False

    def publish(self, update) -> None:
        pass

    def wait(self, job_id: str, timeout: float | None) -> Job:
        return self.store.get_job(job_id)

    def shutdown(self, cancel_running: bool, wait_s: float | None) -> None:
        pass


@pytest.fixture
def conversation(settings_for, scripted_model, data_dir):
    settings = settings_for(scripted_model)
    store = Store(f"sqlite:///{data_dir / 'conversation.db'}")
    model = ModelClient(settings)
    jobs = JobManager(settings, store, model, execution=HeldExecution(store))
    yield Conversation(settings, store, model, jobs)
    store.close()


def parent_job(conversation, thread, state, kind):
    return conversation.store.create_job(
        task=PARENT_TASK, title="Handle None in merge_configs", repo=thread.repo, thread_id=thread.id, state=state,
        summary=PARENT_SUMMARY if state == "succeeded" else "The agent stopped: the model timed out.",
        outcome={"kind": kind, "kind_reason": "the tests pass after the last edit" if kind == "fix" else ""})


@pytest.mark.parametrize("state,kind", [("failed", "no result"), ("cancelled", "draft")])
def test_a_follow_up_after_a_failed_or_cancelled_job_carries_that_job_as_context(conversation, tmp_path, state, kind):
    thread = conversation.store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    parent = parent_job(conversation, thread, state, kind)
    route = Route(JOB, None, "a new job, not building on job 1", "classifier", "default", context_job_id=parent.id)
    job = conversation.delegate(thread.id, None, "also add a test for it", route)[0]
    assert job.parent_job_id is None                       # it does not start from a failed job's result
    assert job.task.startswith("also add a test for it\n")
    assert f"job 1 (\"Handle None in merge_configs\"), which ended {state}" in job.task
    assert f"the kind of its result: {kind}" in job.task
    assert PARENT_TASK in job.task and "The agent stopped: the model timed out." in job.task
    assert "does not start from job 1's result" in job.task
    assert job.title == "Handle None in merge_configs: add a test for it"
    assert branch_name_for(job.number, job.title) == "assistant/job-2-handle-none-in-merge-configs-add-a-test"
    assert conversation.store.get_artifact(job.id, "request") == "also add a test for it"


def test_a_follow_up_that_builds_on_a_job_carries_its_task_and_result(conversation, tmp_path):
    thread = conversation.store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    parent = parent_job(conversation, thread, "succeeded", "fix")
    route = Route(FOLLOWUP_JOB, parent.id, "continues job 1", "model", "last")
    job = conversation.delegate(thread.id, None, "Also add a test for it, please.", route)[0]
    assert job.parent_job_id == parent.id
    assert "which ended succeeded; the kind of its result: fix (the tests pass after the last edit)" in job.task
    assert PARENT_TASK in job.task and PARENT_SUMMARY in job.task
    assert "starts from job 1's result" in job.task and job.title == "Handle None in merge_configs: add a test for it"
    # a follow-up of the follow-up shows its parent's own words, not the context again; a retry keeps them
    route = Route(FOLLOWUP_JOB, job.id, "continues job 2", "model", "last")
    conversation.store.transition(job.id, "preparing")
    conversation.store.transition(job.id, "running")
    conversation.store.transition(job.id, "succeeded")
    third = conversation.delegate(thread.id, None, "now cover the empty dict too", route)[0]
    assert third.task.count(PARENT_TASK) == 0 and "Job 2's task was:\nAlso add a test for it, please." in third.task
    assert third.title == "Handle None in merge_configs: add a test for it; cover the empty dict"
    retried = conversation.jobs.retry(third.id)[0]
    assert retried.task == third.task and conversation.store.get_artifact(retried.id, "request") == \
        "now cover the empty dict too"


def test_a_new_job_with_nothing_to_follow_is_the_message_itself(conversation, tmp_path):
    thread = conversation.store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    job = conversation.delegate(thread.id, None, "Add a mul function", Route(JOB, None, "asks for a change"))[0]
    assert (job.task, job.title, job.parent_job_id) == ("Add a mul function", "Add a mul function", None)
    assert conversation.store.get_artifact(job.id, "request") is None


def test_follow_up_titles_are_trimmed_at_a_word():
    parent = Job(id="j1", number=1, title="Speed up the CSV export of the monthly report", task="x", repo="/r")
    title = followup_title(parent, "could you also make the export stream rows instead of building one big list?")
    assert len(title) <= 80 and title.endswith("…") and " " not in title[-2:]
    assert title.startswith("Speed up the CSV export of the monthly report: make the export stream rows")


def test_a_steer_route_tells_its_job_and_an_ended_job_refuses(conversation, tmp_path):
    from assistant.conversation.router import STEER, route_message
    from assistant.jobs.steering import SteerRefused
    from assistant.store import NotFound

    thread = conversation.store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    job = conversation.delegate(thread.id, None, "Sort the results", Route(JOB, None, "asks for a change"))[0]
    route = route_message("now: use a set for the lookups", conversation.thread_jobs(thread.id), None)
    assert (route.kind, route.job_id, route.now) == (STEER, job.id, True)
    steered, message = conversation.steer(thread.id, None, "now: use a set for the lookups", route)
    assert steered.id == job.id and (message.text, message.now, message.state) == ("use a set for the lookups", True,
                                                                                  "queued")
    assert [(e.kind, e.text) for e in conversation.store.read_events(job.id) if e.kind.startswith("steer")] == \
        [("steer_queued", "use a set for the lookups")]
    # /steer 1 text: the command's arguments are not part of the message
    command = route_message("1 also the empty list", conversation.thread_jobs(thread.id), None, command="steer")
    assert conversation.steer(thread.id, None, "1 also the empty list", command)[1].text == "also the empty list"
    other = conversation.store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    with pytest.raises(NotFound):
        conversation.steer(other.id, None, "also x", Route(STEER, job.id, "", "command"))
    conversation.store.transition(job.id, "cancelled", reason="cancelled by the user")
    with pytest.raises(SteerRefused, match="already ended .cancelled.*follow-up"):
        conversation.steer(thread.id, None, "also x", Route(STEER, job.id, "", "command"))


def test_only_the_steer_command_has_arguments_to_take_off():
    from assistant.conversation.router import STEER
    from assistant.conversation.service import steer_words
    assert steer_words("2 now: use a set", Route(STEER, "j2", "/steer chosen", "command", now=True)) == "use a set"
    assert steer_words("2 more tests please", Route(STEER, "j2", "you sent it to the job", "choice")) == \
        "2 more tests please"
    assert steer_words("now: use a set", Route(STEER, "j2", "", "rules", now=True)) == "use a set"
    assert steer_words("stop, use a set", Route(STEER, "j2", "", "rules", now=True)) == "stop, use a set"


# ---------------------------------------------------------------------- reviews
def test_a_review_route_queues_a_review_job_of_the_conversations_repository(conversation, tmp_path):
    from assistant.conversation.router import ReviewAsk
    from assistant.jobs.review import REVIEW_REQUEST, ReviewRequest
    from tests.fixtures.chunks import CHUNKS_BUGGY, make_chunks_repo

    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    thread = conversation.store.create_thread(user_id=None, repo=str(repo))
    job = conversation.review(thread.id, None, ReviewAsk(head="feature", base="main"))
    request = ReviewRequest.from_json(conversation.store.get_artifact(job.id, REVIEW_REQUEST))
    assert (request.mode, request.head_ref, request.base_ref) == ("branch", "feature", "main")
    assert job.thread_id == thread.id and job.title == "Review feature against main"


def test_a_review_of_a_branch_that_does_not_exist_says_what_to_do_and_queues_nothing(conversation, tmp_path):
    from assistant.conversation.router import ReviewAsk
    from assistant.jobs.review import ReviewError
    from tests.fixtures.chunks import CHUNKS_BUGGY, make_chunks_repo

    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    thread = conversation.store.create_thread(user_id=None, repo=str(repo))
    with pytest.raises(ReviewError) as raised:
        conversation.review(thread.id, None, ReviewAsk(head="fix-logn", base="main"))
    message = str(raised.value)
    assert "'fix-logn' does not exist" in message and "branches: feature, main" in message
    assert "Nothing was started: push or create fix-logn" in message and "/review --base main BRANCH" in message
    assert conversation.store.list_jobs(thread_id=thread.id) == []


def test_a_review_of_a_job_of_another_conversation_is_refused(conversation, tmp_path):
    from assistant.conversation.router import ReviewAsk
    from assistant.store import NotFound

    mine = conversation.store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    other = conversation.store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    theirs = parent_job(conversation, other, "succeeded", "fix")
    with pytest.raises(NotFound, match="not of this conversation"):
        conversation.review(mine.id, None, ReviewAsk(job_id=theirs.id))
