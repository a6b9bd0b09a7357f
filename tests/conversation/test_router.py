import re

import pytest

from assistant.conversation.route_classifier import RouteClassifier, shipped_classifier
from assistant.conversation.router import (ROUTER_PROMPT_MARKER, continuation_refusal, resolve_job_reference,
                                           SteerCommandError, route_message, route_schema)
from assistant.conversation.signals import find_job_reference
from assistant.llm.client import ModelClient
from assistant.store import Job
from assistant.testing.scripted_model import Reply

ROUTER = "You route messages"
REPO = "/srv/calc"


def jobs(*titles, state="succeeded", repo=REPO):
    return [Job(id=f"j{i}", number=i, title=t, task=t, state=state, repo=repo) for i, t in enumerate(titles, 1)]


@pytest.mark.parametrize("text,kind", [
    ("What does the parser do with tabs?", "answer"),
    ("where is the config loaded", "answer"),
    ("Explain how the plugin loader finds plugins.", "answer"),
    ("Fix the failing test in test_calc.py", "job"),
    ("Please add type hints to utils.py", "job"),
    ("Can you refactor the cache into its own module?", "job"),
    ("Where is the SQL for search built? Move it into the repository layer.", "job"),
    ("Should we split the module? Just tell me, don't change anything.", "answer"),
    ("thanks!", "answer"),
    ("How do I run the tests?", "answer"),   # a question about running is no order to run
    ("How would I add a subcommand?", "answer"),   # a work verb in a question is no order: the user will do it
    ("Can the parser handle nested quotes?", "answer"),   # asks whether the code can, not the assistant to
    ("when would I use the batch endpoint instead of the single one", "answer"),
    ("any reason we're still on python 3.9", "answer"),
    ("go over the caching strategy for me", "answer"),
    ("I want to add a new cake category myself, where are categories defined?", "answer"),   # the user will change it
    ("I tried fixing it myself but the import still crashes on empty files", None),
    ("could the signup form validate emails before submitting?", None),   # proposes work as a question: judgement
    ("When I upload a file with a space in its name the import crashes", None),   # a bug report, not a question
    ("is there a reason we don't cache the rates? if not lets add a cache", "job"),
    ("Got this in prod, any idea why? I don't want a fix yet\n```\nTimeoutError: pool limit reached\n```", "answer"),
])
def test_obvious_cases_need_no_model(text, kind):
    route = route_message(text, [], None)
    if kind is None:
        assert route.decided_by == "fallback"
    else:
        assert (route.kind, route.decided_by) == (kind, "rules")


@pytest.mark.parametrize("text", [
    "Saving a profile with an emoji in the name throws a 500.",
    "What does this mean?\nTraceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'",
    "got this, is it my config?\n```\nKeyError: 'SECRET_KEY'\n```",
    "How would you add a subcommand?",   # asks the assistant how it would change something: judgement, not a rule
    "why is the export slow, and can we speed it up?",
])
def test_rules_leave_what_needs_judgement_open(text):
    assert route_message(text, [], None).decided_by == "fallback"


@pytest.mark.parametrize("text", [
    "Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'",
    "this blows up on startup\n\nImportError: cannot import name 'x' from 'y'",
    "run the tests and tell me what fails",
    "can you run mypy and report the errors?",
    "find and fix the memory leak in the resizer",
    "look into why the export is slow and fix it",
])
def test_rules_send_pasted_errors_runs_and_find_and_fix_to_a_job(text):
    route = route_message(text, [], None)
    assert (route.kind, route.decided_by) == ("job", "rules")


@pytest.mark.parametrize("text,number,by", [
    ("why did you change calc.py in job 1?", 1, "number"),
    ("what tests did you add in #2?", 2, "number"),
    ("follow up on job #2: default to false", 2, "number"),
    ("Why did the second job touch the lexer?", 2, "ordinal"),
    ("Redo the first one without the new dependency", 1, "ordinal"),
    ("the last one left a debug print in", 3, "last"),
    ("on top of the previous job, add a flag", 3, "last"),
    ("why did the regex fix touch dates.py?", 1, "title"),
    ("what went wrong with the type hints one?", 2, "title"),
])
def test_job_references(text, number, by):
    js = jobs("Fix the regex in parse_date", "Add type hints to utils.py", "Speed up the CSV export")
    ref = find_job_reference(text, js)
    assert (ref.job.number, ref.by) == (number, by)
    assert resolve_job_reference(text, js).number == number


def test_a_title_matches_plurals_and_third_persons():
    js = jobs("Fix login crash", "Add retry to the uploader")
    assert find_job_reference("still crashes when the email has a plus", js).job.number == 1
    assert find_job_reference("how many retries does it do", js).job.number == 2


def test_no_reference_when_nothing_names_a_job():
    js = jobs("Fix the regex in parse_date", "Add type hints to utils.py")
    assert resolve_job_reference("how does the scheduler work?", js) is None
    assert resolve_job_reference("look at job 7", js) is None          # no such job
    assert resolve_job_reference("what about #1", []) is None
    # two titles share as many words: no guess
    assert resolve_job_reference("what about the parser", jobs("Speed up the parser", "Document the parser")) is None


def test_follow_ups_refer_to_jobs_by_number_ordinal_or_last():
    js = jobs("Fix the add function", "Speed up the parser")
    assert route_message("why did you change calc.py in job 1?", js, None).job_id == "j1"
    assert route_message("Why did the second job touch the lexer?", js, None).job_id == "j2"
    r = route_message("job 1 missed the None case — can you amend it?", js, None)
    assert (r.kind, r.job_id, r.reference, r.decided_by) == ("followup_job", "j1", "number", "rules")
    r = route_message("what did you run?", jobs("Fix the add function"), None)
    assert (r.kind, r.job_id, r.decided_by) == ("followup_answer", "j1", "rules")


def test_commands_force_either_way():
    assert route_message("Fix everything", [], None, command="ask").kind == "answer"
    assert route_message("What is this?", [], None, command="code").kind == "job"
    assert route_message("what about job 1", jobs("x"), None, command="code").kind == "followup_job"
    assert route_message("what about job 1", jobs("x"), None, command="ask").kind == "followup_answer"


# ---------------------------------------------------------------------- chaining refusals
def test_a_new_job_never_chains_to_a_job_on_another_repository_because_the_title_matches():
    failed_elsewhere = jobs("Fix the add function", state="failed", repo="/srv/calc")
    for text in ("Fix the add function", "Fix the add function so it handles floats"):
        r = route_message(text, failed_elsewhere, None, repo="https://github.com/acme/newcalc.git",
                          classifier=shipped_classifier())
        assert (r.kind, r.job_id) == ("job", None), r
    succeeded_elsewhere = jobs("Speed up the CSV export", repo="/srv/other")
    r = route_message("also speed up the CSV export", succeeded_elsewhere, None, repo=REPO, command="code")
    assert (r.kind, r.job_id) == ("job", None) and "another repository" in r.reason


@pytest.mark.parametrize("state", ["failed", "cancelled", "interrupted"])
def test_a_title_or_the_default_never_picks_a_job_that_did_not_succeed(state):
    js = jobs("Upgrade Django to 5.0", state=state)
    by_title = route_message("Upgrade Django to 5.0", js, None, repo=REPO, command="code")
    by_default = route_message("also add a test for that", js, None, repo=REPO, classifier=shipped_classifier())
    for r in (by_title, by_default):
        assert (r.kind, r.job_id) == ("job", None), r
        assert f"job 1 {state}" in r.reason


def test_naming_a_failed_job_builds_on_it():
    js = jobs("Add type hints to utils.py", state="failed")
    r = route_message("job 1 stopped halfway; fix the remaining type errors", js, None, repo=REPO)
    assert (r.kind, r.job_id, r.reference, r.decided_by) == ("followup_job", "j1", "number", "rules")
    r = route_message("Continue the last job and finish the type hints.", js, None, repo=REPO,
                      classifier=shipped_classifier())
    assert (r.kind, r.job_id, r.reference) == ("followup_job", "j1", "last")


def test_a_job_named_by_its_state_is_named_explicitly():
    js = [Job(id="j1", number=1, title="Bump lodash", task="x", state="failed", repo=REPO),
          Job(id="j2", number=2, title="Rename userId", task="x", state="succeeded", repo=REPO),
          Job(id="j3", number=3, title="Speed up ingest", task="x", state="cancelled", repo=REPO)]
    ref = find_job_reference("carry on from where the cancelled one stopped", js)
    assert (ref.job.number, ref.by, ref.explicit) == (3, "state", True)
    assert find_job_reference("retry the failed job with the flaky test skipped", js).job.number == 1
    assert find_job_reference("the running one", js) is None          # none is running: no guess
    r = route_message("pick up where the cancelled one left off", js, None, repo=REPO, classifier=shipped_classifier())
    assert (r.kind, r.job_id, r.reference) == ("followup_job", "j3", "state")


@pytest.mark.parametrize("text", ["good morning ☕", "lol ok", "thanks, that's super helpful 🙏", "ok cool, makes sense",
                                  "alright, that's all for now, cheers", "thanks, that was super helpful",
                                  "lol ok that makes sense", "ah ok, that clears it up", "haha fair enough",
                                  "thank you!! you're a lifesaver", "thanks, I'll try that"])
def test_small_talk_is_answered_even_in_a_conversation_with_jobs(text):
    r = route_message(text, jobs("Add pagination"), None, repo=REPO)
    assert (r.kind, r.decided_by) == ("answer", "rules")


@pytest.mark.parametrize("text", ["nice 👍 now add the same progress bar to downloads", "thanks. also add a test",
                                  "ok so where is the cache built?", "thanks, but it still fails", "ok it hangs on start",
                                  "thanks, that fixed it"])
def test_small_talk_with_more_to_it_is_not_small_talk(text):
    assert route_message(text, jobs("Add a progress bar"), None, repo=REPO).reason != "small talk"


def test_an_acknowledgement_before_a_question_leaves_the_question():
    r = route_message("Nice. Why did it need to change the Report model though?", jobs("Fix report rounding"), None,
                      repo=REPO)
    assert (r.kind, r.job_id, r.decided_by) == ("followup_answer", "j1", "rules")


def test_a_question_in_a_conversation_with_jobs_is_not_about_them_unless_it_points_back():
    clf = shipped_classifier()
    js = jobs("Add --json flag to the status command")
    r = route_message("which python versions does this project support", js, None, classifier=clf, repo=REPO)
    assert r.kind == "answer"
    r = route_message("can you tell me where the CORS headers get set", js, None, classifier=clf, repo=REPO)
    assert r.kind == "answer"
    r = route_message("did it change the help text too?", js, None, classifier=clf, repo=REPO)
    assert (r.kind, r.job_id) == ("followup_answer", "j1")
    r = route_message("the login form loses the email on a failed submit", js, None, classifier=clf, repo=REPO)
    assert r.kind == "job"


def test_a_running_job_is_no_starting_point():
    js = jobs("Upgrade pydantic", state="running")
    r = route_message("job 1: also bump fastapi", js, None, repo=REPO, command="code")
    assert (r.kind, r.job_id) == ("job", None) and "not finished" in r.reason
    assert continuation_refusal(js[0], REPO, "number") == "job 1 has not finished yet"
    # a question about it is fine
    r = route_message("What is job 1 doing right now?", js, None, repo=REPO)
    assert (r.kind, r.job_id) == ("followup_answer", "j1")


def test_repositories_compare_without_trailing_slash_or_dot_git():
    job = jobs("x", repo="https://github.com/acme/calc.git")[0]
    assert continuation_refusal(job, "https://github.com/acme/calc/", "default") is None
    assert continuation_refusal(job, "https://github.com/acme/calc2", "number").startswith("job 1 ran on another")


# ---------------------------------------------------------------------- the model and the classifier
def test_model_decides_the_unclear_ones(scripted_model, settings_for):
    scripted_model.when_system_contains(ROUTER, [
        Reply.text('{"route": "job", "followup": false, "job": null, "reason": "needs edits"}'),
        Reply.text('Sure! {"route": "answer", "followup": true, "job": 1, "reason": "about job 1"}'),
    ])
    client = ModelClient(settings_for(scripted_model))
    r = route_message("the login page breaks with long emails", [], client)
    assert (r.kind, r.decided_by, r.reason) == ("job", "model", "needs edits")
    r = route_message("the thing from before", jobs("Fix add"), client)
    assert (r.kind, r.job_id) == ("followup_answer", "j1")
    assert "job 1: Fix add (succeeded)" in scripted_model.requests[-1]["messages"][0]["content"]


def test_the_model_is_told_which_jobs_ran_elsewhere_and_cannot_chain_to_them(scripted_model, settings_for):
    scripted_model.when_system_contains(ROUTER, [
        Reply.text('{"route": "job", "followup": true, "job": "1", "reason": "same title"}')])
    client = ModelClient(settings_for(scripted_model))
    js = jobs("Fix the add function", state="failed", repo="/srv/calc")
    r = route_message("Fix the add function", js, client, repo="/srv/newcalc")
    assert (r.kind, r.job_id, r.decided_by) == ("job", None, "model")
    prompt = scripted_model.requests[-1]["messages"][0]["content"]
    assert "job 1: Fix the add function (failed, on another repository: /srv/calc)" in prompt


@pytest.mark.parametrize("reply", [Reply.text("I think it is a job"), Reply.text('{"route": "maybe"}'), Reply.error(500)])
def test_garbage_from_the_router_model_falls_back(scripted_model, settings_for, reply):
    scripted_model.when_system_contains(ROUTER, [reply], repeat_last=True)
    client = ModelClient(settings_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=0))
    r = route_message("the login page breaks with long emails", [], client)
    assert (r.kind, r.decided_by) == ("answer", "fallback")
    r = route_message("the login page breaks with long emails", [], client, classifier=shipped_classifier())
    assert (r.kind, r.decided_by) == ("job", "classifier") and "could not decide" in r.reason


# ---------------------------------------------------------------------- the embedded model: classifier, then model
SURE = RouteClassifier({"work": {"bias": 8.0, "weights": {}}, "followup": {"bias": -8.0, "weights": {}}})
UNSURE = RouteClassifier({"work": {"bias": 0.0, "weights": {}}, "followup": {"bias": 0.0, "weights": {}}})


def test_with_the_embedded_model_the_classifier_decides_what_it_is_sure_of(scripted_model, settings_for):
    scripted_model.when_system_contains(ROUTER, [Reply.text('{"route": "answer"}')], repeat_last=True)
    client = ModelClient(settings_for(scripted_model))
    r = route_message("the login page breaks with long emails", [], client, classifier=SURE, embedded=True,
                      constrained=True, model_below=0.6)
    assert (r.kind, r.decided_by) == ("job", "classifier")
    # by default the embedded model is never asked (it routes worse than the classifier), however unsure
    r = route_message("the numbers look odd", [], client, classifier=UNSURE, embedded=True, constrained=True)
    assert r.decided_by == "classifier"
    assert scripted_model.requests == []


def test_with_the_embedded_model_an_unsure_classifier_asks_the_model_under_a_schema(scripted_model, settings_for):
    scripted_model.when_system_contains(ROUTER, [Reply.text('{"route": "followup_job"}'),
                                                 Reply.text('{"route": "answer"}')])
    client = ModelClient(settings_for(scripted_model))
    js = jobs("Fix the off-by-one in paginate()", "Add CSV export")
    r = route_message("the numbers look odd now", js, client, classifier=UNSURE, embedded=True, constrained=True,
                      repo=REPO, model_below=0.6)
    assert (r.kind, r.job_id, r.decided_by, r.reference) == ("followup_job", "j2", "model", "default")
    request = scripted_model.requests[-1]
    assert request["messages"][0]["content"].startswith(ROUTER_PROMPT_MARKER)
    assert request["temperature"] == 0
    assert request["response_format"] == {"type": "json_object", "schema": route_schema(js)}
    assert route_schema(js)["properties"]["route"]["enum"] == ["answer", "job", "followup_answer", "followup_job"]
    # with no jobs, the model cannot pick a follow-up
    r = route_message("the numbers look odd", [], client, classifier=UNSURE, embedded=True, constrained=True,
                      model_below=0.6)
    assert (r.kind, r.decided_by) == ("answer", "model")
    assert scripted_model.requests[-1]["response_format"]["schema"]["properties"]["route"]["enum"] == ["answer", "job"]


def test_a_follow_up_the_model_names_goes_to_that_job(scripted_model, settings_for):
    scripted_model.when_system_contains(ROUTER, [Reply.text('{"route": "followup_answer", "job": 1}')])
    client = ModelClient(settings_for(scripted_model))
    r = route_message("and the numbers there?", jobs("Fix paginate", "Add CSV export"), client, repo=REPO)
    assert (r.kind, r.job_id, r.reference, r.decided_by) == ("followup_answer", "j1", "model", "model")


def test_with_the_embedded_model_an_unreadable_reply_leaves_it_to_the_classifier(scripted_model, settings_for):
    scripted_model.when_system_contains(ROUTER, [Reply.text('{"route": "perhaps"}')], repeat_last=True)
    client = ModelClient(settings_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=0))
    lean_job = RouteClassifier({"work": {"bias": 0.1, "weights": {}}, "followup": {"bias": -8.0, "weights": {}}})
    r = route_message("the numbers look odd", [], client, classifier=lean_job, embedded=True, constrained=True,
                      model_below=0.6)
    assert (r.kind, r.decided_by) == ("job", "classifier") and "could not decide" in r.reason
    assert len(scripted_model.requests) == 1


def test_the_classifier_decides_what_the_rules_leave_open_without_a_model():
    clf = shipped_classifier()
    assert clf is shipped_classifier()   # read once per process
    r = route_message("Saving a profile with an emoji in the name throws a 500.", [], None, classifier=clf)
    assert (r.kind, r.decided_by) == ("job", "classifier")
    r = route_message("Make CI pass on Windows", [], None, classifier=clf)
    assert r.kind == "job"
    r = route_message("Tweak it so the page size comes from settings.", jobs("Fix the off-by-one in paginate()"),
                      None, classifier=clf, repo=REPO)
    assert (r.kind, r.job_id, r.decided_by) == ("followup_job", "j1", "classifier")


def test_unreadable_classifier_weights_say_how_to_fix_them(tmp_path):
    bad = tmp_path / "w.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bench/train_router.py"):
        RouteClassifier.load(bad)
    bad.write_text('{"format": 99, "heads": {}}')
    with pytest.raises(ValueError, match="format 99"):
        RouteClassifier.load(bad)
    with pytest.raises(ValueError, match="lack the head"):
        RouteClassifier({"work": {"bias": 0, "weights": {}}})


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_a_follow_up_that_may_not_build_on_a_job_still_names_it_as_context(state):
    js = jobs("Upgrade Django to 5.0", state=state)
    r = route_message("also add a test for it", js, None, repo=REPO, classifier=shipped_classifier())
    assert (r.kind, r.job_id, r.context_job_id) == ("job", None, "j1"), r
    elsewhere = route_message("also add a test for it", js, None, repo="/srv/other", command="code")
    assert (elsewhere.kind, elsewhere.context_job_id) == ("job", None), elsewhere


def test_a_waiting_job_is_the_running_one_and_can_be_named_as_waiting():
    js = [Job(id="j1", number=1, title="Bump lodash", task="x", state="failed", repo=REPO),
          Job(id="j2", number=2, title="Rename userId", task="x", state="waiting", repo=REPO)]
    for text in ("what is the running job doing?", "the waiting one asked me something", "about the unfinished job"):
        ref = find_job_reference(text, js)
        assert (ref.job.number, ref.by) == (2, "state"), text
    r = route_message("continue from the waiting job", js, None, repo=REPO)
    assert r.kind != "followup_job"      # it has not finished: nothing to build on yet


# ---------------------------------------------------------------------- steering a running job
def running(*titles, state="running"):
    return jobs(*titles, state=state)


@pytest.mark.parametrize("state", ["queued", "preparing", "setting_up", "running", "waiting"])
@pytest.mark.parametrize("text,now", [
    ("also handle the empty list case", False),
    ("stop, use pathlib instead", True),
    ("actually don't touch the tests", False),
    ("now: use a set for the lookups", True),
    ("don't modify setup.py", False),
    ("use dataclasses instead of namedtuples", False),
])
def test_rules_send_words_for_the_work_under_way_to_the_running_job(text, now, state):
    r = route_message(text, running("Sort the results", state=state), None, repo=REPO)
    assert (r.kind, r.job_id, r.now, r.decided_by) == ("steer", "j1", now, "rules")


@pytest.mark.parametrize("text", ["also handle the empty list case", "now: use a set", "stop, use pathlib instead"])
def test_no_steer_once_the_job_has_ended(text):
    for state in ("succeeded", "failed", "cancelled", "interrupted"):
        assert route_message(text, jobs("Sort the results", state=state), None, repo=REPO).kind != "steer"


def test_questions_and_new_work_are_no_steer_while_a_job_runs():
    js = running("Sort the results")
    assert route_message("what does sort_results return?", js, None, repo=REPO).kind != "steer"
    assert route_message("actually, what's the default timeout?", js, None, repo=REPO).kind != "steer"
    assert route_message("Add an index on orders.created_at", js, None, repo=REPO,
                         classifier=shipped_classifier()).kind == "job"
    # "don't change anything" asks for an answer, it is no instruction to the job
    assert route_message("don't change anything, just tell me where sorting happens", js, None,
                         repo=REPO).kind != "steer"


def test_a_steer_goes_to_the_running_job_a_message_names_and_never_to_a_finished_one():
    js = [Job(id="j1", number=1, title="Fix the invoice rounding", task="x", state="running", repo=REPO),
          Job(id="j2", number=2, title="Fix date parsing", task="x", state="running", repo=REPO),
          Job(id="j3", number=3, title="Add a dark theme", task="x", state="succeeded", repo=REPO)]
    r = route_message("job 2: also cover the timezone edge case", js, None, repo=REPO)
    assert (r.kind, r.job_id) == ("steer", "j2")
    # two jobs run and the message names neither: the rules do not guess
    assert route_message("also cover the timezone edge case", js, None, repo=REPO).kind != "steer"
    assert route_message("job 3: also add a toggle", js, None, repo=REPO).kind != "steer"


def test_the_schema_offers_steer_only_while_a_job_has_not_ended():
    assert "steer" in route_schema(running("x"))["properties"]["route"]["enum"]
    assert "steer" in route_schema(running("x", state="waiting"))["properties"]["route"]["enum"]
    assert "steer" not in route_schema(jobs("x"))["properties"]["route"]["enum"]
    assert "steer" not in route_schema([])["properties"]["route"]["enum"]


def test_the_model_can_decide_a_steer(scripted_model, settings_for):
    scripted_model.when_system_contains(ROUTER, [Reply.text('{"route": "steer", "job": 1}'),
                                                 Reply.text('{"route": "steer", "job": 1}')])
    client = ModelClient(settings_for(scripted_model))
    r = route_message("the sort key should be the title, lower-cased", running("Sort the results"), client, repo=REPO)
    assert (r.kind, r.job_id, r.now, r.decided_by) == ("steer", "j1", False, "model")
    prompt = scripted_model.requests[-1]["messages"][0]["content"]
    assert '"steer"' in prompt and "job 1: Sort the results (running)" in prompt
    # a steer for a job that has ended is the follow-up job the user can still have
    r = route_message("the sort key should be the title, lower-cased", jobs("Sort the results"), client, repo=REPO)
    assert (r.kind, r.job_id) == ("followup_job", "j1")


def test_a_job_the_classifier_decides_while_one_runs_is_offered_as_a_steer():
    r = route_message("the sort key should be the title, lower-cased", running("Sort the results"), None, repo=REPO,
                      classifier=shipped_classifier())
    if r.is_job:  # the classifier cannot say steer: the user picks
        assert r.steer_offer == "j1"
    r = route_message("the sort key should be the title, lower-cased", jobs("Sort the results"), None, repo=REPO,
                      classifier=shipped_classifier())
    assert r.steer_offer is None


@pytest.mark.parametrize("text,number,now,rest", [
    ("use pathlib", None, False, "use pathlib"),
    ("2 use pathlib", 2, False, "use pathlib"),
    ("now use pathlib", None, True, "use pathlib"),
    ("2 now: use pathlib", 2, True, "use pathlib"),
    ("#2 now: use pathlib", 2, True, "use pathlib"),
    ("now: use pathlib", None, True, "use pathlib"),
])
def test_steer_command_parsing(text, number, now, rest):
    from assistant.conversation.router import parse_steer_command
    assert parse_steer_command(text) == (number, now, rest)


def test_the_steer_command_picks_the_job():
    from assistant.conversation.router import SteerCommandError
    js = running("Sort the results")
    r = route_message("now use pathlib", js, None, command="steer")
    assert (r.kind, r.job_id, r.now, r.decided_by) == ("steer", "j1", True, "command")
    # an ended job is still the target: the core refuses it and the app offers a follow-up
    assert route_message("1 use pathlib", jobs("Sort the results"), None, command="steer").job_id == "j1"
    with pytest.raises(SteerCommandError, match="no job 4"):
        route_message("4 use pathlib", js, None, command="steer")
    with pytest.raises(SteerCommandError, match="say what the job should do"):
        route_message("2 now", js + [Job(id="j2", number=2, title="y", task="y", state="running", repo=REPO)], None,
                      command="steer")
    with pytest.raises(SteerCommandError, match="several jobs are running"):
        route_message("use pathlib", js + [Job(id="j2", number=2, title="y", task="y", state="running", repo=REPO)],
                      None, command="steer")
    with pytest.raises(SteerCommandError, match="no job to steer"):
        route_message("use pathlib", [], None, command="steer")


# ---------------------------------------------------------------------- a job waiting for the user's answer
def _waiting(*states_by_number):
    return [Job(id=f"j{i}", number=i, title=f"task {i}", task=f"task {i}", state=s, repo=REPO)
            for i, s in enumerate(states_by_number, 1)]


@pytest.mark.parametrize("text", ["yes", "the second one", "What does the parser do with tabs?", "Fix the failing test in test_calc.py",
                                  "use the second option, and keep the old name"])
def test_with_one_job_waiting_a_typed_message_is_its_answer(text):
    conversation = _waiting("succeeded", "waiting", "running")
    route = route_message(text, conversation, None, classifier=shipped_classifier())
    assert (route.kind, route.job_id, route.decided_by, route.answer) == ("steer", "j2", "rules", True)


def test_an_answer_that_names_another_job_is_not_taken_for_the_answer():
    conversation = _waiting("succeeded", "waiting")
    route = route_message("What did job 1 change?", conversation, None)
    assert (route.kind, route.job_id, route.answer) == ("followup_answer", "j1", False)


def test_with_several_waiting_the_message_names_one():
    conversation = _waiting("waiting", "running", "waiting")
    route = route_message("job 3: the second one", conversation, None)
    assert (route.kind, route.job_id, route.answer) == ("steer", "j3", True)
    route = route_message("#1, keep it", conversation, None)
    assert (route.kind, route.job_id, route.answer) == ("steer", "j1", True)


def test_with_several_waiting_an_unnamed_message_says_how_to_answer():
    conversation = _waiting("waiting", "waiting")
    with pytest.raises(SteerCommandError, match=r"jobs 1 and 2 are waiting for your answer.*job 1: your answer.*buttons"):
        route_message("yes", conversation, None)


def test_slash_commands_are_not_answers():
    conversation = _waiting("waiting")
    assert route_message("what is a waiting job?", conversation, None, command="ask").kind == "answer"
    steer = route_message("1 now stop", conversation, None, command="steer")
    assert (steer.kind, steer.decided_by, steer.answer) == ("steer", "command", False)


def test_no_waiting_job_no_answer_rule():
    route = route_message("yes", _waiting("running", "succeeded"), None)
    assert not route.answer


# ---------------------------------------------------------------------- reviews
from assistant.conversation.router import ReviewAsk, ReviewCommandError, pasted_patch  # noqa: E402

PATCH = ("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
         "-    return a + b\n+    return a - b\n")


@pytest.mark.parametrize("text,head,base", [
    ("review the branch feature/x against main", "feature/x", "main"),
    ("Review branch feature/x vs. main.", "feature/x", "main"),
    ("can you review my changes on fix-login?", "fix-login", None),
    ("Could you please review the branch `release/1.2` compared to develop?", "release/1.2", "develop"),
    ("review feature/x against main", "feature/x", "main"),
    ("please do a code review of branch spike/cache", "spike/cache", None),
    ("review the commits on hotfix-42 against the branch stable, thanks", "hotfix-42", "stable"),
])
def test_a_review_of_a_branch_is_decided_by_the_rule(text, head, base):
    route = route_message(text, jobs("Add a cache"), None)
    assert (route.kind, route.decided_by, route.job_id) == ("review", "rules", None)
    assert route.review == ReviewAsk(head=head, base=base)


@pytest.mark.parametrize("text", ["review job 2's diff", "Review job #2", "review the diff of job 2",
                                  "can you review the changes from job 2?", "review #2"])
def test_a_review_of_a_jobs_diff_names_a_job_of_the_conversation(text):
    route = route_message(text, jobs("Add a cache", "Fix the login"), None)
    assert (route.kind, route.job_id, route.review) == ("review", "j2", ReviewAsk(job_id="j2"))


def test_a_review_of_a_job_the_conversation_does_not_have_says_which_it_has():
    with pytest.raises(ReviewCommandError, match="no job 7; its jobs are 1, 2"):
        route_message("review job 7's diff", jobs("a", "b"), None)


@pytest.mark.parametrize("text", [
    "review this patch:\n```diff\n" + PATCH + "```",
    "Please review this patch\n\n" + PATCH,
    "review this diff against main\n" + PATCH,
])
def test_a_pasted_patch_is_reviewed(text):
    route = route_message(text, [], None)
    assert (route.kind, route.review.patch) == ("review", PATCH)
    assert route.review.base == ("main" if "against main" in text else None)


def test_an_attached_patch_file_is_reviewed_and_asking_for_one_without_it_says_what_to_do():
    route = route_message("review this", [], None, attached_patch=PATCH)
    assert (route.kind, route.review) == ("review", ReviewAsk(patch=PATCH))
    assert route_message("review this patch", [], None, attached_patch=PATCH).review == ReviewAsk(patch=PATCH)
    with pytest.raises(ReviewCommandError, match="paste it .* or attach a .patch or .diff file"):
        route_message("review this patch", [], None)


@pytest.mark.parametrize("text", [
    "review the README",                                   # names no change
    "review the code in calc.py",
    "please review calc.py and tell me what it does",
    "review my changes in calc.py",                        # a file, not a branch
    "how would you review the branch feature/x?",          # a question about reviewing
    "review the tests and fix what fails",
    "review src/server/ws.ts in words — anything sketchy about how we handle reconnects?",
    "Review parse_args for edge cases it misses, but don't change anything yet.",
    "this review of the branch feature/x was wrong",
])
def test_the_review_rule_leaves_everything_else_alone(text):
    assert route_message(text, jobs("Add a cache"), None).kind != "review"


def test_a_waiting_job_takes_the_message_as_its_answer_first():
    waiting = jobs("Add a cache", state="waiting")
    assert route_message("review the branch feature/x against main", waiting, None).kind == "steer"


@pytest.mark.parametrize("text,ask", [
    ("feature/x", ReviewAsk(head="feature/x")),
    ("--base main feature/x", ReviewAsk(head="feature/x", base="main")),
    ("feature/x --base=main", ReviewAsk(head="feature/x", base="main")),
    ("job 2", ReviewAsk(job_id="j2")),
    ("--base develop\n" + PATCH, ReviewAsk(patch=PATCH, base="develop")),
])
def test_the_review_command(text, ask):
    route = route_message(text, jobs("a", "b"), None, command="review")
    assert (route.kind, route.decided_by, route.review) == ("review", "command", ask)


def test_the_review_command_takes_an_attached_patch_alone():
    route = route_message("", [], None, command="review", attached_patch=PATCH)
    assert route.review == ReviewAsk(patch=PATCH)


@pytest.mark.parametrize("text,error", [
    ("", "say what to review: /review BRANCH"),
    ("two words", "say what to review"),
    ("--head x", "/review knows only --base"),
    ("--base main job 2", "--base does not go with a job"),
    ("job 9", "this conversation has no job 9"),
    ("feature/x\n" + PATCH, "either a ref or a patch"),
])
def test_a_review_command_it_cannot_act_on_says_what_to_type(text, error):
    with pytest.raises(ReviewCommandError, match=re.escape(error)):
        route_message(text, jobs("a", "b"), None, command="review")


def test_pasted_patch_finds_a_diff_and_nothing_else():
    assert pasted_patch("```\n" + PATCH + "```") == PATCH
    assert pasted_patch("look:\n" + PATCH) == PATCH
    assert pasted_patch("```python\nprint('--- a/x')\n```") is None
    assert pasted_patch("--- a/notes\nno hunk here") is None
