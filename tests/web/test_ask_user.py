"""A job waiting for the user, over the app's socket as a browser speaks it (no browser): the agent calls ask_user
with choices, its card quotes the question with a button per choice, a button (or a typed message) answers it, the
answer reaches the agent as the tool's result and the job ends; with no answer in time the card says so. The sandbox
is the local (bubblewrap) backend: no Docker."""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from assistant.testing.scripted_model import Reply, ScriptedModelServer

from . import scripts
from .harness import USERS, AppProcess, SocketClient, http, make_repo, password_login
from .test_steer import contents, has

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap for the local sandbox")

QUESTION = "Keep the old function name or rename it?"
CHOICES = ["keep the old name", "rename it to mul"]
ANSWERED = "The user answered your question"


class AskingAgent:
    """Asks once, first thing; then ends, saying what it was answered. Records each ask_user result it read."""

    def __init__(self):
        self.lock = threading.Lock()
        self.results: list[str] = []

    def __call__(self, request: dict) -> Reply:
        messages = request.get("messages", [])
        last = messages[-1] if messages else {}
        if last.get("role") == "tool" and ANSWERED in (last.get("content") or ""):
            with self.lock:
                self.results.append(last["content"])
            answer = last["content"].split("> ", 1)[1].split("\n", 1)[0]
            return Reply.call("shell", command=f"echo 'answered: {answer}'")
        if not any(m.get("role") == "tool" for m in messages):
            return Reply.call("ask_user", question=QUESTION, choices=CHOICES)
        return Reply.text("Checked calc.py as the user answered.")


def start_app(**env: str):
    tmp_path = Path(tempfile.mkdtemp(prefix="ask-test-"))
    tmp_path.chmod(0o711)  # the local backend's unprivileged user must reach the data directory
    repo = make_repo(tmp_path / "repo")
    agent = AskingAgent()
    model = ScriptedModelServer().start()
    model.when_system_contains(scripts.ROUTER, [lambda request: Reply.text(json.dumps({"route": "job"}))],
                               repeat_last=True)
    model.when_system_contains(scripts.AGENT, [agent], repeat_last=True)
    (tmp_path / "data").mkdir()
    process = AppProcess(tmp_path / "data", model.base_url, repo, tmp_path / "app.log",
                         ASSISTANT_SANDBOX_BACKEND="local", ASSISTANT_REPO_ROOTS=str(tmp_path), **env).start()

    def stop():
        process.stop()
        model.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
    return process, agent, stop


@pytest.fixture
def app():
    process, agent, stop = start_app()
    yield process, agent
    stop()


@pytest.fixture
def impatient_app():
    process, agent, stop = start_app(ASSISTANT_ASK_TIMEOUT_S="4")
    yield process, agent
    stop()


def choice_buttons(client: SocketClient, count: int) -> list[dict]:
    found: list[dict] = []

    def check(events) -> bool:
        found[:] = [d for e, d in events if e == "action" and str(d.get("name", "")).startswith("answer_choice_")]
        return len(found) >= count
    assert client.wait_for(check, 120), f"no choice buttons; got {found}"
    return found


def logged_in(process) -> tuple[SocketClient, str]:
    _, token, _ = password_login(process.url, "alice", USERS["alice"])
    client = SocketClient(process.url, token)
    assert client.connect(), client.error
    return client, token


def test_a_choice_button_answers_the_agents_question(app):
    process, agent = app
    client, token = logged_in(process)
    try:
        client.send("Add a mul function to calc.py")
        card = has(client, "### Job 1", "waiting for you", f"> {QUESTION}")
        assert "Your next message in this conversation answers it." in card
        buttons = choice_buttons(client, 2)
        assert [b["label"] for b in buttons] == CHOICES
        # The notification the page would show: the question.
        status, _, body = http("GET", process.url + "/jobs/signals", token=token)
        signal = next(s for s in json.loads(body)["jobs"] if s["number"] == 1)
        assert (status, signal["state"], signal["notify"], signal["text"]) == (200, "waiting", True, QUESTION)

        status, text = client.action(buttons[1]["name"], buttons[1]["payload"])
        assert status == 200, text
        has(client, "Sent to job 1 as the answer")
        done = has(client, "### Job 1", "succeeded", timeout=180)
        assert f"Asked: \u201c{QUESTION}\u201d — answered: \u201crename it to mul\u201d" in done
        assert "Your next message" not in done
        assert "\u201crename it to mul\u201d — delivered (step 1) as the answer" in done   # its receipt
        assert len(agent.results) == 1 and "> rename it to mul" in agent.results[0]
    finally:
        client.close()


def test_a_typed_message_answers_and_a_reload_shows_the_same(app):
    process, agent = app
    client, token = logged_in(process)
    try:
        client.send("Add a mul function to calc.py")
        has(client, "### Job 1", "waiting for you", f"> {QUESTION}")
        client.send("Keep it as it is, please")   # any message: the only waiting job's answer
        has(client, "Sent to job 1 as the answer")
        done = has(client, "### Job 1", "succeeded", timeout=180)
        assert f"— answered: \u201cKeep it as it is, please\u201d" in done
        assert agent.results and "> Keep it as it is, please" in agent.results[0]
        assert not any("### Job 2" in c for c in contents(client))  # it started no job
        with client._lock:
            thread_id = next(d["thread_id"] for e, d in client.events if e == "first_interaction")
        again = SocketClient(process.url, token, thread_id)
        assert again.connect(), again.error
        try:
            reopened = has(again, "### Job 1", "succeeded", "Asked:")
            assert f"Asked: \u201c{QUESTION}\u201d — answered: \u201cKeep it as it is, please\u201d" in reopened
        finally:
            again.close()
    finally:
        client.close()


def test_no_answer_in_time_ends_the_job_and_the_card_says_so(impatient_app):
    process, agent = impatient_app
    client, _ = logged_in(process)
    try:
        client.send("Add a mul function to calc.py")
        has(client, "### Job 1", "waiting for you", f"> {QUESTION}")
        done = has(client, "### Job 1", "failed", timeout=180)
        assert f"Asked: \u201c{QUESTION}\u201d — no answer within 4 s" in done
        assert "an answer that did not come" in done   # the reason (and summary) say why it ended
        assert agent.results == []
    finally:
        client.close()
