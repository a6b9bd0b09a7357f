"""What a notification says, from a job row."""
from __future__ import annotations

import pytest

from assistant.notify.payload import ENDED, WAITING, job_notification, plain_excerpt
from assistant.store import Job


def job(**fields) -> Job:
    base = dict(id="a1b2c3d4", task="Fix it", repo="/src/calc", title="Fix it", state="failed",
                reason="the agent stopped", number=3, thread_id="t-1", summary=None, outcome={})
    base.update(fields)
    return Job(**base)


def test_citation_markers_are_removed_and_the_excerpt_is_cut_at_a_word():
    text = "The bug is in `add` 【F:calc.py†L1-L2】 and the test 【3fa9c1†L4-9】.\n\nIt now passes."
    assert plain_excerpt(text, 200) == "The bug is in `add` and the test. It now passes."
    cut = plain_excerpt("word " * 100, 40)
    assert len(cut) <= 40 and cut.endswith("word…")


def test_the_body_and_its_line_for_people():
    note = job_notification(job(summary="Found the cause 【F:calc.py†L1】.", outcome={"kind": "findings"}), ENDED,
                            "https://a.example.org/")
    body = note.to_dict()
    assert body["job_number"] == 3 and body["outcome"] == "findings" and body["summary"] == "Found the cause."
    assert body["link"] == "https://a.example.org/thread/t-1"
    assert note.text == ("Job 3 “Fix it” failed (findings) in /src/calc: Found the cause. "
                         "https://a.example.org/thread/t-1")


def test_a_job_outside_a_conversation_has_no_number_and_no_link():
    note = job_notification(job(thread_id=None, state="cancelled", reason="cancelled from the command line"), ENDED,
                            "https://a.example.org")
    assert note.job_number is None and note.link is None and note.summary is None
    assert note.text == "Job a1b2c3d4 “Fix it” was cancelled (cancelled from the command line) in /src/calc"


def test_the_waiting_event_takes_the_same_path_and_unknown_events_are_refused():
    assert "is waiting for you" in job_notification(job(state="running"), WAITING, None).text
    with pytest.raises(ValueError, match="unknown notification event 'started'; known: ended, waiting"):
        job_notification(job(), "started", None)


def test_a_waiting_job_carries_its_question_as_the_excerpt():
    note = job_notification(job(state="waiting", summary="an older summary"), WAITING, "https://a.example.org",
                            question="Keep the v1 API 【F:api.py†L3】, or move to v2?")
    assert (note.state, note.question, note.summary) == ("waiting", "Keep the v1 API, or move to v2?",
                                                         "Keep the v1 API, or move to v2?")
    assert note.text == ("Job 3 “Fix it” is waiting for your answer in /src/calc: Keep the v1 API, or move to v2? "
                         "https://a.example.org/thread/t-1")
    assert job_notification(job(), ENDED, None).question is None
