import pytest

from assistant.conversation.router import resolve_job_reference, route_message
from assistant.llm.client import ModelClient
from assistant.store import Job
from assistant.testing.scripted_model import Reply

ROUTER = "You route messages"


def jobs(*titles):
    return [Job(id=f"j{i}", number=i, title=t, task=t, state="succeeded") for i, t in enumerate(titles, 1)]


@pytest.mark.parametrize("text,kind", [
    ("What does the parser do with tabs?", "answer"),
    ("where is the config loaded", "answer"),
    ("Fix the failing test in test_calc.py", "job"),
    ("Please add type hints to utils.py", "job"),
    ("Can you refactor the cache into its own module?", "job"),
])
def test_obvious_cases_need_no_model(text, kind):
    route = route_message(text, [], None)
    assert (route.kind, route.decided_by) == (kind, "rules")


def test_follow_ups_refer_to_jobs_by_number_ordinal_or_last():
    js = jobs("Fix the add function", "Speed up the parser")
    assert route_message("why did you change calc.py in job 1?", js, None).job_id == "j1"
    assert route_message("Why did the second job touch the lexer?", js, None).job_id == "j2"
    r = route_message("also add a test for that", js, None)
    assert (r.kind, r.job_id) == ("followup_job", "j2")
    assert resolve_job_reference("the last one", js).id == "j2"
    assert resolve_job_reference("nothing here", js) is None


def test_commands_force_either_way():
    assert route_message("Fix everything", [], None, command="ask").kind == "answer"
    assert route_message("What is this?", [], None, command="code").kind == "job"
    assert route_message("what about job 1", jobs("x"), None, command="code").kind == "followup_job"


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


@pytest.mark.parametrize("reply", [Reply.text("I think it is a job"), Reply.text('{"route": "maybe"}'), Reply.error(500)])
def test_garbage_from_the_router_model_falls_back_to_an_answer(scripted_model, settings_for, reply):
    scripted_model.when_system_contains(ROUTER, [reply], repeat_last=True)
    client = ModelClient(settings_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=0))
    r = route_message("the login page breaks with long emails", [], client)
    assert (r.kind, r.decided_by) == ("answer", "fallback")
