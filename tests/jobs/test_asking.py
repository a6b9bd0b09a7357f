"""The agent asks, the user answers (jobs/asking.py): the job waits in state `waiting` and a message told to it
answers; no answer in time ends it honestly; a waiting job is notified; the real runner and pipeline over the fake
sandbox (no Docker), the scripted model over HTTP, a webhook receiver on loopback."""
from __future__ import annotations

import json
import time

import pytest

from assistant.agent.asking import Question
from assistant.domain import events as ev
from assistant.domain import states
from assistant.jobs import runner as runner_module
from assistant.jobs.asking import StoreAsker, pending_question
from assistant.jobs.manager import JobManager, JobRequest
from assistant.jobs.pipeline import RunControl
from assistant.jobs.recorder import JobRecorder
from assistant.llm.client import ModelClient
from assistant.notify import verify
from assistant.sandbox import prepare as real_prepare
from assistant.store import Store
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from tests.fixtures.repos import make_calc_repo
from tests.jobs.fake_sandbox import FakeSandbox
from tests.notify.receiver import Receiver

AGENT = "You are a careful software engineer"
QUESTION = "Should the fix keep the v1 API or move to v2?"
ANSWER = "Move to v2, drop v1."
SECRET = "ask-secret"


@pytest.fixture
def fake_sandboxes(monkeypatch):
    """Every run of the job runner gets a fake sandbox (a temporary directory) instead of a container."""
    def start(**kw):
        return FakeSandbox.start(**kw)
    start.backend = "fake"

    def prepare(request, config, *, engine=None, warm=None, **callbacks):
        return real_prepare(request, config, start=start, **callbacks)
    monkeypatch.setattr(runner_module, "prepare", prepare)


@pytest.fixture
def managers(settings_for, scripted_model, fake_sandboxes):
    made = []

    def make(**overrides):
        settings = settings_for(scripted_model, **overrides)
        store = Store(settings.resolved_database_url)
        manager = JobManager(settings, store, ModelClient(settings))
        made.append(manager)
        return manager
    yield make
    for manager in made:
        manager.shutdown(wait_s=10)
        manager.store.close()


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def answered_in_tool_result(request: dict) -> bool:
    """The scripted model's check: the last message is the ask_user call's tool result carrying the answer."""
    last = request["messages"][-1]
    calls = [m for m in request["messages"] if m.get("role") == "assistant" and m.get("tool_calls")]
    asked = calls[-1]["tool_calls"][-1] if calls else None
    return (last["role"] == "tool" and asked is not None and asked["function"]["name"] == "ask_user"
            and last["tool_call_id"] == asked["id"] and ANSWER in last["content"])


def asking_script(scripted_model):
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command="echo looked"),
        Reply.call("ask_user", question=QUESTION, choices=["keep v1", "move to v2"]),
        lambda r: Reply.call("shell", command="echo v2" if answered_in_tool_result(r) else "echo no-answer-seen"),
        lambda r: Reply.text(f"Moved to v2 as you asked 【{chunk_ids(r)[-1]}†L1-L1】."))], repeat_last=True)


def submit(manager, repo, **kw):
    return manager.submit(JobRequest(task="Fix the API use", repo=str(repo), setup=[], **kw))[0]


def test_the_agent_asks_the_job_waits_and_a_told_answer_resumes_it(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    asking_script(scripted_model)
    manager = managers()
    live: list[ev.JobEventRecord] = []
    manager.subscribe(lambda update: live.append(update.event))
    job = submit(manager, repo)
    waiting = wait_for(lambda: manager.store.get_job(job.id).state == states.WAITING and manager.store.get_job(job.id),
                       "the job waits for the answer")
    assert waiting.state in states.ACTIVE and waiting.state not in states.TERMINAL
    asked = pending_question(manager.store.read_events(job.id))
    assert asked == ev.QuestionAsked(QUESTION, ["keep v1", "move to v2"], 2, manager.settings.ask_timeout_s)
    tools = [t["function"]["name"] for t in scripted_model.requests[0]["tools"]]
    assert tools == ["shell", "apply_patch", "ask_user"]
    requests_before = len(scripted_model.requests)
    time.sleep(1.5)   # waiting means no model call and no command: the agent is paused
    assert len(scripted_model.requests) == requests_before and manager.store.get_job(job.id).state == states.WAITING

    message = manager.tell(job.id, ANSWER)
    job = manager.wait(job.id, timeout=60)
    assert job.state == states.SUCCEEDED, job.reason
    assert [c.command for c in manager.store.list_chunks(job.id)] == ["echo looked", "echo v2"]  # the answer arrived
    assert pending_question(manager.store.read_events(job.id)) is None
    [row] = manager.store.list_steer_messages(job.id)
    assert (row.id, row.state, row.delivered_step, row.delivered_how) == (message.id, "acknowledged", 2, "answer")
    assert row.ack_excerpt == "shell: $ echo v2"
    stored = manager.store.read_events(job.id)
    states_seen = [e.state for e in stored if isinstance(e, ev.StateChanged)]
    assert states_seen == ["queued", "preparing", "running", "waiting", "running", "succeeded"]
    [answered] = [e for e in stored if isinstance(e, ev.QuestionAnswered)]
    assert answered.answer == ANSWER and answered.message_ids == [message.id] and answered.waited_s >= 1.5
    kinds = [e.kind for e in stored]
    assert kinds.index("question_asked") < kinds.index("steer_delivered") < kinds.index("question_answered")
    waits_at = next(i for i, e in enumerate(stored) if isinstance(e, ev.StateChanged) and e.state == states.WAITING)
    assert kinds.index("question_asked") < waits_at  # whoever sees the job waiting finds what it waits for
    assert [e.kind for e in live if e.kind.startswith("question_")] == ["question_asked", "question_answered"]
    assert job.running_at is not None and job.running_at < answered_at(manager.store, job.id)


def answered_at(store, job_id):
    [row] = [e for e in store.list_events(job_id) if e.kind == "question_answered"]
    return row.created_at


def test_no_answer_in_time_ends_the_job_failed_with_a_summary_that_says_so(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    asking_script(scripted_model)
    manager = managers(ASSISTANT_ASK_TIMEOUT_S=2)
    job = manager.wait(submit(manager, repo).id, timeout=90)
    assert job.state == states.FAILED
    assert QUESTION in job.reason and "did not come" in job.reason and "ASSISTANT_ASK_TIMEOUT_S" in job.reason
    assert "did not come" in job.summary            # the summary says it waited for an answer that never came
    assert job.outcome["kind"] == "no result"
    assert [c.command for c in manager.store.list_chunks(job.id)] == ["echo looked"]   # it did not go on
    stored = manager.store.read_events(job.id)
    [timed_out] = [e for e in stored if isinstance(e, ev.QuestionTimedOut)]
    assert timed_out.question == QUESTION and timed_out.waited_s >= 2
    assert [e.state for e in stored if isinstance(e, ev.StateChanged)][-2:] == ["waiting", "failed"]


def test_a_waiting_job_is_cancelled_at_once(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    asking_script(scripted_model)
    manager = managers()
    job = submit(manager, repo)
    wait_for(lambda: manager.store.get_job(job.id).state == states.WAITING, "the job waits")
    assert manager.cancel(job.id)
    job = manager.wait(job.id, timeout=30)
    assert job.state == states.CANCELLED and job.reason == "cancelled by the user"


def test_waiting_and_ended_jobs_are_notified_to_a_loopback_receiver(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    asking_script(scripted_model)
    with Receiver() as receiver:
        manager = managers(ASSISTANT_WEBHOOK_URLS=receiver.url, ASSISTANT_WEBHOOK_SECRET=SECRET,
                           ASSISTANT_PUBLIC_URL="https://assistant.example.org")
        thread = manager.store.create_thread(user_id=None, name="API")
        job = submit(manager, repo, thread_id=thread.id)
        [waiting] = receiver.wait_for(1, timeout=60)
        body = waiting.json
        assert waiting.headers["X-Assistant-Event"] == "waiting"
        assert verify(SECRET, waiting.body, waiting.headers["X-Assistant-Timestamp"],
                      waiting.headers["X-Assistant-Signature"])
        assert (body["event"], body["state"], body["question"], body["summary"]) == ("waiting", "waiting", QUESTION,
                                                                                     QUESTION)
        assert body["link"] == f"https://assistant.example.org/thread/{thread.id}"
        assert "is waiting for your answer" in body["text"] and QUESTION in body["text"]
        manager.tell(job.id, ANSWER)
        assert manager.wait(job.id, timeout=60).state == states.SUCCEEDED
        received = receiver.wait_for(2, timeout=60)
        ended = received[1]
        assert ended.headers["X-Assistant-Event"] == "ended" and ended.json["state"] == "succeeded"
        assert verify(SECRET, ended.body, ended.headers["X-Assistant-Timestamp"], ended.headers["X-Assistant-Signature"])
        assert ended.headers["X-Assistant-Delivery"] != waiting.headers["X-Assistant-Delivery"]
        wait_for(lambda: sorted(r.state for r in manager.store.list_notifications(job.id)) == ["delivered"] * 2,
                 "both deliveries are recorded")   # the receiver answers before the notifier records it
        assert sorted(r.event for r in manager.store.list_notifications(job.id)) == ["ended", f"waiting:{job.fence}.2"]


def test_the_asker_takes_every_message_queued_as_the_answer_and_goes_back_to_running(tmp_path, settings_for):
    settings = settings_for()
    store = Store(settings.resolved_database_url)
    try:
        job = store.create_job(task="x", repo="/src/calc")
        for state in ("preparing", "running"):
            store.transition(job.id, state)
        heard = []
        recorder = JobRecorder(store, store.get_job(job.id), lambda update: heard.append(update.event))
        asker = StoreAsker(recorder, RunControl(), timeout_s=30, poll_s=0.05,
                           on_wait=lambda waiting, question: heard.append((waiting.state, question.text)))
        first = store.add_steer_message(job.id, "Use v2.")
        second = store.add_steer_message(job.id, "And keep the tests.")
        reply = asker.ask(Question("Which API?", (), 4))
        assert reply.answer == "Use v2.\n\nAnd keep the tests." and reply.message_ids == [first.id, second.id]
        assert ("waiting", "Which API?") in heard
        assert store.get_job(job.id).state == states.RUNNING
        assert [m.delivered_how for m in store.list_steer_messages(job.id)] == ["answer", "answer"]
    finally:
        store.close()


def test_the_asker_of_a_job_cancelled_while_it_waits_returns_without_an_answer(tmp_path, settings_for):
    settings = settings_for()
    store = Store(settings.resolved_database_url)
    try:
        job = store.create_job(task="x", repo="/src/calc")
        for state in ("preparing", "running"):
            store.transition(job.id, state)
        control = RunControl()
        asker = StoreAsker(JobRecorder(store, store.get_job(job.id), lambda _u: None, control), control,
                           timeout_s=600, poll_s=0.05)
        import threading
        threading.Timer(0.5, control.cancel).start()
        reply = asker.ask(Question("Which API?"))
        assert reply.answer is None and reply.ended == "cancelled"
    finally:
        store.close()


def test_a_waiting_job_found_at_start_up_is_interrupted_with_a_reason_that_says_it_waited(tmp_path, settings_for):
    settings = settings_for()
    store = Store(settings.resolved_database_url)
    try:
        job = store.create_job(task="x", repo="/src/calc")
        for state in ("preparing", "running", "waiting"):
            store.transition(job.id, state)
        assert store.interrupt_orphaned_jobs() == [job.id]
        job = store.get_job(job.id)
        assert job.state == states.INTERRUPTED and "waiting for your answer" in job.reason
    finally:
        store.close()


def test_question_events_decode_from_their_stored_form():
    asked = ev.QuestionAsked("Which?", ["a", "b"], 3, 60.0)
    assert ev.decode(*ev.encode(asked)) == asked
    assert ev.decode("question_answered", {"answer": "a", "waited_s": 2.5, "message_ids": ["m1"]}) == \
        ev.QuestionAnswered("a", 2.5, ["m1"])
    assert ev.decode("question_timed_out", json.loads('{"question": "Which?", "waited_s": 60}')) == \
        ev.QuestionTimedOut("Which?", 60)


@pytest.mark.docker
def test_a_real_sandbox_outlives_its_time_limit_while_waiting_and_the_job_goes_on_in_it(tmp_path, docker_engine,
                                                                                       scripted_model, assistant_for):
    """The container is kept and its wall clock paused: a wait longer than ASSISTANT_JOB_MAX_SECONDS costs
    nothing, and the command after the answer runs in the same container (it reads the file the first one wrote)."""
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command="echo kept > /tmp/marker && echo wrote"),
        Reply.call("ask_user", question=QUESTION),
        lambda r: Reply.call("shell", command="cat /tmp/marker" if answered_in_tool_result(r) else "echo unanswered"),
        lambda r: Reply.text(f"Same sandbox 【{chunk_ids(r)[-1]}†L1-L1】."))], repeat_last=True)
    limit = 30
    a = assistant_for(scripted_model, ASSISTANT_JOB_MAX_SECONDS=limit)
    job = a.jobs.submit(JobRequest(task="Fix the API use", repo=str(repo), setup=[]))[0]
    wait_for(lambda: a.store.get_job(job.id).state == states.WAITING, "the job waits", timeout=120)
    time.sleep(limit + 5)                              # longer than the whole time limit, waiting
    assert a.store.get_job(job.id).state == states.WAITING
    a.jobs.tell(job.id, ANSWER)
    job = a.jobs.wait(job.id, timeout=120)
    assert job.state == states.SUCCEEDED, job.reason
    first, after = a.store.list_chunks(job.id)[:2]
    assert (first.text, after.command, after.exit_code, after.text) == ("wrote\n", "cat /tmp/marker", 0, "kept\n")
