"""Quick answers: streamed, grounded by read-only tools on the checkout, citations checked."""
from assistant.testing.scripted_model import Reply, by_turn
from tests.fixtures.repos import make_calc_repo

ANSWER = "You answer questions about a codebase"


def collect(events):
    events = list(events)
    tokens = "".join(e.text for e in events if e.kind == "token")
    return events, tokens, next((e for e in events if e.kind in ("done", "error")), None)


def test_streamed_answer_with_checked_citations(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(ANSWER, [by_turn(
        Reply.call("search", pattern="def add"),
        Reply.call("read_file", path="calc.py", start=1, end=2),
        Reply.text("`add` returns `a - b` 【F:calc.py†L1-L2】, which is the bug; not in 【F:calc.py†L40-L41】."),
    )], repeat_last=True)
    a = assistant_for(scripted_model)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, tokens, done = collect(a.conversation.answer(thread.id, "What does add do?"))
    assert done.kind == "done" and tokens == done.text
    assert sum(1 for e in events if e.kind == "token") > 3          # really streamed, in pieces
    tools = [e for e in events if e.kind == "tool"]
    assert tools[0].text == "search" and "calc.py:1:def add" in tools[0].data["output"]
    assert "    2 |     return a - b" in tools[1].data["output"]
    assert [(c["valid"], c["start"]) for c in done.data["citations"]] == [(True, 1), (False, 40)]
    md = a.conversation.render_citations(done.text, done.data["citations"], "/cite/t")
    assert "[calc.py \\#L1-2](/cite/t/F:calc.py?L=1-2)" in md and "unverified" in md
    assert a.store.usage_totals(thread_id=thread.id)[0] > 0
    assert (repo / "calc.py").read_text().count("a - b") == 1        # read-only


def test_answers_refuse_paths_outside_the_repo(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    (tmp_path / "secret.txt").write_text("top secret\n")
    scripted_model.when_system_contains(ANSWER, [by_turn(
        Reply.call("read_file", path="../secret.txt"), Reply.text("I cannot read that."))], repeat_last=True)
    a = assistant_for(scripted_model)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, _tokens, done = collect(a.conversation.answer(thread.id, "show me ../secret.txt"))
    tool = next(e for e in events if e.kind == "tool")
    assert "error" in tool.data["output"] and "top secret" not in tool.data["output"]


def test_missing_repo_and_dead_model_are_clear_errors(tmp_path, scripted_model, assistant_for):
    a = assistant_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=0)
    thread = a.store.create_thread(user_id=None, repo=str(tmp_path / "missing"))
    _e, _t, done = collect(a.conversation.answer(thread.id, "what is this?"))
    assert done.kind == "error" and "does not exist" in done.text
    repo = make_calc_repo(tmp_path / "calc")
    a.store.update_thread(thread.id, repo=str(repo))
    scripted_model.when_system_contains(ANSWER, [Reply.error(502)], repeat_last=True)
    _e, _t, done = collect(a.conversation.answer(thread.id, "what is this?"))
    assert done.kind == "error" and "502" in done.text
    assert a.store.get_thread(thread.id).repo == str(repo)   # nothing lost


def test_answer_budget_per_conversation(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(ANSWER, [Reply.text("short answer " * 50)], repeat_last=True)
    a = assistant_for(scripted_model, ASSISTANT_ANSWER_TOKEN_BUDGET=1000)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    for _ in range(20):
        _e, _t, done = collect(a.conversation.answer(thread.id, "x?"))
        if done.kind == "error":
            break
    assert done.kind == "error" and "ASSISTANT_ANSWER_TOKEN_BUDGET" in done.text
