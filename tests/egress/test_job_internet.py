"""Agent internet by allowlist through a whole job (`assistant run --json`, the real engine, the scripted model):
the Python index is reachable, the npm registry is blocked, and the block is logged as a citable chunk, in the
summary and on the job; off and bubblewrap keep the agent offline. Registry hosts come from the machine's own
package clients, never from this file."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from assistant.store import Store
from assistant.testing.scripted_model import Reply, by_turn
from tests.fixtures.repos import make_calc_repo

pytestmark = pytest.mark.docker
AGENT = "You are a careful software engineer"
PIP = "pip download --no-deps --no-cache-dir -d /tmp/dl six && ls /tmp/dl"


def npm_registry() -> str:
    npm = shutil.which("npm")
    if not npm:
        pytest.skip("npm is not installed here, so there is no npm registry setting to take the host from")
    return subprocess.run([npm, "config", "get", "registry"], capture_output=True, text=True).stdout.strip()


def run_job(tmp_path, scripted_model, *flags, backend="docker", env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(tmp_path / "data"), OPENAI_BASE_URL=scripted_model.base_url, OPENAI_API_KEY="k",
               ASSISTANT_MODEL="scripted-model", ASSISTANT_SANDBOX_BACKEND=backend,
               ASSISTANT_CONFIG=str(tmp_path / "none.toml"), NO_PROXY="127.0.0.1,localhost")
    env.update(env_extra or {})
    repo = make_calc_repo(tmp_path / "calc")
    proc = subprocess.run([sys.executable, "-m", "assistant.cli", "run", "--json", "--repo", str(repo), *flags, "Fetch"],
                          env=env, capture_output=True, text=True, timeout=300)
    return json.loads(proc.stdout), proc.stderr


def test_python_index_allowed_npm_blocked_and_reported(tmp_path, docker_engine, scripted_model, reachable_data_dir):
    registry = npm_registry()
    npm_fetch = (f"python3 -c \"import urllib.request; urllib.request.urlopen('{registry}', timeout=20)\" 2>&1 "
                 "| tail -n 1")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command=PIP), Reply.call("shell", command=npm_fetch),
        Reply.text("Downloaded six; the npm registry was out of reach."))], repeat_last=True)
    result, stderr = run_job(tmp_path, scripted_model, "--allow-preset", "python-packages")
    assert result["status"] == "succeeded", (result["reason"], stderr[-2000:])
    assert "egress proxy only" in result["agent_network"]
    chunks = {c["command"]: c for c in result["blocked_requests"]}
    assert len(chunks) == 1, result["blocked_requests"]
    (command, chunk), = chunks.items()
    assert "urlopen" in command and any(registry.split("//")[-1].strip("/") in line for line in chunk["lines"])
    assert "Blocked by the egress proxy" in result["summary"] and "[agent_internet]" in result["summary"]
    assert all(c["valid"] for c in result["citations"]), result["citations"]
    assert any("1 request blocked" in n for n in result["notices"])
    store = Store(f"sqlite:///{tmp_path / 'data' / 'assistant.db'}")
    try:
        pip_step = next(c for c in store.list_chunks(result["job_id"]) if c.command == PIP)
    finally:
        store.close()
    assert pip_step.exit_code == 0 and "six-" in pip_step.text


def test_off_keeps_the_agent_offline_and_bubblewrap_refuses_an_allowlist(tmp_path, docker_engine, scripted_model,
                                                                         reachable_data_dir):
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=PIP), Reply.text("Tried."))],
                                        repeat_last=True)
    result, _ = run_job(tmp_path, scripted_model, "--no-internet",
                        env_extra={"ASSISTANT_AGENT_INTERNET": "allowlist",
                                   "ASSISTANT_AGENT_INTERNET_PRESETS": "python-packages"})
    assert result["status"] == "succeeded" and result["agent_network"].startswith("none (verified: lo only)")
    assert result["blocked_requests"] == []
    local, _ = run_job(tmp_path / "local", scripted_model, "--allow-preset", "python-packages", backend="local",
                       env_extra={"ASSISTANT_DATA_DIR": str(reachable_data_dir)})
    assert local["status"] == "failed" and "supports only `off`" in local["reason"]
