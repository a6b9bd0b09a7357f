"""Webhook notifications of a job's end, through the job manager's real end path (JobManager.cancel ->
JobRunner.finish -> JobRecorder.announce_end) and, in one test, a whole job run on a fake sandbox with the
scripted model; a real HTTP receiver on loopback. No Docker."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from functools import partial

import pytest

from assistant.domain import states
from assistant.jobs import runner as runner_module
from assistant.jobs.manager import JobManager, JobRequest
from assistant.llm.client import ModelClient
from assistant.notify import Notifier, delivery_line
from assistant.notify.notifier import _utcnow
from assistant.sandbox import prepare
from assistant.store import Store
from tests.notify.receiver import BlackHole, Receiver

SECRET = "s3cret-for-tests"


class IdleExecution:
    """Jobs are admitted and never run: their end comes from a cancel, through the manager's one end path."""
    warm = None

    def __init__(self, store: Store):
        self.store = store

    def admit(self, fields):
        return self.store.create_job(**fields)

    def start(self, job):
        pass

    def stop(self, job_id):
        return False

    def publish(self, update):
        pass

    def wait(self, job_id, timeout):
        return self.store.get_job(job_id)

    def shutdown(self, cancel_running, wait_s):
        pass


@pytest.fixture
def managers(settings_for, scripted_model, data_dir):
    """make(urls, **settings) -> a JobManager on the test's database (a new Store each time, like a restart)."""
    made = []

    def make(urls, **overrides):
        settings = settings_for(scripted_model, ASSISTANT_WEBHOOK_URLS=",".join(urls), **overrides)
        store = Store(settings.resolved_database_url)
        manager = JobManager(settings, store, ModelClient(settings), IdleExecution(store))
        made.append(manager)
        return manager
    yield make
    for manager in made:
        manager.shutdown(wait_s=1)
        manager.store.close()


def end_a_job(manager: JobManager, thread_id: str | None = "thread-1"):
    job = manager.submit(JobRequest(task="Fix the failing test in calc.py\nand keep the rest", repo="/src/calc",
                                    thread_id=thread_id))[0]
    started = time.monotonic()
    assert manager.cancel(job.id)
    return manager.store.get_job(job.id), time.monotonic() - started


def wait_state(store: Store, job_id: str, wanted: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = store.list_notifications(job_id)
        if rows and all(r.state == wanted for r in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError(f"notifications of {job_id}: {[(r.state, r.attempts, r.last_error) for r in rows]}")


def test_a_signed_notification_reaches_the_receiver(managers):
    with Receiver() as receiver:
        manager = managers([receiver.url], ASSISTANT_WEBHOOK_SECRET=SECRET,
                           ASSISTANT_PUBLIC_URL="https://assistant.example.org/")
        job, _ = end_a_job(manager)
        [got] = receiver.wait_for(1)
        timestamp = got.headers["X-Assistant-Timestamp"]
        expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + got.body, hashlib.sha256).hexdigest()
        assert got.headers["X-Assistant-Signature"] == f"sha256={expected}"
        assert abs(int(timestamp) - time.time()) < 60
        wrong = hmac.new(b"another key", timestamp.encode() + b"." + got.body, hashlib.sha256).hexdigest()
        assert got.headers["X-Assistant-Signature"] != f"sha256={wrong}"
        assert got.headers["X-Assistant-Event"] == "ended" and got.headers["Content-Type"] == "application/json"
        body = got.json
        assert body["event"] == "ended" and body["job_id"] == job.id and body["job_number"] == 1
        assert body["state"] == states.CANCELLED == job.state
        assert body["reason"] == "cancelled by the user before it started"
        assert body["title"] == "Fix the failing test in calc.py"
        assert body["task"] == "Fix the failing test in calc.py and keep the rest"
        assert body["repo"] == "/src/calc" and body["thread_id"] == "thread-1"
        assert body["link"] == "https://assistant.example.org/thread/thread-1"
        assert body["outcome"] == job.outcome.get("kind")  # the assessment ran before the end was announced
        assert body["text"].startswith("Job 1 “Fix the failing test in calc.py” was cancelled")
        assert body["text"].endswith(" https://assistant.example.org/thread/thread-1") and "\n" not in body["text"]
        [row] = wait_state(manager.store, job.id, "delivered")
        assert row.attempts == 1 and row.last_status == 200 and row.last_error is None
        assert got.headers["X-Assistant-Delivery"] == row.id
        line = delivery_line(row)
        assert line.startswith(f"ended → http://127.0.0.1:{receiver.server.server_address[1]}/hooks/…: delivered at ")
        assert "after 1 attempt" in line and "secret-key-part" not in line


def test_a_receiver_that_fails_twice_gets_it_on_the_third_try(managers):
    with Receiver(statuses=[500, 500]) as receiver:
        manager = managers([receiver.url], ASSISTANT_WEBHOOK_SECRET=SECRET)
        job, _ = end_a_job(manager)
        first, second, third = receiver.wait_for(3)
        [row] = wait_state(manager.store, job.id, "delivered")
        assert row.attempts == 3 and row.last_status == 200
        assert first.body == second.body == third.body  # the same notification, signed anew each time
        assert {r.headers["X-Assistant-Delivery"] for r in (first, second, third)} == {row.id}
        # exponential backoff: 1 s, then 2 s
        assert 0.9 <= second.at - first.at < 1.9 and 1.9 <= third.at - second.at < 3.5
        time.sleep(0.5)
        assert len(receiver.received) == 3


def test_a_receiver_that_keeps_failing_is_recorded_failed_with_its_error(managers):
    with Receiver(statuses=[503, 503, 503]) as receiver:
        manager = managers([receiver.url], ASSISTANT_WEBHOOK_ATTEMPTS=2)
        job, _ = end_a_job(manager)
        receiver.wait_for(2)
        [row] = wait_state(manager.store, job.id, "failed")
        assert row.attempts == 2 and row.last_status == 503
        assert row.last_error == "HTTP 503 Service Unavailable: receiver says no"
        assert "X-Assistant-Signature" not in receiver.received[0].headers  # no secret: unsigned
        assert delivery_line(row).endswith("failed after 2 attempts; last error: HTTP 503 Service Unavailable: "
                                           "receiver says no")
        time.sleep(1.5)
        assert len(receiver.received) == 2


def test_a_dead_receiver_delays_neither_the_end_nor_the_other_receivers(managers):
    with BlackHole() as hole, Receiver() as receiver:
        manager = managers([hole.url, receiver.url], ASSISTANT_WEBHOOK_TIMEOUT_S=2, ASSISTANT_WEBHOOK_ATTEMPTS=1)
        job, took = end_a_job(manager)
        assert took < 1.0, f"ending the job took {took:.2f} s"
        assert manager.store.get_job(job.id).state == states.CANCELLED
        ended = time.monotonic()
        [got] = receiver.wait_for(1)
        assert got.at - ended < 1.5  # not behind the hanging one's 2 s
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = {r.url: r for r in manager.store.list_notifications(job.id)}
            if rows[hole.url].state == "failed":
                break
            time.sleep(0.05)
        assert rows[receiver.url].state == "delivered"
        assert rows[hole.url].state == "failed" and rows[hole.url].attempts == 1
        assert "2 s" in rows[hole.url].last_error or "timed out" in rows[hole.url].last_error


def test_no_second_delivery_after_a_restart(managers):
    with Receiver() as receiver:
        first = managers([receiver.url], ASSISTANT_WEBHOOK_SECRET=SECRET)
        job, _ = end_a_job(first)
        receiver.wait_for(1)
        wait_state(first.store, job.id, "delivered")
        first.shutdown(wait_s=1)
        first.store.close()

        again = managers([receiver.url], ASSISTANT_WEBHOOK_SECRET=SECRET)  # a new store on the same database
        again.notifier.start()
        ended = again.store.get_job(job.id)
        # the end announced once more (a second process recording the same end) records and sends nothing
        again.runner.recorder(ended, lambda _u: None).announce_end(ended.state, ended.reason)
        assert again.notifier.notify(ended, "ended") == []
        time.sleep(1.0)
        assert len(receiver.received) == 1
        [row] = again.store.list_notifications(job.id)
        assert row.state == "delivered" and row.attempts == 1


def test_a_notification_left_unsent_goes_out_from_the_next_process(managers, settings_for, scripted_model):
    with Receiver() as receiver:
        first = managers([receiver.url])
        # a short-lived process (a cancel from the command line) only records
        first.notifier = Notifier(first.settings, first.store, deliver=False)
        first.runner.on_end = first.notifier.job_ended
        job, _ = end_a_job(first)
        time.sleep(0.3)
        assert receiver.received == [] and first.store.list_notifications(job.id)[0].state == "pending"

        again = managers([receiver.url])
        again.notifier.start()
        receiver.wait_for(1)
        wait_state(again.store, job.id, "delivered")
        time.sleep(0.3)
        assert len(receiver.received) == 1


def test_an_attempt_cut_short_by_its_process_stopping_is_not_sent_again(managers):
    with Receiver() as receiver:
        first = managers([receiver.url])
        first.notifier = Notifier(first.settings, first.store, deliver=False)
        first.runner.on_end = first.notifier.job_ended
        job, _ = end_a_job(first)
        [row] = first.store.list_notifications(job.id)
        # the process claimed it for an attempt ten minutes ago and was killed before recording the answer
        assert first.store.claim_notification(row.id, "dead-process", _utcnow() - timedelta(minutes=10))

        again = managers([receiver.url])
        again.notifier.start()
        [row] = wait_state(again.store, job.id, "failed")
        assert row.attempts == 1 and "not sent again" in row.last_error
        time.sleep(0.3)
        assert receiver.received == []


AGENT = "You are a careful software engineer"


def test_a_job_that_runs_to_its_end_notifies_with_its_plain_summary(managers, scripted_model, tmp_path, monkeypatch):
    from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
    from tests.fixtures.repos import FIX_PATCH, make_calc_repo
    from tests.jobs.fake_sandbox import FakeSandbox

    def start(**kw):
        return FakeSandbox.start(**kw)
    start.backend = "fake"

    def fake_prepare(request, config, *, engine=None, warm=None, **callbacks):
        return prepare(request, config, start=start, **callbacks)
    monkeypatch.setattr(runner_module, "prepare", fake_prepare)

    test_cmd = "python3 -m unittest -v 2>&1"

    def final(request):
        ids = chunk_ids(request)
        return Reply.text(f"`add` subtracted 【F:calc.py†L1-L2】; failing before 【{ids[0]}†L1-L3】, "
                          f"passing after 【{ids[2]}†L1-L3】.")
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=test_cmd),
                                                        Reply.call("apply_patch", patch=FIX_PATCH),
                                                        Reply.call("shell", command=test_cmd), final)],
                                        repeat_last=True)
    repo = make_calc_repo(tmp_path / "calc")
    with Receiver() as receiver:
        settings_manager = managers([receiver.url], ASSISTANT_SANDBOX_BACKEND="local",
                                    ASSISTANT_SETUP_CACHE="false")
        manager = JobManager(settings_manager.settings, settings_manager.store, settings_manager.model)
        try:
            job = manager.submit(JobRequest(task="Fix the failing test", repo=str(repo), setup=[],
                                            thread_id="thread-9"))[0]
            done = manager.wait(job.id, timeout=120)
            assert done.state == states.SUCCEEDED, done.reason
            [got] = receiver.wait_for(1)
        finally:
            manager.shutdown(wait_s=5)
    body = got.json
    assert body["state"] == "succeeded" and body["outcome"] == "fix" and body["job_number"] == 1
    assert body["summary"] == "`add` subtracted; failing before, passing after."
    assert "【" not in got.body.decode() and body["link"] is None
    assert body["text"] == ("Job 1 “Fix the failing test” succeeded (fix) in " + str(repo)
                            + ": `add` subtracted; failing before, passing after.")
