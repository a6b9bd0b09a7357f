"""The real embedded model (no scripted server) completes one tiny job end to end through the guided harness:
a one-line fix in a repository with a failing test, validated by the tests. Slow on 2 cores, and meant to be:
it is the proof that the product does its main job out of the box. ASSISTANT_LOCAL_MODEL names another GGUF."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from assistant.config import load_settings
from assistant.core import Assistant
from assistant.jobs.manager import JobRequest
from assistant.llm.local import local_model_available
from tests.fixtures.repos import make_calc_repo

pytestmark = pytest.mark.localmodel


@pytest.fixture
def embedded():
    settings_env = {"ASSISTANT_CONFIG": "/nonexistent/assistant.toml", "ASSISTANT_SANDBOX_BACKEND": "local",
                    "ASSISTANT_JOB_MAX_SECONDS": "900", "ASSISTANT_MODEL_TIMEOUT_S": "600"}
    if os.environ.get("ASSISTANT_LOCAL_MODEL"):
        settings_env["ASSISTANT_LOCAL_MODEL"] = os.environ["ASSISTANT_LOCAL_MODEL"]
    data = Path(tempfile.mkdtemp(prefix="assistant-guided-", dir="/tmp"))
    os.chmod(data, 0o711)
    settings = load_settings({**settings_env, "ASSISTANT_DATA_DIR": str(data)})
    ok, detail = local_model_available(settings.local_model)
    if not ok:
        pytest.fail(f"the embedded model is not installed: {detail}")
    assert settings.uses_local_model
    assistant = Assistant(settings)
    assistant.start(sweep=False)
    yield assistant
    assistant.close()
    shutil.rmtree(data, ignore_errors=True)


def test_the_embedded_model_fixes_a_one_line_bug_and_the_tests_pass(tmp_path, embedded):
    assert embedded.settings.tool_protocol == "grammar"   # so `auto` picks the guided harness
    repo = make_calc_repo(tmp_path / "calc")
    job = embedded.jobs.submit(JobRequest(task="The test for add fails. Fix it.", repo=str(repo), setup=[]))[0]
    job = embedded.jobs.wait(job.id, timeout=1200)

    assert job.state == "succeeded", job.reason
    diff = embedded.store.get_artifact(job.id, "diff") or ""
    assert "+    return a + b" in diff, diff
    assert job.outcome["tests_passed"] is True and job.outcome["kind"] == "fix", job.outcome
    assert all(c["valid"] for c in job.citations), job.citations
    assert all(claim["supported"] for claim in job.outcome["claims"]), job.outcome["claims"]
