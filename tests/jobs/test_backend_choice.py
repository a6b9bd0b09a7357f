"""The backend is resolved per job and recorded; "auto" never moves a job to the weaker bubblewrap sandbox
without saying so on the job, and not at all when more than one person can log in (unless allowed)."""
from __future__ import annotations

import pytest

from assistant.jobs.manager import JobRequest
from assistant.sandbox.engine import forget_client
from assistant.testing.scripted_model import Reply, by_turn
from tests.fixtures.repos import make_calc_repo

AGENT = "You are a careful software engineer"


@pytest.fixture
def no_engine(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    forget_client()
    yield
    monkeypatch.undo()
    forget_client()


def submit(assistant, repo):
    job = assistant.jobs.submit(JobRequest(task="Look around", repo=str(repo), setup=[]))[0]
    return assistant.jobs.wait(job.id, timeout=120)


def test_auto_without_an_engine_runs_on_bubblewrap_and_says_so(tmp_path, no_engine, scripted_model, assistant_for,
                                                               reachable_data_dir):
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command="ls"), Reply.text("Looked."))],
                                        repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_SANDBOX_BACKEND="auto", ASSISTANT_DATA_DIR=reachable_data_dir)
    job = submit(assistant, make_calc_repo(tmp_path / "calc"))
    assert job.state == "succeeded", job.reason
    assert job.backend == "local"
    notices = [e.data["text"] for e in assistant.store.list_events(job.id) if e.kind == "notice"]
    assert len(notices) == 1 and "bubblewrap" in notices[0] and "weaker" in notices[0]
    from assistant.web.cards import render_job_card
    assert "⚠ no Docker engine answered" in render_job_card(assistant.store, job.id)


def test_with_several_users_the_fallback_is_refused(tmp_path, no_engine, scripted_model, assistant_for,
                                                   reachable_data_dir):
    assistant = assistant_for(scripted_model, ASSISTANT_SANDBOX_BACKEND="auto", ASSISTANT_DATA_DIR=reachable_data_dir,
                              ASSISTANT_USERS="ann:pw1,bob:pw2", ASSISTANT_REPO_ROOTS=str(tmp_path))
    job = submit(assistant, make_calc_repo(tmp_path / "calc"))
    assert job.state == "failed"
    assert "ASSISTANT_SANDBOX_FALLBACK" in job.reason and "start the engine" in job.reason
    allowed = assistant_for(scripted_model, ASSISTANT_SANDBOX_BACKEND="auto", ASSISTANT_DATA_DIR=reachable_data_dir,
                            ASSISTANT_USERS="ann:pw1,bob:pw2", ASSISTANT_REPO_ROOTS=str(tmp_path),
                            ASSISTANT_SANDBOX_FALLBACK="allow")
    scripted_model.when_system_contains(AGENT, [Reply.text("Nothing to do.")], repeat_last=True)
    assert submit(allowed, make_calc_repo(tmp_path / "calc2")).backend == "local"
