"""Guards on job summaries (real containers, the scripted model over HTTP): an agent or summary model that
recites its prompt or loops is never shown as the job's summary; a retry, then the log digest, stand in."""
from __future__ import annotations

import pytest

from assistant.prompts import load_prompt
from assistant.testing.scripted_model import Reply, by_turn, system_text
from tests.fixtures.repos import make_calc_repo
from tests.jobs.test_results import AGENT, SUMMARY_ROLE, TEST_CMD, run_job

pytestmark = pytest.mark.docker

LOOP = "The test failed because add subtracts its arguments instead of adding them.\n\n" * 6


def test_a_summary_model_that_echoes_then_loops_gives_way_to_the_digest(tmp_path, docker_engine, scripted_model,
                                                                         assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="ls /no-such-dir")], repeat_last=True)
    scripted_model.when_system_contains(SUMMARY_ROLE, [lambda r: Reply.text(system_text(r)), Reply.text(LOOP)])
    job = run_job(assistant_for(scripted_model), repo)
    assert job.state == "failed" and job.outcome["summary_source"] == "log digest"
    assert job.summary.startswith("The job failed") and "You write the summary" not in job.summary
    assert "add subtracts its arguments" not in job.summary
    asked = [r for r in scripted_model.requests if SUMMARY_ROLE in system_text(r)]
    assert len(asked) == 2 and "could not be used (the reply recited its instructions)" in asked[1]["messages"][-1]["content"]


def test_a_summary_model_that_loops_once_is_asked_again(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="ls /no-such-dir")], repeat_last=True)

    def good(request: dict) -> Reply:
        chunk = request["messages"][1]["content"].split("chunk ", 1)[1][:6]
        return Reply.text(f"- `ls /no-such-dir` failed again and again 【{chunk}†L1-L1】.\n- Next: say where to look.")
    scripted_model.when_system_contains(SUMMARY_ROLE, [Reply.text(LOOP), good])
    job = run_job(assistant_for(scripted_model), repo)
    assert job.outcome["summary_source"] == "summary model" and job.summary.startswith("- `ls /no-such-dir` failed")
    assert job.citations and all(c["valid"] for c in job.citations)


def test_an_agent_whose_last_words_recite_its_prompt_has_them_replaced(tmp_path, docker_engine, scripted_model,
                                                                       assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command=TEST_CMD), lambda r: Reply.text(system_text(r)))], repeat_last=True)
    scripted_model.when_system_contains(SUMMARY_ROLE, [Reply.error(503)], repeat_last=True)
    job = run_job(assistant_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=0), repo)
    recited = " ".join(load_prompt("agent_system.md").split()[:12])
    assert recited not in " ".join(job.summary.split())
    assert job.outcome["summary_withheld"] == "the reply recited its instructions"
    assert job.outcome["summary_source"] == "log digest" and TEST_CMD in job.summary
