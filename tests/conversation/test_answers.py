"""Quick answers: streamed, grounded by read-only tools on the checkout, citations checked."""
import json
import uuid

import pytest

from assistant.access import RepoNotAllowed, RepoPolicy
from assistant.conversation.checkout import CheckoutError, check_repository
from assistant.domain.answers import AnswerAbout, AnswerDone, AnswerError, AnswerLookup, AnswerToken
from assistant.conversation.router import FOLLOWUP_ANSWER, Route
from assistant.testing.scripted_model import Reply, by_turn
from tests.fixtures.repos import make_calc_repo

ANSWER = "You answer questions about a codebase"


def collect(events):
    events = list(events)
    tokens = "".join(e.text for e in events if isinstance(e, AnswerToken))
    return events, tokens, next((e for e in events if isinstance(e, (AnswerDone, AnswerError))), None)


def test_streamed_answer_with_checked_citations(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(ANSWER, [by_turn(
        Reply.call("search", pattern="def add"),
        Reply.call("read_file", path="calc.py", start=1, end=2),
        Reply.text("`add` returns `a - b` 【F:calc.py†L1-L2】, which is the bug; not in 【F:calc.py†L40-L41】. "
                   "Changing the minus to a plus makes the test in test_calc.py pass again; nothing else calls it."),
    )], repeat_last=True)
    a = assistant_for(scripted_model)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, tokens, done = collect(a.conversation.answer(thread.id, "What does add do?"))
    assert isinstance(done, AnswerDone) and tokens == done.text
    assert sum(1 for e in events if isinstance(e, AnswerToken)) > 3          # really streamed, in pieces (a few words behind)
    tools = [e for e in events if isinstance(e, AnswerLookup)]
    assert tools[0].tool == "search" and "calc.py:1:def add" in tools[0].output
    assert "    2 |     return a - b" in tools[1].output
    assert [(c["valid"], c["start"]) for c in done.citations] == [(True, 1), (False, 40)]
    md = a.conversation.render_citations(done.text, done.citations, "/cite/t")
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
    tool = next(e for e in events if isinstance(e, AnswerLookup))
    assert "error" in tool.output and "top secret" not in tool.output


def test_missing_repo_and_dead_model_are_clear_errors(tmp_path, scripted_model, assistant_for):
    a = assistant_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=0)
    thread = a.store.create_thread(user_id=None, repo=str(tmp_path / "missing"))
    _e, _t, done = collect(a.conversation.answer(thread.id, "what is this?"))
    assert isinstance(done, AnswerError) and "does not exist" in done.text
    repo = make_calc_repo(tmp_path / "calc")
    a.store.update_thread(thread.id, repo=str(repo))
    scripted_model.when_system_contains(ANSWER, [Reply.error(502)], repeat_last=True)
    _e, _t, done = collect(a.conversation.answer(thread.id, "what is this?"))
    assert isinstance(done, AnswerError) and "502" in done.text
    assert a.store.get_thread(thread.id).repo == str(repo)   # nothing lost


def test_answer_budget_per_conversation(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(ANSWER, [Reply.text("short answer " * 50)], repeat_last=True)
    a = assistant_for(scripted_model, ASSISTANT_ANSWER_TOKEN_BUDGET=1000)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    for _ in range(20):
        _e, _t, done = collect(a.conversation.answer(thread.id, "x?"))
        if isinstance(done, AnswerError):
            break
    assert isinstance(done, AnswerError) and "ASSISTANT_ANSWER_TOKEN_BUDGET" in done.text


def finished_job(store, thread_id, repo, final_calc):
    """A job as the store keeps it after its workspace is gone: summary, diff, a log chunk, the cited file."""
    job = store.create_job(task="Fix the sign in add", repo=str(repo), thread_id=thread_id, title="Fix the sign in add")
    chunk = store.add_chunk(job_id=job.id, command="python3 -m unittest", text="..\nOK\n", exit_code=0)
    store.put_artifact(job.id, "diff", "diff --git a/calc.py b/calc.py\n-    return a - b\n+    return a + b\n")
    store.put_artifact(job.id, "cited_files", json.dumps({"calc.py": final_calc}))
    store.update_job(job.id, summary=f"Fixed add 【F:calc.py†L1-L2】; tests pass 【{chunk.id}†L2-L2】.")
    return store.get_job(job.id), chunk


def test_follow_up_answer_names_the_job_and_reads_its_stored_artifacts(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    final_calc = "def add(a, b):\n    return a + b\n\n\n# added by the job\ndef mul(a, b):\n    return a * b\n\n\n\n# end\n"
    a = assistant_for(scripted_model)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    job, chunk = finished_job(a.store, thread.id, repo, final_calc)
    scripted_model.when_system_contains(ANSWER, [by_turn(
        Reply.call("read_file", path="calc.py"),
        Reply.call("read_log", chunk=chunk.id),
        Reply.text(f"It changed the sign 【F:calc.py†L10-L11】 and the tests passed 【{chunk.id}†L2-L2】."),
    )], repeat_last=True)
    route = Route(FOLLOWUP_ANSWER, job.id, "asks about the job")
    events, _tokens, done = collect(a.conversation.answer(thread.id, "Why did you change add in job 1?", route))
    assert isinstance(events[0], AnswerAbout) and events[0].text == "About job 1 · Fix the sign in add"
    tools = [e for e in events if isinstance(e, AnswerLookup)]
    assert "as job 1 left it" in tools[0].output and "# added by the job" in tools[0].output
    assert "    2 | OK" in tools[1].output
    # Line 10 exists only in the job's version of calc.py (the checkout has 6 lines): checked against what it kept.
    assert [c["valid"] for c in done.citations] == [True, True]
    assert done.job_id == job.id and done.job_files == ["calc.py"]
    system = scripted_model.requests[-1]["messages"][0]["content"]
    assert "Fixed add" in system and "+    return a + b" in system and "calc.py" in system


def test_history_holds_the_conversation_not_the_apps_own_notices(tmp_path, scripted_model, assistant_for):
    a = assistant_for(scripted_model)
    thread = a.store.create_thread(user_id=None, repo=str(make_calc_repo(tmp_path / "calc")))

    def message(kind, text, step_type="assistant_message", **metadata):
        a.store.upsert_message(str(uuid.uuid4()), thread.id, type=step_type, output=text,
                               meta={"metadata": {"kind": kind, **metadata} if kind else metadata, "step": {}})

    message("header", "**Repository:** `/x`", step_type="system_message")
    message(None, "What does add do?", step_type="user_message")
    message("answer", "`add` subtracts 【F:calc.py†L1-L2】.\n\n*Answered directly (…)*", answer_text="`add` subtracts.")
    message("notice", "Repository set to `/y`; jobs run 1 attempt(s).")
    message("answer", "⚠ the model endpoint failed\n\n*Answered directly (…)*", answer_text="")
    message(None, "/jobs", step_type="user_message")
    message("notice", "| # | job | state |")
    a.store.upsert_message(str(uuid.uuid4()), thread.id, type="assistant_message", output="### Job 1 · card",
                           job_id="abc", meta={"metadata": {"job_id": "abc"}, "step": {}})
    assert a.conversation.history(thread.id) == [{"role": "user", "content": "What does add do?"},
                                                 {"role": "assistant", "content": "`add` subtracts."}]


def test_a_clone_failure_reads_as_one_clean_sentence(tmp_path, scripted_model, assistant_for):
    a = assistant_for(scripted_model)
    thread = a.store.create_thread(user_id=None, repo="http://127.0.0.1:9/org/missing.git")
    _e, _t, done = collect(a.conversation.answer(thread.id, "what is this?"))
    assert isinstance(done, AnswerError) and done.text.startswith("cannot clone http://127.0.0.1:9/org/missing.git: unable to access")
    assert str(a.settings.data_dir) not in done.text and "stderr" not in done.text and "Cloning" not in done.text
    assert "'http" not in done.text and "'\n" not in done.text and not done.text.endswith("'")  # no quotes of git's
    # no half-made clone left to pass for a good one (the lock files beside it may stay)
    assert not [p for p in (a.settings.data_dir / "checkouts").glob("*") if p.is_dir()]


def test_answers_refuse_a_repository_outside_the_roots(tmp_path, scripted_model, assistant_for):
    """Set when it was allowed, then the link was swapped: the answer refuses at use, and reads nothing."""
    root = tmp_path / "roots"
    make_calc_repo(root / "calc")
    (tmp_path / "outside").mkdir()
    (root / "current").symlink_to(root / "calc")
    a = assistant_for(scripted_model, ASSISTANT_USERS="ada:1,bob:2", ASSISTANT_REPO_ROOTS=str(root))
    thread = a.store.create_thread(user_id=None, repo=str(root / "current"))
    (root / "current").unlink()
    (root / "current").symlink_to(tmp_path / "outside")
    _e, _t, done = collect(a.conversation.answer(thread.id, "what is this?"))
    assert isinstance(done, AnswerError) and "outside the directories" in done.text
    assert not any(scripted_model.requests)  # the model was never asked, so it read nothing


def test_the_settings_check_says_what_is_wrong_with_a_repository(tmp_path, settings_for):
    policy = RepoPolicy.from_settings(settings_for())
    repo = make_calc_repo(tmp_path / "calc")
    assert check_repository(str(repo), policy) == str(repo)
    assert check_repository(f"file://{repo}", policy) == f"file://{repo}"  # a git URL that answers
    (tmp_path / "plain.txt").write_text("not a directory\n")
    for bad, reason in ((str(tmp_path / "missing"), "does not exist or is not a directory"),
                        (str(tmp_path / "plain.txt"), "does not exist or is not a directory"),
                        ("http://127.0.0.1:9/org/missing.git", "cannot reach http://127.0.0.1:9/org/missing.git: "
                                                              "unable to access"),
                        (f"file://{tmp_path / 'missing'}", "missing does not appear to be a git repository")):
        with pytest.raises((CheckoutError, RepoNotAllowed), match=reason):
            check_repository(bad, policy)


# ---------------------------------------------------------------------------------------------- guards
EXCERPTS = "You answer a developer's question about their code"
LOOPING = "The add function takes two numbers and gives back their difference, not their sum.\n\n" * 5


def echo_system(request: dict) -> Reply:
    return Reply.text(request["messages"][0]["content"])


def shown_text(events) -> str:
    """What a user saw at the end: tokens after the last retraction."""
    text = ""
    for e in events:
        if e.kind == "retract":
            text = ""
        elif e.kind == "token":
            text += e.text
    return text


@pytest.mark.parametrize("mode,marker", [("tools", ANSWER), ("excerpts", EXCERPTS)])
def test_an_echoing_model_never_reaches_the_user(tmp_path, scripted_model, assistant_for, mode, marker):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(marker, [echo_system], repeat_last=True)
    a = assistant_for(scripted_model, ASSISTANT_ANSWER_MODE=mode)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, tokens, done = collect(a.conversation.answer(thread.id, "What does add do?"))
    system = scripted_model.requests[0]["messages"][0]["content"]
    first_line = system.splitlines()[0]
    assert first_line not in tokens and first_line not in done.text       # not even streamed and taken back
    assert len([r for r in scripted_model.requests if marker in r["messages"][0]["content"]]) == 2   # one retry
    # The search result stands in, its citations valid by construction.
    assert done.kind == "done" and "search of the repository" in done.text and "`add`" in done.text
    assert "return a - b" in done.text and done.data["citations"]
    assert all(c["valid"] for c in done.data["citations"]) and shown_text(events) == done.text


def test_a_looping_model_is_stopped_before_its_second_copy(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(ANSWER, [Reply.text(LOOPING)], repeat_last=True)
    a = assistant_for(scripted_model, ASSISTANT_ANSWER_MODE="tools")
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, tokens, done = collect(a.conversation.answer(thread.id, "What does add do?"))
    assert tokens.count("gives back their difference") <= 2           # at most once per attempt, each taken back
    assert [e.kind for e in events].count("retract") == 2
    assert "gives back their difference" not in shown_text(events) and "gives back" not in done.text
    assert "search of the repository" in done.text and all(c["valid"] for c in done.data["citations"])


def test_a_retry_that_answers_well_is_the_answer(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(EXCERPTS, [
        Reply.text(LOOPING), Reply.text("`add` subtracts 【F:calc.py†L1-L2】: that is the bug.")])
    a = assistant_for(scripted_model, ASSISTANT_ANSWER_MODE="excerpts")
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, _tokens, done = collect(a.conversation.answer(thread.id, "What does add do?"))
    assert done.text == "`add` subtracts 【F:calc.py†L1-L2】: that is the bug." == shown_text(events)
    retry = scripted_model.requests[-1]["messages"][-1]["content"]
    assert "could not be shown (the reply repeats itself)" in retry


def test_excerpt_answers_search_read_and_cite_for_a_small_model(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(EXCERPTS, [Reply.text("`add` returns `a - b` 【F:calc.py†L1-L2】.")])
    a = assistant_for(scripted_model, ASSISTANT_ANSWER_MODE="excerpts")
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, _tokens, done = collect(a.conversation.answer(thread.id, "What does `add` return?"))
    tools = [(e.text, e.data["arguments"]) for e in events if e.kind == "tool"]
    assert ("search", {"pattern": r"\badd\b"}) in tools and ("read_file", {"path": "calc.py", "start": 1, "end": 6}) in tools
    [request] = scripted_model.requests
    assert "tools" not in request                                          # the product looked things up, not the model
    prompt = request["messages"][-1]["content"]
    assert "【F:calc.py†L1-L6】 calc.py lines 1-6:" in prompt and "    2 |     return a - b" in prompt
    assert prompt.rstrip().endswith("Question: What does `add` return?") and len(prompt) < 4000
    assert [c["valid"] for c in done.data["citations"]] == [True]


def test_an_excerpt_answer_that_cites_nothing_names_what_it_read(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(EXCERPTS, [Reply.text("It subtracts instead of adding.")])
    a = assistant_for(scripted_model, ASSISTANT_ANSWER_MODE="excerpts")
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, tokens, done = collect(a.conversation.answer(thread.id, "What does add do?"))
    assert done.text.startswith("It subtracts instead of adding.\n\nBased on: 【F:calc.py†L1-L6】")
    assert tokens == done.text and all(c["valid"] for c in done.data["citations"])


def test_an_answer_cut_at_the_length_limit_says_so(tmp_path, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(ANSWER, [Reply(content="`add` returns `a - b` 【F:calc.py†L1-L2】 and then",
                                                       finish_reason="length")])
    a = assistant_for(scripted_model, ASSISTANT_ANSWER_MODE="tools", ASSISTANT_ANSWER_MAX_TOKENS=64)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    _events, tokens, done = collect(a.conversation.answer(thread.id, "What does add do?"))
    assert done.text.startswith("`add` returns `a - b` 【F:calc.py†L1-L2】 and then")
    assert "cut here at the length limit of 64 tokens" in done.text and tokens == done.text


def test_cli_ask_shows_nothing_of_an_echoing_or_looping_model(tmp_path, scripted_model):
    import os
    import subprocess
    import sys
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains("You route messages", [Reply.text(
        '{"route": "answer", "followup": false, "reason": "a question"}')], repeat_last=True)
    scripted_model.when_system_contains(ANSWER, [echo_system, Reply.text(LOOPING)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(tmp_path / "data"), OPENAI_BASE_URL=scripted_model.base_url,
               OPENAI_API_KEY="k", ASSISTANT_MODEL="scripted-model", ASSISTANT_SANDBOX_BACKEND="local",
               ASSISTANT_CONFIG=str(tmp_path / "none.toml"), NO_PROXY="127.0.0.1,localhost")
    proc = subprocess.run([sys.executable, "-m", "assistant.cli", "ask", "--repo", str(repo), "What does add do?"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "You answer questions about a codebase" not in proc.stdout
    assert proc.stdout.count("gives back their difference") <= 1
    assert "search of the repository" in proc.stdout and "return a - b" in proc.stdout
    assert "[calc.py:L1-6 ✓]" in proc.stdout and "【" not in proc.stdout   # rendered as `run` renders them



def test_question_terms_put_identifiers_first():
    from assistant.conversation.retrieval import question_terms
    assert question_terms("Why does `parse_date` fail for ISO strings in utils/dates.py?") == [
        "parse_date", "ISO", "dates.py", "fail", "strings", "utils"]
    assert question_terms("What does the add function return?") == ["add"]


def test_joined_citations_of_a_small_model_are_split_and_checked():
    from assistant.conversation.retrieval import split_joined_citations
    assert split_joined_citations("It is used 【F:calc.py†L1-L6, F:test_calc.py†L8-L15】.") == \
        "It is used 【F:calc.py†L1-L6】【F:test_calc.py†L8-L15】."
    assert split_joined_citations("x 【F:a.py†L1; b.py†L2-L3】") == "x 【F:a.py†L1】【F:b.py†L2-L3】"
    assert split_joined_citations("not 【a list, of things】 here") == "not 【a list, of things】 here"
    assert split_joined_citations("one 【F:a.py†L1-L2】") == "one 【F:a.py†L1-L2】"
