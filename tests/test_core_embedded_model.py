"""The product with no API key and no base URL: the embedded model serves every role (the real
default Qwen2.5-Coder-1.5B, no scripted server). Whatever the tiny model says, nothing crashes and the
job ends in a defined state with its log."""
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from assistant.config import load_settings
from assistant.core import Assistant
from assistant.jobs.manager import JobRequest
from assistant.domain.states import TERMINAL
from assistant.llm.local import local_model_available
from tests.fixtures.repos import make_calc_repo

pytestmark = [pytest.mark.localmodel, pytest.mark.docker]


@pytest.fixture(scope="module")
def embedded():
    ok, detail = local_model_available()
    if not ok:
        pytest.fail(f"the embedded model is not installed: {detail}")
    data = Path(tempfile.mkdtemp(prefix="assistant-embedded-", dir="/tmp"))
    os.chmod(data, 0o711)
    env = {"ASSISTANT_DATA_DIR": str(data), "ASSISTANT_CONFIG": str(data / "none.toml"),
           "ASSISTANT_SANDBOX_BACKEND": "docker", "ASSISTANT_JOB_MAX_STEPS": "3",
           "ASSISTANT_COMMAND_TIMEOUT_S": "20", "ASSISTANT_LOCAL_CTX": "4096"}
    settings = load_settings(env)
    assert settings.uses_local_model
    assistant = Assistant(settings)
    started = time.monotonic()
    assistant.start(sweep=False)
    startup_s = time.monotonic() - started
    print(f"\nembedded model start-up: {startup_s:.2f} s")
    yield assistant
    assistant.close()
    shutil.rmtree(data, ignore_errors=True)


def test_the_ui_and_cli_can_say_which_model_is_used(embedded):
    info = embedded.describe()
    assert info["local_model"] and info["model"] == "qwen2.5-coder-1.5b-instruct-q4_k_m"
    assert "sha256 verified" in info["model_detail"] and "1.12 GB" in info["model_detail"]
    assert "small coding model" in info["notice"] and "OPENAI_BASE_URL" in info["notice"]
    assert info["endpoint"].startswith("http://127.0.0.1:")
    assert embedded.settings.tool_protocol == "grammar"


def test_routes_with_the_shipped_classifier_not_the_tiny_model(embedded, tmp_path):
    thread = embedded.store.create_thread(user_id=None, repo=str(make_calc_repo(tmp_path / "calc")))
    before = embedded.store.usage_totals(thread_id=thread.id)
    route = embedded.conversation.route(thread.id, "Saving a profile with an emoji in the name throws a 500.")
    assert (route.kind, route.decided_by) == ("job", "classifier"), route   # no rule settles a bare bug report
    assert embedded.store.usage_totals(thread_id=thread.id) == before      # the model was not asked


def test_streams_a_quick_answer(embedded, tmp_path):
    thread = embedded.store.create_thread(user_id=None, repo=str(make_calc_repo(tmp_path / "calc")))
    started = time.monotonic()
    events = list(embedded.conversation.answer(thread.id, "What does the add function in calc.py do?"))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done", events[-1]
    tokens = [e for e in events if e.kind == "token"]
    assert len(tokens) > 1 and events[-1].text.strip()
    prompt, completion = embedded.store.usage_totals(thread_id=thread.id)
    print(f"\nanswer: {completion} tokens in {time.monotonic() - started:.1f} s")


def test_runs_a_short_job_to_a_defined_end(embedded, tmp_path):
    repo = make_calc_repo(tmp_path / "calc")
    job = embedded.jobs.submit(JobRequest(task="Fix the failing test in test_calc.py", repo=str(repo), setup=[]))[0]
    job = embedded.jobs.wait(job.id, timeout=600)
    assert job.state in TERMINAL
    assert job.state in ("succeeded", "failed"), job.reason
    events = embedded.store.list_events(job.id)
    assert [e.kind for e in events][-1] == "finished"
    assert job.steps >= 1 and job.prompt_tokens > 0
    if job.state == "failed":
        assert job.reason                            # it says why
    # Whatever the model did, each tool call it made is in the stored log.
    steps = [e for e in events if e.kind == "step"]
    chunks = embedded.store.list_chunks(job.id)
    assert len([s for s in steps if s.data.get("chunk_id")]) == len(chunks)
