"""Typed job events: one encoding for the store, the CLI, the relay and the cards; old rows still decode."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from assistant.cli import _progress_line
from assistant.domain import events as ev
from assistant.web.cards import render_job_card

ALL = [
    ev.StateChanged("queued", attempt=1, attempts=3), ev.StateChanged("failed", "setup failed"),
    ev.SetupCommandRan("pip install -e .", "a1b2c3", 0, 1.25, 12), ev.ToolStarted(2, "shell", {"command": "ls"}),
    ev.StepFinished(2, "shell", "ls", "d4e5f6", 0, 0.1, True, False), ev.AgentMessage("thinking", 3),
    ev.OutputDelta("line\n"), ev.Notice("weaker sandbox", "warning"),
    ev.SummaryWritten("done 【F:a.py†L1-L2】", [{"text": "x", "valid": True}]),
    ev.DiffComputed([["M", "a.py"]], 4, ["big.bin left out"]), ev.GroupRanked("g1", ["j2", "j1"], "j2"),
    ev.SandboxPlaced("engine-a", "c0ffee"), ev.Routed("a job: it asks for a change", "rules"),
    ev.Finished("succeeded", "2 citations"),
]


@pytest.mark.parametrize("event", ALL, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_its_encoding(event):
    kind, data = ev.encode(event)
    assert kind == event.kind and isinstance(data, dict)
    assert ev.decode(kind, data) == event
    update = ev.JobUpdate("job1", "thread1", event, 7)
    assert ev.JobUpdate.from_json(update.to_json()) == update


def test_rows_written_before_the_types_existed_decode():
    # The shapes the manager stored by hand in the first release.
    assert ev.decode("state", {"state": "queued", "attempt": 1, "attempts": 1}) == ev.StateChanged("queued", None, 1, 1)
    step = ev.decode("step", {"step": 1, "tool": "shell", "title": "malformed shell call", "ok": False})
    assert isinstance(step, ev.StepFinished) and not step.succeeded and step.chunk_id is None
    old_step = ev.decode("step", {"step": 4, "tool": "shell", "title": "make", "exit_code": 0})
    assert old_step.succeeded and old_step.duration_s is None
    assert ev.decode("diff", {"files": [], "diff_lines": 0}).notes == []
    assert ev.decode("notice", {"level": "warning", "text": "t"}).warning


def test_unknown_kinds_and_fields_are_kept_not_fatal():
    newer_kind = ev.decode("reviewed", {"text": "a job", "by": "rules"})  # a kind of a newer release
    assert isinstance(newer_kind, ev.UnknownEvent) and ev.encode(newer_kind) == ("reviewed", {"text": "a job", "by": "rules"})
    assert ev.decode("routed", {"text": "a job", "decided_by": "rules"}) == ev.Routed("a job", "rules")
    newer = ev.decode("state", {"state": "running", "engine_load": 0.5})
    assert newer == ev.StateChanged("running")


def test_ephemeral_events_are_marked_not_stored():
    assert not ev.OutputDelta("x").stored and not ev.ToolStarted().stored
    assert all(e.stored for e in ALL if not isinstance(e, (ev.OutputDelta, ev.ToolStarted)))


def test_store_writes_and_reads_typed_events(store):
    job = store.create_job(task="t", repo="/r")
    store.append_event(job.id, ev.SetupCommandRan("make", "abc123", 2, 0.5, 3))
    store.add_event(job.id, "reviewed", {"text": "by hand"})  # a newer release writing a kind this one lacks
    store.append_event(job.id, ev.Notice("careful", "warning"))
    read = store.read_events(job.id)
    assert read[0] == ev.SetupCommandRan("make", "abc123", 2, 0.5, 3)
    assert isinstance(read[1], ev.UnknownEvent) and read[2] == ev.Notice("careful", "warning")
    assert [r.kind for r in store.list_events(job.id)] == ["setup_command", "reviewed", "notice"]


def test_cli_lines_and_card_read_the_same_events(store):
    job = store.create_job(task="fix it", repo="/r")
    for event in (ev.StateChanged("preparing"), ev.SetupCommandRan("make", "abc123", 0, 0.5, 3),
                  ev.StepFinished(1, "shell", "pytest", "def456", 1, 0.2, False, True),
                  ev.AgentMessage("the test fails on purpose"), ev.Notice("the sandbox is weaker", "warning")):
        store.append_event(job.id, event)
    lines = [_progress_line(e) for e in store.read_events(job.id)]
    assert lines[0] == "preparing"
    assert lines[1].startswith("setup $ make") and "chunk abc123" in lines[1]
    assert lines[2] == "step 1: pytest → exit 1 (chunk def456)"
    assert lines[3] == "note: the test fails on purpose" and lines[4] == "warning: the sandbox is weaker"
    assert _progress_line(ev.OutputDelta("x")) is None
    card = render_job_card(store, job.id)
    assert "✔ setup `make` → exit 0 in 0.5 s" in card and "✖ step 1: pytest → exit 1 (tests)" in card
    assert "» the test fails on purpose" in card and "⚠ the sandbox is weaker" in card


def test_relay_tracks_the_current_tool_and_the_live_tail(store):
    from assistant.web.relay import JobRelay

    job = store.create_job(task="t", repo="/r")
    loop = asyncio.new_event_loop()
    try:
        relay = JobRelay(store, loop, actions_for=lambda _job, _source: [])
        relay.on_update(ev.JobUpdate(job.id, None, ev.ToolStarted(3, "shell", {"command": "pytest -q"})))
        relay.on_update(ev.JobUpdate(job.id, None, ev.OutputDelta("one\ntwo\n")))
        assert relay.current(job.id) == "step 3: $ pytest -q" and relay.tail(job.id) == "one\ntwo"
        relay.on_update(ev.JobUpdate(job.id, None, ev.StepFinished(3, "shell", "pytest -q", exit_code=0), 4))
        assert relay.current(job.id) is None and relay.tail(job.id) is None
    finally:
        loop.close()


def test_every_type_has_a_distinct_kind():
    kinds = [cls.kind for cls in ev.EVENT_TYPES.values()]
    assert len(kinds) == len(set(kinds))
    for cls in ev.EVENT_TYPES.values():
        assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                   for f in dataclasses.fields(cls)), f"{cls.__name__}: old rows may lack any field"


def test_cli_lines_of_a_question_say_how_to_answer_it():
    asked = _progress_line(ev.QuestionAsked("v1 or v2?", ["v1", "v2"], 2, 1800.0), "a1b2c3d4")
    assert asked == ('the agent asks: v1 or v2? (choices: v1 | v2)\n  waiting for your answer (up to 1800 s): '
                     'assistant jobs tell a1b2c3d4 "your answer"')
    assert _progress_line(ev.QuestionAnswered("v2", 12.4, ["m1"])) == "answered after 12 s: v2"
    assert _progress_line(ev.QuestionTimedOut("v1 or v2?", 1800.2)) == "no answer came within 1800 s"
    assert _progress_line(ev.StateChanged("waiting")) == "waiting"
