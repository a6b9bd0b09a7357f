"""Safety nets of the agent loop on real jobs: compaction near the context window, the token budget."""
import pytest

from assistant.jobs.manager import JobRequest
from assistant.testing.scripted_model import Reply, by_turn
from tests.fixtures.repos import make_calc_repo

pytestmark = pytest.mark.docker
AGENT = "You are a careful software engineer"


def test_long_outputs_are_compacted_and_the_job_goes_on(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    flood = "python3 -c \"print('\\n'.join('line %d of a long and chatty output' % i for i in range(400)))\""
    # Six different commands: six identical ones would meet the loop guard first.
    steps = [Reply.call("shell", command=f"{flood} && echo run {i}") for i in range(6)] + [Reply.text("Done looking.")]
    scripted_model.when_system_contains(AGENT, [by_turn(*steps)], repeat_last=True)
    a = assistant_for(scripted_model, ASSISTANT_CONTEXT_WINDOW=6000)
    job = a.jobs.submit(JobRequest(task="look around", repo=str(repo), setup=[]))[0]
    job = a.jobs.wait(job.id, timeout=120)
    assert job.state == "succeeded", job.reason
    notes = [e.data["text"] for e in a.store.list_events(job.id) if e.kind == "message"]
    assert any("Compacted" in n for n in notes)
    last = scripted_model.requests[-1]["messages"]
    compacted = [m for m in last if (m.get("content") or "").startswith("[compacted")]
    assert compacted and "chunk " in compacted[0]["content"]     # the chunk id survives for citations
    assert len(a.store.list_chunks(job.id)) == 6                 # the full outputs stay stored


def test_token_budget_stops_the_job_with_the_reason(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="seq 1 300")], repeat_last=True)
    a = assistant_for(scripted_model, ASSISTANT_JOB_MAX_TOKENS=3000)
    job = a.jobs.submit(JobRequest(task="count", repo=str(repo), setup=[]))[0]
    job = a.jobs.wait(job.id, timeout=120)
    assert job.state == "failed" and "token budget exhausted" in job.reason
    assert job.prompt_tokens + job.completion_tokens > 3000
