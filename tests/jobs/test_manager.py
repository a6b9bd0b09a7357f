"""The job manager's ends that no run announces: `assistant jobs cancel` without the queue (cancel_here) and the
jobs found interrupted at start-up (interrupt_orphans, Assistant.start). Both are assessed and notified like any
other end: signed deliveries to a webhook receiver on loopback. No Docker."""
from __future__ import annotations

from assistant.domain import states
from assistant.jobs.manager import cancel_here, interrupt_orphans
from assistant.notify import Notifier, verify
from assistant.store import Store
from tests.notify.receiver import Receiver

SECRET = "manager-secret"


def _running_job(store: Store, state: str = states.RUNNING):
    job = store.create_job(task="Fix the failing test", repo="/src/calc", title="Fix the failing test")
    for step in ("preparing", "running", "waiting")[: ("preparing", "running", "waiting").index(state) + 1]:
        store.transition(job.id, step)
    return job


def test_a_cancel_from_the_command_line_is_assessed_and_notified(settings_for):
    with Receiver() as receiver:
        settings = settings_for(ASSISTANT_WEBHOOK_URLS=receiver.url, ASSISTANT_WEBHOOK_SECRET=SECRET)
        store = Store(settings.resolved_database_url)
        try:
            job = _running_job(store)
            assert cancel_here(settings, store, job.id)
            [got] = receiver.wait_for(1)   # tried before cancel_here returned
            assert got.headers["X-Assistant-Event"] == "ended" and got.json["state"] == "cancelled"
            assert got.json["reason"] == "cancelled from the command line"
            assert verify(SECRET, got.body, got.headers["X-Assistant-Timestamp"], got.headers["X-Assistant-Signature"])
            job = store.get_job(job.id)
            assert job.state == states.CANCELLED and job.summary and job.outcome.get("kind") == "no result"
            assert [r.state for r in store.list_notifications(job.id)] == ["delivered"]
            assert not cancel_here(settings, store, job.id)   # already ended: nothing more is sent
        finally:
            store.close()


def test_jobs_interrupted_at_start_up_are_notified_by_the_starting_server(settings_for, scripted_model):
    from assistant.core import Assistant

    with Receiver() as receiver:
        settings = settings_for(scripted_model, ASSISTANT_WEBHOOK_URLS=receiver.url, ASSISTANT_WEBHOOK_SECRET=SECRET)
        store = Store(settings.resolved_database_url)   # a server that died with a running and a waiting job
        try:
            running, waiting = _running_job(store), _running_job(store, states.WAITING)
        finally:
            store.close()
        assistant = Assistant(settings)
        try:
            assistant.start(sweep=False)
            got = receiver.wait_for(2, timeout=30)
            by_job = {r.json["job_id"]: r for r in got}
            assert set(by_job) == {running.id, waiting.id}
            for received in got:
                assert received.headers["X-Assistant-Event"] == "ended" and received.json["state"] == "interrupted"
                assert verify(SECRET, received.body, received.headers["X-Assistant-Timestamp"],
                              received.headers["X-Assistant-Signature"])
            assert "waiting for your answer" in by_job[waiting.id].json["reason"]
            assert assistant.store.get_job(running.id).summary   # assessed (the log digest)
        finally:
            assistant.close()


def test_interrupted_jobs_found_by_a_command_are_recorded_for_the_next_server(settings_for):
    with Receiver() as receiver:
        settings = settings_for(ASSISTANT_WEBHOOK_URLS=receiver.url)
        store = Store(settings.resolved_database_url)
        try:
            job = _running_job(store)
            assert interrupt_orphans(settings, store, "the process running this job died; retry it") == [job.id]
            [row] = store.list_notifications(job.id)
            assert (row.event, row.state, row.attempts) == ("ended", "pending", 0)   # not sent by a short command
            notifier = Notifier(settings, store)   # the next server's
            notifier.start()
            [got] = receiver.wait_for(1, timeout=30)
            notifier.close()
            assert got.json["state"] == "interrupted" and "died" in got.json["reason"]
        finally:
            store.close()
