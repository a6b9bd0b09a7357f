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


def test_a_waiting_jobs_notification_says_the_question(store):
    from assistant.domain.events import QuestionAnswered, QuestionAsked
    from assistant.web.routes import waiting_questions
    waiting = store.create_job(task="Ask me", repo="/r", thread_id="t1", state="running")
    store.transition(waiting.id, "waiting")
    store.append_event(waiting.id, QuestionAsked("Keep the **old** name?", ["yes", "no"], 2, 600))
    ended = store.create_job(task="Asked once", repo="/r", thread_id="t1", state="running")
    store.append_event(ended.id, QuestionAsked("Which file?", [], 1, 600))
    store.append_event(ended.id, QuestionAnswered("calc.py", 2.0, ["m1"]))
    store.update_job(ended.id, summary="Done.")
    jobs = [store.get_job(waiting.id), store.get_job(ended.id)]
    questions = waiting_questions(store, jobs)
    assert questions == {waiting.id: "Keep the **old** name?"}
    signal = job_signal(jobs[0], questions.get(waiting.id))
    assert (signal["state"], signal["notify"], signal["text"]) == ("waiting", True, "Keep the old name?")
    assert job_signal(jobs[1], questions.get(ended.id))["text"] == "Done."
