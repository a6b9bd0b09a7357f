"""Steering a running job through the store: JobManager.tell, the run's inbox and its `now` watch, the receipts,
a restart; the real runner and pipeline over the fake sandbox (no Docker) and the scripted model over HTTP."""
from __future__ import annotations

import threading
import time

import pytest

from assistant.domain import events as ev
from assistant.jobs import runner as runner_module
from assistant.jobs.manager import JobManager, JobRequest, tell_from_command_line
from assistant.jobs.pipeline import RunControl
from assistant.jobs.steering import SteerRefused
from assistant.llm.client import ModelClient
from assistant.sandbox import prepare as real_prepare
from assistant.store import Store
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from tests.fixtures.repos import make_calc_repo
from tests.jobs.fake_sandbox import FakeSandbox

AGENT = "You are a careful software engineer"


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

    def make():
        settings = settings_for(scripted_model)
        store = Store(settings.resolved_database_url)
        manager = JobManager(settings, store, ModelClient(settings))
        made.append(manager)
        return manager
    yield make
    for manager in made:
        manager.shutdown(wait_s=10)
        manager.store.close()


def _submit(manager, repo, **kw):
    return manager.submit(JobRequest(task="Look around", repo=str(repo), setup=[], **kw))[0]


def test_a_told_message_reaches_the_next_request_with_its_receipts(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command="sleep 0.5; echo one"), Reply.call("shell", command="echo two"),
        lambda r: Reply.text(f"Used v2 【{chunk_ids(r)[-1]}†L1-L1】."))], repeat_last=True)
    manager = managers()
    told = []
    live: list[ev.JobEventRecord] = []

    def on_update(update):
        live.append(update.event)
        if isinstance(update.event, ev.ToolStarted) and update.event.step == 1 and not told:
            told.append(manager.tell(update.job_id, "Use the v2 API, not v1.", user_id="ada"))
    manager.subscribe(on_update)
    job = manager.wait(_submit(manager, repo).id, timeout=60)
    assert job.state == "succeeded", job.reason
    [message] = manager.store.list_steer_messages(job.id)
    assert message.id == told[0].id and message.user_id == "ada" and not message.now
    assert (message.state, message.delivered_step, message.delivered_how) == ("acknowledged", 2, "turn")
    assert message.ack_excerpt == "shell: $ echo two" and message.acknowledged_at >= message.delivered_at
    second = scripted_model.requests[1]["messages"]
    assert second[-1]["role"] == "user" and "> Use the v2 API, not v1." in second[-1]["content"]
    stored = [e for e in manager.store.read_events(job.id) if e.kind.startswith("steer_")]
    assert stored == [ev.SteerQueued(message.id, "Use the v2 API, not v1.", False),
                      ev.SteerDelivered(message.id, 2, "turn", None),
                      ev.SteerAcknowledged(message.id, "shell: $ echo two")]
    assert [e for e in live if e.kind.startswith("steer_")] == stored   # subscribers heard the receipts live


def test_a_message_to_an_ended_job_is_refused(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command="ls"), Reply.text("Looked."))],
                                        repeat_last=True)
    manager = managers()
    job = manager.wait(_submit(manager, repo).id, timeout=60)
    assert job.state == "succeeded", job.reason
    with pytest.raises(SteerRefused, match=r"already ended \(succeeded\).*follow-up"):
        manager.tell(job.id, "one more thing")
    assert manager.store.list_steer_messages(job.id) == []
    running = manager.store.create_job(task="x", repo=str(repo))
    with pytest.raises(SteerRefused, match="empty"):
        manager.tell(running.id, "   ")


def test_a_queued_message_is_delivered_after_a_restart(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command="echo v2"), Reply.text("Done."))],
                                        repeat_last=True)
    first = managers()
    job = first.store.create_job(task="Look around", repo=str(repo), setup=[])  # queued when the process stopped
    message = first.tell(job.id, "Only touch calc.py.")
    first.shutdown(wait_s=5)
    first.store.close()

    second = managers()  # a new process on the same database
    second.runner.run(second.store.get_job(job.id), RunControl(), second._publish)
    assert second.store.get_job(job.id).state == "succeeded"
    task_turn = scripted_model.requests[0]["messages"][1]
    assert task_turn["role"] == "user" and "> Only touch calc.py." in task_turn["content"]
    [row] = second.store.list_steer_messages(job.id)
    assert (row.id, row.state, row.delivered_step, row.ack_excerpt) == (message.id, "acknowledged", 1, "shell: $ echo v2")


def test_now_from_another_process_stops_the_command_within_a_second_or_two(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command="sleep 60"),
        lambda r: Reply.text("Stopped as asked." if "stopped by the user's message" in str(r["messages"]) else "no"))],
        repeat_last=True)
    manager = managers()
    running = threading.Event()
    stopped_at: list[float] = []

    def on_update(update):
        if isinstance(update.event, ev.ToolStarted):
            running.set()
        if isinstance(update.event, ev.StepFinished):
            stopped_at.append(time.monotonic())
    manager.subscribe(on_update)
    job = _submit(manager, repo)
    assert running.wait(30)
    other = Store(manager.settings.resolved_database_url)   # `assistant jobs tell --now` writes only the store
    try:
        told_at = time.monotonic()
        tell_from_command_line(manager.settings, other, job.id, "Stop waiting.", now=True)
    finally:
        other.close()
    job = manager.wait(job.id, timeout=30)
    assert job.state == "succeeded" and job.summary == "Stopped as asked.", job.reason
    assert stopped_at and stopped_at[0] - told_at < 3
    [row] = manager.store.list_steer_messages(job.id)
    assert (row.state, row.delivered_step, row.stopped, row.now) == ("acknowledged", 2, "sleep 60", True)


def test_a_message_left_unread_is_dropped_when_the_job_ends(tmp_path, scripted_model, managers):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command="ls"), Reply.text("Looked."))],
                                        repeat_last=True)
    manager = managers()
    job = manager.store.create_job(task="x", repo=str(repo))
    manager.tell(job.id, "never read")
    manager.cancel(job.id)
    assert [m.state for m in manager.store.list_steer_messages(job.id)] == ["dropped"]


@pytest.mark.docker
def test_now_stops_sleep_60_in_a_real_container_and_the_job_goes_on(tmp_path, docker_engine, scripted_model,
                                                                    assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command="sleep 60"),
        lambda r: Reply.call("shell", command="echo after" if "stopped by the user's message" in str(r["messages"])
                             else "echo not-stopped"),
        lambda r: Reply.text(f"Went on 【{chunk_ids(r)[-1]}†L1-L1】."))], repeat_last=True)
    a = assistant_for(scripted_model)
    running = threading.Event()
    a.jobs.subscribe(lambda u: running.set() if isinstance(u.event, ev.ToolStarted) else None)
    job = a.jobs.submit(JobRequest(task="wait", repo=str(repo), setup=[]))[0]
    assert running.wait(120)
    time.sleep(1)
    told_at = time.monotonic()
    a.jobs.tell(job.id, "Do not wait for that.", now=True)
    job = a.jobs.wait(job.id, timeout=120)
    assert job.state == "succeeded", job.reason
    sleep, after = a.store.list_chunks(job.id)[:2]
    assert sleep.command == "sleep 60" and sleep.exit_code is None and sleep.duration_s < 10
    assert after.command == "echo after" and after.text == "after\n"   # the same container went on
    [row] = a.store.list_steer_messages(job.id)
    assert (row.state, row.stopped, row.delivered_step) == ("acknowledged", "sleep 60", 2)
    assert (row.delivered_at.replace(tzinfo=None) - row.created_at.replace(tzinfo=None)).total_seconds() < 5
    assert time.monotonic() - told_at < 60
