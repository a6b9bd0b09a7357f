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
        Reply.text("`add` returns `a - b` 【F:calc.py†L1-L2】, which is the bug; not in 【F:calc.py†L40-L41】."),
    )], repeat_last=True)
    a = assistant_for(scripted_model)
    thread = a.store.create_thread(user_id=None, repo=str(repo))
    events, tokens, done = collect(a.conversation.answer(thread.id, "What does add do?"))
    assert isinstance(done, AnswerDone) and tokens == done.text
    assert sum(1 for e in events if isinstance(e, AnswerToken)) > 3          # really streamed, in pieces
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
