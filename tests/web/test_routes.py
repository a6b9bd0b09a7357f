"""What the page's job notifications read from /jobs/signals: one job's signal."""
from __future__ import annotations

from assistant.web.relay import card_message_id
from assistant.web.routes import SIGNAL_TEXT_CHARS, job_signal


def test_a_signal_names_the_job_its_card_and_a_plain_line_about_it(store):
    job = store.create_job(task="Add mul\n\nmore words", repo="/r", thread_id="t1", state="running")
    signal = job_signal(job)
    assert signal == {"id": job.id, "number": job.number, "title": "Add mul", "state": "running", "thread": "t1",
                      "card": card_message_id(job.id), "kind": None, "notify": False, "text": ""}
    store.transition(job.id, "succeeded")
    store.update_job(job.id, summary="Added **`mul`** to calc.py 【F:calc.py†L12-L13】. " + "x" * 300,
                     outcome={"kind": "fix"})
    signal = job_signal(store.get_job(job.id))
    assert (signal["state"], signal["kind"], signal["notify"]) == ("succeeded", "fix", True)
    assert signal["text"].startswith("Added mul to calc.py. xxx") and len(signal["text"]) == SIGNAL_TEXT_CHARS


def test_a_job_waiting_for_the_user_notifies_too(store):
    job = store.create_job(task="Ask me", repo="/r", thread_id="t1", state="running")
    job.state = "waiting"   # the state another change adds; any value in NOTIFY_STATES notifies
    assert job_signal(job)["notify"] is True
