"""Conversation.route and .delegate with a real store and job manager: which job a follow-up job starts
from, and the ones it must not start from."""
import json

import pytest

from assistant.conversation.router import FOLLOWUP_JOB, Route
from assistant.conversation.service import Conversation
from assistant.domain.states import TERMINAL
from assistant.llm.client import ModelClient
from assistant.testing.scripted_model import Reply

ROUTER = "You route messages"


def router_says(server, **decision):
    decision.setdefault("reason", "scripted")
    server.when_system_contains(ROUTER, [Reply.text(json.dumps(decision))], repeat_last=True)


@pytest.fixture
def assistant(docker_engine, scripted_model, assistant_for):
    return assistant_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=0)


def delegated(assistant, thread, text, route):
    """The job delegate() made; it runs against a repository that does not exist, so it fails at once."""
    job = assistant.conversation.delegate(thread.id, None, text, route)[0]
    assert assistant.jobs.wait(job.id, timeout=120).state in TERMINAL
    return assistant.store.get_job(job.id)


def past_job(assistant, thread, title, state, repo):
    return assistant.store.create_job(task=title, title=title, repo=repo, thread_id=thread.id, state=state)


def test_a_new_job_on_a_new_repository_does_not_start_from_a_failed_job_with_the_same_title(
        tmp_path, scripted_model, assistant):
    thread = assistant.store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    first = past_job(assistant, thread, "Fix the add function", "failed", str(tmp_path / "calc"))
    assistant.store.update_thread(thread.id, repo=str(tmp_path / "newcalc"))
    router_says(scripted_model, route="job", followup=True, job="1")   # a model taken in by the title
    route = assistant.conversation.route(thread.id, "Fix the add function")
    assert (route.kind, route.job_id) == ("job", None) and "another repository" in route.reason
    job = delegated(assistant, thread, "Fix the add function", route)
    assert (job.number, job.parent_job_id, job.repo) == (2, None, str(tmp_path / "newcalc"))
    # delegate refuses it itself, whoever made the route
    forged = Route(FOLLOWUP_JOB, first.id, "forged", reference="number")
    assert delegated(assistant, thread, "Fix the add function", forged).parent_job_id is None


def test_a_follow_up_job_starts_from_the_job_it_follows(tmp_path, scripted_model, assistant):
    repo = str(tmp_path / "calc")
    thread = assistant.store.create_thread(user_id=None, repo=repo)
    first = past_job(assistant, thread, "Fix the add function", "succeeded", repo)
    router_says(scripted_model, route="job", followup=True, job="last")
    route = assistant.conversation.route(thread.id, "also add a test for that")
    assert (route.kind, route.job_id, route.decided_by) == ("followup_job", first.id, "model")
    assert delegated(assistant, thread, "also add a test for that", route).parent_job_id == first.id


def test_a_failed_job_is_built_on_only_when_named(tmp_path, scripted_model, assistant):
    repo = str(tmp_path / "calc")
    thread = assistant.store.create_thread(user_id=None, repo=repo)
    first = past_job(assistant, thread, "Handle None in merge_configs", "failed", repo)
    route = assistant.conversation.route(thread.id, "job 1 missed the None case — can you amend it?")
    assert (route.kind, route.job_id, route.decided_by) == ("followup_job", first.id, "rules")
    assert delegated(assistant, thread, "amend it", route).parent_job_id == first.id
    by_title = Route(FOLLOWUP_JOB, first.id, "title", reference="title")
    assert delegated(assistant, thread, "Handle None in merge_configs", by_title).parent_job_id is None


def test_a_job_of_another_conversation_is_never_a_parent(tmp_path, assistant):
    repo = str(tmp_path / "calc")
    mine = assistant.store.create_thread(user_id=None, repo=repo)
    theirs = assistant.store.create_thread(user_id=None, repo=repo)
    other = past_job(assistant, theirs, "Fix the add function", "succeeded", repo)
    route = Route(FOLLOWUP_JOB, other.id, "forged", reference="number")
    assert delegated(assistant, mine, "also add a test", route).parent_job_id is None
    gone = Route(FOLLOWUP_JOB, "no-such-job", "forged", reference="number")
    assert delegated(assistant, mine, "also add a test", gone).parent_job_id is None


def test_without_a_model_endpoint_the_classifier_routes_and_the_model_is_not_asked(
        tmp_path, scripted_model, settings_for, store):
    settings = settings_for(None)                 # no OPENAI_API_KEY / OPENAI_BASE_URL: the embedded default
    assert settings.uses_local_model
    model = ModelClient(settings, base_url=scripted_model.base_url)
    conversation = Conversation(settings, store, model, jobs=None)
    thread = store.create_thread(user_id=None, repo=str(tmp_path / "calc"))
    route = conversation.route(thread.id, "Saving a profile with an emoji in the name throws a 500.")
    assert (route.kind, route.decided_by) == ("job", "classifier")
    assert scripted_model.requests == []
