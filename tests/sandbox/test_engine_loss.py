"""A Docker engine that dies mid-job: the job says so (not "the container no longer exists"), and
scripts/ensure-docker.sh brings the engine back at once even though the killed daemon left a zombie and a
pid file behind. Runs on an extra engine beside the default one, so other work on this machine is not hit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.testing.scripted_model import Reply
from tests.fixtures.repos import make_calc_repo

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
ENGINE = "lossy"
SOCKET = f"unix:///run/assistant-engines/{ENGINE}.sock"
PIDFILE = Path(f"/run/assistant-engines/{ENGINE}.pid")
AGENT = "You are a careful software engineer"


def ensure(name: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "ensure-docker.sh"), name], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def extra_engine(docker_engine):
    started = ensure(ENGINE)
    assert started.returncode == 0, started.stderr
    loaded = subprocess.run(f"docker save assistant-sandbox:latest | docker -H {SOCKET} load -q", shell=True,
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    yield SOCKET
    # Leave nothing for the next start to restore (a container the killed engine left, say), then stop it.
    subprocess.run(f"docker -H {SOCKET} ps -aq | xargs -r docker -H {SOCKET} rm -f", shell=True, capture_output=True)
    pid = PIDFILE.read_text().strip() if PIDFILE.exists() else ""
    if pid:
        subprocess.run(["kill", "-TERM", pid], check=False)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) and time.monotonic() < deadline:
            time.sleep(0.2)


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_killed_engine_is_named_as_the_reason_and_comes_back(tmp_path, extra_engine, scripted_model):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 120")], repeat_last=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(DOCKER_HOST=extra_engine, ASSISTANT_DATA_DIR=str(tmp_path / "data"), ASSISTANT_SANDBOX_BACKEND="docker",
               OPENAI_BASE_URL=scripted_model.base_url, OPENAI_API_KEY="k", ASSISTANT_MODEL="scripted-model",
               ASSISTANT_CONFIG=str(tmp_path / "none.toml"), NO_PROXY="127.0.0.1,localhost")
    run = subprocess.Popen([sys.executable, "-m", "assistant.cli", "run", "--json", "--repo", str(repo), "Hang"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        listed = subprocess.run(["docker", "-H", extra_engine, "ps", "-q", "--filter", "label=assistant.managed=1"],
                                capture_output=True, text=True).stdout.split()
        if listed and scripted_model.requests:  # the agent has asked for its `sleep 120`
            break
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(int(PIDFILE.read_text()), signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    result = json.loads(out)
    assert result["status"] == "failed"
    assert "Docker engine stopped answering" in result["reason"], result["reason"]
    assert "no longer exists" not in result["reason"]
    assert "ensure-docker.sh" in result["reason"]

    started = time.monotonic()
    again = ensure(ENGINE)
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 20
    assert subprocess.run(["docker", "-H", extra_engine, "info"], capture_output=True).returncode == 0
