"""The embedded local model, for real: the bundled Qwen2.5-Coder GGUF, assembled from its part packages and
verified, served by llama-cpp-python. The weights are assembled once per module (1.1 GB) into one data dir;
tests that need a server of their own serve that verified file."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from assistant.llm.constrained import FinalAnswer, action_from_json, constrained_json, next_action
from assistant.llm import weights
from assistant.llm.local import (
    LocalModelConfig,
    LocalModelError,
    LocalModelServer,
    bundled_model_path,
    describe_model,
    local_model_available,
)
from assistant.llm.textproto import ParsedCall

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.localmodel]


@pytest.fixture(scope="module", autouse=True)
def installed():
    available, why_not = local_model_available()
    if not available:  # never skipped: the embedded model is part of the product
        pytest.fail(f"the embedded model is not installed: {why_not}")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a shell command in the repository.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "timeout_s": {"type": "integer", "minimum": 1, "maximum": 600}},
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "apply_patch",
            "description": "Edit files with a patch.",
            "parameters": {"type": "object", "properties": {"patch": {"type": "string"}}, "required": ["patch"]},
        },
    },
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def gguf(data_dir):
    """The default model as the product assembles it on first start: from the installed parts, verified."""
    return bundled_model_path(data_dir / "models")


@pytest.fixture(scope="module")
def server(data_dir, gguf):
    running = LocalModelServer(LocalModelConfig(model_path=None, data_dir=data_dir))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=120)


def _get(url: str, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _port_is_closed(base_url: str) -> bool:
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _process_is_gone(pid: int) -> bool:
    # Every thread must have exited: a dying process's leader shows as a zombie while
    # its other threads are still unmapping the model. A full zombie awaits reaping only.
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except FileNotFoundError:
        return True
    return all(state in ("Z", "X") for state in states)


def test_bundled_model_is_assembled_and_verified(data_dir, gguf):
    assert gguf == data_dir / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert gguf.stat().st_size == 1_117_320_768 == weights.QWEN_CODER_1_5B.size
    assert weights.is_verified(gguf, weights.QWEN_CODER_1_5B.sha256)
    mtime = gguf.stat().st_mtime_ns
    assert bundled_model_path(data_dir / "models") == gguf and gguf.stat().st_mtime_ns == mtime  # not made again
    described = describe_model(LocalModelConfig(model_path=None, data_dir=data_dir))
    assert described.startswith("Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (1.12 GB, 1,117,320,768 bytes; sha256 verified")


def test_server_is_healthy_on_loopback_and_wants_its_key(server):
    assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
    status, body = _get(f"{server.base_url}/models", server.api_key)
    assert status == 200
    assert [m["id"] for m in body["data"]] == [server.model_name] == ["qwen2.5-coder-1.5b-instruct-q4_k_m"]
    assert _get(f"{server.base_url}/models", "not-the-key")[0] == 401
    healthy, detail = server.status()
    assert healthy and server.base_url in detail
    assert server.config.log_path.is_file()
    assert "llama" in server.config.log_path.read_text(errors="replace").lower()


def test_chat_completion_through_the_sdk(client, server):
    messages = [{"role": "user", "content": "Complete the sentence: The capital of France is"}]
    reply = client.chat.completions.create(model=server.model_name, messages=messages, max_tokens=24, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0 and reply.choices[0].message.content


def test_streamed_chat_completion_arrives_in_pieces(client, server):
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    stream = client.chat.completions.create(
        model=server.model_name, messages=messages, max_tokens=24, temperature=0, stream=True
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    # Replies are not compared with the non-streamed one: llama.cpp's prompt cache changes
    # the float arithmetic enough that greedy decoding can part ways after a few dozen tokens.
    assert len([c for c in chunks if c.choices[0].delta.content]) > 1, "the reply should arrive in pieces"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()


def test_constrained_json_parses_and_fits_the_schema(client, server):
    schema = {
        "type": "object",
        "properties": {
            "route": {"type": "string", "enum": ["answer", "delegate"]},
            "reason": {"type": "string"},
        },
        "required": ["route", "reason"],
    }
    messages = [{"role": "user", "content": "Should 'fix the failing test in utils.py' be answered now or delegated to a coding job?"}]
    value = constrained_json(client, server.model_name, messages, schema, temperature=0, max_tokens=200)
    assert value["route"] in ("answer", "delegate") and isinstance(value["reason"], str)


def test_next_action_is_always_a_well_formed_call_or_answer(client, server):
    tasks = ["Run the test suite with pytest.", "List the files in the repository.", "Say hello to the user."]
    for task in tasks:
        messages = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": task}]
        action = next_action(client, server.model_name, messages, TOOLS, temperature=0, max_tokens=300)
        assert isinstance(action, (ParsedCall, FinalAnswer))
        if isinstance(action, ParsedCall):
            assert action.name in ("shell", "apply_patch")
            assert action_from_json(json.loads(action.raw), TOOLS) == action


def test_agent_conversation_with_system_tool_calls_and_results(client, server):
    # The GGUF's own chat template must take a whole agent turn: system, tool calls and tool results.
    messages = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Run the tests."},
        {
            "role": "assistant",
            "content": "",  # llama-cpp-python refuses null content, which OpenAI allows
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": '{"command": "pytest -q"}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3 passed in 0.01s"},
        {"role": "assistant", "content": '{"tool": "shell", "arguments": {"command": "git status"}}'},
        # Plain text, as the product sends every message (the GGUF's template takes no content-part lists).
        {"role": "user", "content": "On branch main, nothing to commit."},
    ]
    action = next_action(client, server.model_name, messages, TOOLS, temperature=0, max_tokens=300)
    assert isinstance(action, (ParsedCall, FinalAnswer))


def test_killed_server_is_restarted_on_the_same_url(tmp_path, gguf):
    restartable = LocalModelServer(LocalModelConfig(model_path=gguf, data_dir=tmp_path))
    try:
        base_url = restartable.start()
        first_pid = restartable.pid
        os.killpg(first_pid, signal.SIGKILL)
        # Under heavy I/O a killed process can take seconds to release its mapped model.
        deadline = time.monotonic() + 30
        while not _process_is_gone(first_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _process_is_gone(first_pid)
        assert restartable.status()[0] is False
        assert restartable.ensure_running() == base_url
        assert restartable.pid != first_pid
        client = openai.OpenAI(base_url=base_url, api_key=restartable.api_key, max_retries=0)
        reply = client.chat.completions.create(
            model=restartable.model_name, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
        assert reply.usage.completion_tokens > 0
        assert restartable.ensure_running() == base_url  # a live server is left alone
    finally:
        restartable.stop()


def test_stop_ends_the_process_and_frees_the_port(tmp_path, gguf):
    stoppable = LocalModelServer(LocalModelConfig(model_path=gguf, data_dir=tmp_path))
    base_url = stoppable.start()
    pid = stoppable.pid
    stoppable.stop()
    assert _process_is_gone(pid)
    assert _port_is_closed(base_url)
    assert stoppable.status()[0] is False
    stoppable.stop()  # stopping twice is harmless


def test_server_dies_with_the_process_that_started_it(tmp_path, gguf):
    starter = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from assistant.llm.local import LocalModelConfig, LocalModelServer
        server = LocalModelServer(LocalModelConfig(model_path=Path({str(gguf)!r}), data_dir=Path({str(tmp_path)!r})))
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        server_pid = int(parent.stdout.readline())
        assert not _process_is_gone(server_pid)
        parent.kill()  # no atexit runs: only the orphan watchdog can end the server
        parent.wait()
        deadline = time.monotonic() + 15
        while not _process_is_gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _process_is_gone(server_pid)
    finally:
        parent.kill()


def test_a_file_that_is_not_a_model_fails_with_the_log(tmp_path):
    fake = tmp_path / "not-a-model.gguf"
    fake.write_bytes(b"this is not a GGUF file\n" * 100)
    broken = LocalModelServer(LocalModelConfig(model_path=fake, data_dir=tmp_path))
    with pytest.raises(LocalModelError, match="exited with code") as caught:
        broken.start(timeout_s=60)
    assert str(broken.config.log_path) in str(caught.value)
    assert broken.status()[0] is False


def test_a_missing_model_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(LocalModelError, match="nowhere.gguf"):
        LocalModelServer(LocalModelConfig(model_path=missing, data_dir=tmp_path)).start()
    ok, detail = local_model_available(missing)
    assert not ok and "nowhere.gguf" in detail


def test_the_embedded_model_answers_from_the_code_with_a_valid_citation(data_dir, gguf, tmp_path):
    """The product with no endpoint configured, on its default model: a quick answer about a tiny repository
    reads the code (the product's lookups) and the model's own words cite real lines."""
    from assistant.config import load_settings
    from assistant.core import Assistant
    from tests.fixtures.repos import make_calc_repo

    settings = load_settings({"ASSISTANT_DATA_DIR": str(data_dir), "ASSISTANT_CONFIG": str(tmp_path / "none.toml"),
                              "ASSISTANT_DATABASE_URL": f"sqlite:///{tmp_path / 'answer.db'}"})
    assert settings.uses_local_model and settings.local_model is None
    assistant = Assistant(settings)
    try:
        assistant.start(sweep=False)
        info = assistant.describe()
        assert info["model"] == "qwen2.5-coder-1.5b-instruct-q4_k_m" and "sha256 verified" in info["model_detail"]
        thread = assistant.store.create_thread(user_id=None, repo=str(make_calc_repo(tmp_path / "calc")))
        started = time.monotonic()
        events = list(assistant.conversation.answer(thread.id, "What does the add function in calc.py return?"))
        done = events[-1]
        print(f"\n--- embedded answer ({time.monotonic() - started:.1f} s) ---\n{done.text}\n---")
        assert done.kind == "done", done.text
        lookups = [e.text for e in events if e.kind == "tool"]
        assert "search" in lookups and "read_file" in lookups
        own_words = done.text.split("\n\nBased on: ")[0]        # without the product's note of what it read
        cited = [c for c in done.data["citations"] if c["valid"] and c["text"] in own_words]
        assert cited and cited[0]["target"] == "calc.py", done.data["citations"]
        assert "I could not produce a usable answer" not in done.text
    finally:
        assistant.close()
