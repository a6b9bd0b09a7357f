"""What a card and an answer say in Markdown: invented links made plain, user text escaped, steps as commands."""
from __future__ import annotations

from assistant.domain import states
from assistant.domain.events import Routed
from assistant.web import cards
from assistant.web.cards import link_citations, plain, render_job_card, unlinked

INVENTED = "https://github.com/example/demo/blob/main/demo_repo.py#L47"


def links(text: str):
    return link_citations(text, [{"text": "【F:calc.py†L4-L5】", "kind": "file", "target": "calc.py", "start": 4,
                                  "end": 5, "valid": True, "reason": ""}],
                          lambda kind, target, start, end: f"/cite-thread/t/{target}?L={start}-{end}")


def test_only_checked_citations_are_links():
    md = links(f"See [demo_repo.py#L47]({INVENTED}), <{INVENTED}>, {INVENTED}. and 【F:calc.py†L4-L5】.")
    assert md.count("](") == 1 and "[calc.py \\#L4-5](/cite-thread/t/F:calc.py?L=4-5)" in md
    assert f"demo_repo.py#L47 (`{INVENTED}`)" in md
    assert f", `{INVENTED}`, `{INVENTED}`." in md  # the sentence's full stop stays outside the address
    assert "<http" not in md


def test_images_and_reference_links_are_made_plain_too():
    md = unlinked("![pixel](http://tracker.invalid/p.gif)\n\n[docs][1]\n\n[1]: https://docs.invalid/x\n")
    assert "![" not in md and "(`http://tracker.invalid/p.gif`)" in md
    assert "\\[1]: https://docs.invalid/x" not in md and "\\[1]: `https://docs.invalid/x`" in md


def test_code_keeps_its_links_as_written():
    text = "Run `curl https://a.invalid/x` then:\n\n```sh\ncurl [x](https://b.invalid)\n```\n"
    assert unlinked(text) == text


def test_user_text_is_shown_as_written():
    assert plain("calc/__init__.py *is* `new` | [x]") == "calc/\\_\\_init\\_\\_.py \\*is\\* \\`new\\` \\| \\[x\\]"


def job_with_events(store, events):
    job = store.create_job(task="Export mul from calc/__init__.py", repo="/r", thread_id="t1",
                           title="Export mul from calc/__init__.py")
    for kind, data in events:
        store.add_event(job.id, kind, data)
    return job


def test_steps_show_the_command_and_drop_raw_tool_calls(store):
    job = job_with_events(store, [
        ("message", {"text": '{"tool": "shell", "arguments": {"command": "ls"}}'}),
        ("message", {"text": "Looking around first.\n```tool shell\n{\"command\": \"ls\"}\n```"}),
        ("step", {"step": 1, "tool": "shell", "title": "$ ls -la", "exit_code": 0, "ok": True, "chunk_id": "abc123"}),
        ("step", {"step": 2, "tool": "apply_patch", "title": "apply_patch: M calc/__init__.py", "exit_code": 0,
                  "ok": True}),
    ])
    card = render_job_card(store, job.id)
    assert "### Job 1 · Export mul from calc/\\_\\_init\\_\\_.py" in card
    assert '"tool"' not in card and "```tool" not in card
    assert "» Looking around first." in card
    assert "✔ step 1: `$ ls -la` → exit 0 · [log](/cite/" in card
    assert "✔ step 2: apply_patch · M calc/\\_\\_init\\_\\_.py → exit 0" in card


def test_folded_steps_are_counted_by_kind_and_unfold(store):
    events = [("setup_command", {"command": "pip install -e .", "exit_code": 0, "duration_s": 1})]
    events += [("step", {"step": n, "tool": "shell", "title": f"$ echo {n}", "exit_code": 0, "ok": True})
               for n in range(1, 15)]
    events += [("message", {"text": "A note."})]
    job = job_with_events(store, events)
    folded = render_job_card(store, job.id)
    assert "… 3 earlier steps and 1 setup command not shown" in folded  # the note is the newest entry: shown
    assert "$ echo 3`" not in folded and "$ echo 4`" in folded and "» A note." in folded
    unfolded = render_job_card(store, job.id, all_steps=True)
    assert "not shown" not in unfolded and "pip install -e ." in unfolded and "$ echo 1`" in unfolded
    assert cards.progress_count(store, job.id) == 16


def test_a_card_says_how_it_was_routed_and_which_job_it_starts_from(store):
    parent = job_with_events(store, [])
    child = store.create_job(task="Also add a test", repo="/r", thread_id="t1", parent_job_id=parent.id,
                             title="Also add a test")
    store.append_event(child.id, Routed(text="Started as a job (asks for a change; decided by the "
                                             "first-pass rules) — it runs in a sandbox."))
    card = render_job_card(store, child.id)
    assert "*Started as a job (asks for a change; decided by the first-pass rules) — it runs in a sandbox.*" in card
    assert "Starts from the result of job 1 · Export mul from calc/\\_\\_init\\_\\_.py" in card
    assert cards.STATE_BADGES[states.QUEUED] in card
