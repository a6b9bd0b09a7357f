"""A cancelled job's card keeps the step it was on and says plainly why it has no diff; a quick answer's read
tool output is shown verbatim in a code block."""
from __future__ import annotations

from assistant.domain import states
from assistant.web.cards import language_of, render_job_card, tool_output_block

GONE = ("(the diff could not be computed: the sandbox's command server is gone. The container exited with "
        "code 137.)")


def cancelled_job(store, events, diff: str | None = GONE):
    job = store.create_job(task="Slowly count", repo="/r", thread_id="t1", title="Slowly count",
                           state=states.CANCELLED, reason="cancelled by the user")
    for kind, data in events:
        store.add_event(job.id, kind, data)
    if diff is not None:
        store.put_artifact(job.id, "diff", diff)
    return job


def test_a_cancelled_card_keeps_the_step_it_was_on_and_hides_the_internal_error(store):
    job = cancelled_job(store, [
        ("step", {"step": 1, "tool": "shell", "title": "$ ls", "exit_code": 0, "ok": True}),
        ("step_stopped", {"step": 2, "tool": "shell", "title": "$ for i in $(seq 1 300); do sleep 1; done",
                          "state": states.CANCELLED}),
    ])
    card = render_job_card(store, job.id)
    assert "✔ step 1: `$ ls` → exit 0" in card
    assert "■ step 2: `$ for i in $(seq 1 300); do sleep 1; done` — stopped by the cancel" in card
    assert "#### Diff\n\n*No diff: the job was cancelled before it changed anything.*" in card
    assert "command server" not in card and "137" not in card


def test_a_job_cancelled_after_an_edit_does_not_claim_it_changed_nothing(store):
    job = cancelled_job(store, [
        ("step", {"step": 1, "tool": "apply_patch", "title": "apply_patch: M calc.py", "exit_code": 0, "ok": True}),
    ])
    card = render_job_card(store, job.id)
    assert "before it changed anything" not in card
    assert "*No diff: the job was cancelled after 1 edit, and its sandbox was stopped before the changes could be " \
           "collected.*" in card


def test_a_cancelled_job_without_a_diff_artifact_still_says_why(store):
    job = cancelled_job(store, [("step", {"step": 1, "tool": "shell", "title": "$ ls", "exit_code": 0, "ok": True})],
                        diff=None)
    assert "No diff: the job was cancelled before it changed anything." in render_job_card(store, job.id)


def test_a_failed_job_still_shows_why_its_diff_is_missing(store):
    job = store.create_job(task="t", repo="/r", thread_id="t1", state=states.FAILED, reason="boom")
    store.put_artifact(job.id, "diff", GONE)
    assert "command server is gone" in render_job_card(store, job.id)


def test_tool_output_is_a_code_block_in_the_files_language():
    source = 'from __future__ import annotations\n\n\ndef f():\n    return "```"\n'
    block = tool_output_block("read_file", {"path": "pkg/mod.py"}, source)
    assert block.startswith("````python\n") and block.endswith("\n````")
    assert "from __future__ import annotations\n\n\ndef f():\n    return \"```\"" in block  # verbatim, indented
    assert tool_output_block("search", {"pattern": "add"}, "calc.py:4: def add").startswith("```text\n")
    assert tool_output_block("read_file", {"path": "Makefile"}, "all:").startswith("```makefile\n")
    assert language_of("a/b/c.unknownext") == "text" and language_of(".bashrc") == "text"
    assert language_of("x.TSX") == "tsx"


def steered_job(store, state, events):
    from assistant.domain.events import SteerAcknowledged, SteerDelivered, SteerQueued
    job = store.create_job(task="Sort", repo="/r", thread_id="t1", title="Sort the results", state=state)
    kinds = {"queued": SteerQueued, "delivered": SteerDelivered, "acknowledged": SteerAcknowledged}
    for kind, fields in events:
        store.append_event(job.id, kinds[kind](**fields))
    return job


def test_a_card_shows_each_steering_message_with_its_receipt(store):
    job = steered_job(store, states.RUNNING, [
        ("queued", {"message_id": "m1", "text": "also handle the empty list case"}),
        ("queued", {"message_id": "m2", "text": "stop, use pathlib instead", "now": True}),
        ("queued", {"message_id": "m3", "text": "and keep the *old* name"}),
        ("delivered", {"message_id": "m1", "step": 3}),
        ("acknowledged", {"message_id": "m1", "excerpt": "I'll add a check for [] first."}),
        ("delivered", {"message_id": "m2", "step": 4, "stopped": "$ sleep 100"}),
    ])
    card = render_job_card(store, job.id)
    assert "**Your messages to the job**" in card
    lines = card.split("**Your messages to the job**\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert lines == [
        "- \u201calso handle the empty list case\u201d — delivered (step 3) · acknowledged: "
        "\u201cI'll add a check for \\[\\] first.\u201d",
        "- **now** \u201cstop, use pathlib instead\u201d — delivered (step 4), stopped `$ sleep 100`",
        "- \u201cand keep the \\*old\\* name\u201d — queued: the agent reads it at its next step",
    ]


def test_a_message_the_job_never_read_says_so_once_it_ended(store):
    job = steered_job(store, states.SUCCEEDED, [("queued", {"message_id": "m1", "text": "also do X"})])
    card = render_job_card(store, job.id)
    assert "\u201calso do X\u201d — not delivered: the job ended before its agent read it" in card


def test_a_card_without_steering_has_no_such_section(store):
    job = steered_job(store, states.RUNNING, [])
    assert "Your messages" not in render_job_card(store, job.id)


def test_a_patch_acknowledging_a_message_is_quoted_by_the_files_it_touches(store):
    excerpt = 'apply_patch {"patch": "*** Begin Patch\\n*** Update File: calc.py\\n@@\\n def sub(a, b):\\n'
    job = steered_job(store, states.RUNNING, [("queued", {"message_id": "m1", "text": "use a set"}),
                                              ("delivered", {"message_id": "m1", "step": 2}),
                                              ("acknowledged", {"message_id": "m1", "excerpt": excerpt})])
    assert "— delivered (step 2) · acknowledged: \u201capply\\_patch: update calc.py\u201d" in render_job_card(store, job.id)


def asked_job(store, state, events):
    job = store.create_job(task="Sort", repo="/r", thread_id="t1", title="Sort the results", state=state)
    for event in events:
        store.append_event(job.id, event)
    return job


def test_a_waiting_card_quotes_the_question_and_says_what_answers_it(store):
    from assistant.domain.events import QuestionAsked
    job = asked_job(store, states.WAITING, [QuestionAsked("Keep the *old* name?", ["keep it", "rename"], 3, 600)])
    card = render_job_card(store, job.id)
    assert "**◇ waiting for you**" in card
    assert ("**The agent asks:**\n\n> Keep the \\*old\\* name?\n\nYour next message in this conversation answers "
            "it. Pick one of the buttons below, or type your answer.") in card
    assert "Asked:" not in card


def test_an_answered_or_timed_out_question_stays_on_the_card_as_history(store):
    from assistant.domain.events import QuestionAnswered, QuestionAsked, QuestionTimedOut
    job = asked_job(store, states.FAILED, [
        QuestionAsked("Which file?", [], 2, 600), QuestionAnswered("calc.py", 12.0, ["m1"]),
        QuestionAsked("Delete the tests?", ["yes", "no"], 5, 120), QuestionTimedOut("Delete the tests?", 120.4)])
    card = render_job_card(store, job.id)
    assert "Asked: \u201cWhich file?\u201d — answered: \u201ccalc.py\u201d" in card
    assert "Asked: \u201cDelete the tests?\u201d — no answer within 2 min" in card
    assert "The agent asks" not in card and "answers it" not in card


def test_only_a_waiting_job_offers_its_choices():
    from assistant.domain.events import QuestionAnswered, QuestionAsked
    from assistant.store import Job
    from assistant.web.cards import waiting_choices
    asked = [QuestionAsked("Keep it?", ["keep it", "rename"], 3, 600)]
    assert waiting_choices(Job(id="j", number=1, task="t", state=states.WAITING), asked) == ["keep it", "rename"]
    assert waiting_choices(Job(id="j", number=1, task="t", state=states.RUNNING), asked) == []
    answered = asked + [QuestionAnswered("keep it", 3.0, ["m1"])]
    assert waiting_choices(Job(id="j", number=1, task="t", state=states.WAITING), answered) == []
