"""Steering a running job from the chat, over the app's socket as a browser speaks it (no browser): a message the
rules read as words for the running job goes to it, its card shows the receipt to the end (acknowledged, the agent's
next turn quoted), "now:" stops the command under way, an ended job refuses and offers a follow-up, a job the router
decides while one runs asks first, and /jobs/signals tells the page how the job ended. The sandbox is the local
(bubblewrap) backend: no Docker."""
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

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap for the local sandbox")

STEER_TURN = "The user sent a message while you work"
FIRST = "also handle the empty list case"
SECOND = "now: stop counting and use a set"


class SteeredAgent:
    """The agent of one job: a short command, then (told to) a long one, then (told to, at once) a patch. What it
    was told is recorded with the step it arrived at, and its plan moves on only when the words arrived."""

    def __init__(self):
        self.lock = threading.Lock()
        self.told: list[tuple[int, str]] = []   # (tool results so far, the steering turn's text)

    def __call__(self, request: dict) -> Reply:
        messages = request.get("messages", [])
        steps = sum(1 for m in messages if m.get("role") == "tool")
        last = messages[-1] if messages else {}
        if last.get("role") == "user" and STEER_TURN in (last.get("content") or ""):
            with self.lock:
                self.told.append((steps, last["content"]))
            if "use a set" in last["content"]:
                return Reply.call("apply_patch", patch=scripts.MUL_PATCH)
            if "empty list" in last["content"]:
                return Reply.call("shell", command="for i in $(seq 1 300); do echo tick $i; sleep 1; done")
        everything = " ".join(str(m.get("content") or "") for m in messages)
        if "use a set" in everything and "apply_patch" in json.dumps(messages):
            return Reply.text("Added `mul` with the empty list handled, using a set as asked.")
        if steps == 0:
            return Reply.call("shell", command="for i in $(seq 1 12); do echo probing $i; sleep 1; done")
        # The plan goes nowhere unless it was steered: a job that was not ends without a change.
        return Reply.text("Nothing to do.")


def route(request: dict) -> Reply:
    """The router model for what the rules leave open: "more: …" is more work on the latest job, the rest a job."""
    text = scripts._last_user(request).lower()
    if text.startswith("more:"):
        return Reply.text(json.dumps({"route": "followup_job", "job": None}))
    return Reply.text(json.dumps({"route": "job", "job": None}))


@pytest.fixture
def app():
    # The local backend runs as an unprivileged user, which must reach the data directory: pytest's are private.
    tmp_path = Path(tempfile.mkdtemp(prefix="steer-test-"))
    tmp_path.chmod(0o711)
    repo = make_repo(tmp_path / "repo")
    agent = SteeredAgent()
    model = ScriptedModelServer().start()
    model.when_system_contains(scripts.ROUTER, [route], repeat_last=True)
    model.when_system_contains(scripts.AGENT, [agent], repeat_last=True)
    (tmp_path / "data").mkdir()
    process = AppProcess(tmp_path / "data", model.base_url, repo, tmp_path / "app.log",
                         ASSISTANT_SANDBOX_BACKEND="local", ASSISTANT_REPO_ROOTS=str(tmp_path)).start()
    yield process, agent
    process.stop()
    model.stop()
    shutil.rmtree(tmp_path, ignore_errors=True)


def contents(client: SocketClient, events: list | None = None) -> list[str]:
    if events is None:
        with client._lock:
            events = list(client.events)
    return [str(data.get("output") or "") for event, data in events
            if event in ("new_message", "update_message") and isinstance(data, dict)]


def has(client: SocketClient, *needles: str, timeout: float = 120) -> str:
    """The latest message text holding all the needles, once one arrives."""
    found: list[str] = []

    def check(events) -> bool:  # called with the client's lock held: read the events it hands over
        found[:] = [c for c in contents(client, events) if all(n in c for n in needles)]
        return bool(found)
    assert client.wait_for(check, timeout), f"no message with {needles}; got: {contents(client)[-4:]}"
    return found[-1]


def test_a_running_job_is_steered_twice_and_both_receipts_end_acknowledged(app):
    process, agent = app
    _, token, _ = password_login(process.url, "alice", USERS["alice"])
    client = SocketClient(process.url, token)
    assert client.connect(), client.error
    try:
        client.send("Add a mul function to calc.py")
        has(client, "### Job 1", "probing")                   # running its first (short) command
        client.send(FIRST)                                     # the rules: words for the running job
        has(client, "Sent to job 1", "reads it before its next step")
        has(client, "Your messages to the job", f"\u201c{FIRST}\u201d — queued")
        has(client, f"\u201c{FIRST}\u201d — delivered (step 2) · acknowledged: \u201cshell: $ for i in", timeout=180)
        has(client, "### Job 1", "tick")                       # the long command it was steered to
        client.send(SECOND)                                    # now: stops the command under way
        has(client, "Sent to job 1", "its command under way is stopped")
        card = has(client, "**now** \u201cstop counting and use a set\u201d — delivered (step 3), stopped",
                   "acknowledged: \u201capply\\_patch: update calc.py\u201d", timeout=180)
        assert f"\u201c{FIRST}\u201d — delivered (step 2) · acknowledged:" in card
        has(client, "### Job 1", "succeeded", timeout=180)
        # The agent read each message in the turn right after it was sent, in its own words.
        assert [(step, FIRST in text or "stop counting and use a set" in text) for step, text in agent.told] == \
            [(1, True), (2, True)]
        assert "now:" not in agent.told[1][1]                  # the "now:" said how, it is not part of the message

        # The thread opened again (a reload): the card is rebuilt from the stored events, receipts and all.
        with client._lock:
            thread_id = next(d["thread_id"] for e, d in client.events if e == "first_interaction")
        again = SocketClient(process.url, token, thread_id)
        assert again.connect(), again.error
        try:
            reopened = has(again, "### Job 1", "succeeded", "Your messages to the job")
            assert f"\u201c{FIRST}\u201d — delivered (step 2) · acknowledged:" in reopened
            assert "— delivered (step 3), stopped" in reopened
            assert "acknowledged: \u201capply\\_patch: update calc.py\u201d" in reopened
        finally:
            again.close()

        # The job has ended: a steer is refused, plainly, with a follow-up offered instead.
        client.send("/steer 1 also add a docstring")
        refusal = has(client, "Job 1 already ended (succeeded)")
        assert "follow-up" in refusal
        assert client.wait_for(lambda events: any(
            e == "action" and d.get("name") == "run_as_job" and d.get("label") == "Start a follow-up of job 1"
            for e, d in events), 30)

        # The page's notification signal: job 1 ended, with the line a notification shows.
        status, _, body = http("GET", process.url + "/jobs/signals", token=token)
        assert status == 200
        signal = next(s for s in json.loads(body)["jobs"] if s["number"] == 1)
        assert (signal["state"], signal["notify"]) == ("succeeded", True)
        assert signal["text"].startswith("Added mul with the empty list handled")
        assert http("GET", process.url + "/jobs/signals")[0] == 401
    finally:
        client.close()


def test_a_job_the_router_is_unsure_of_while_one_runs_asks_first(app):
    process, agent = app
    _, token, _ = password_login(process.url, "alice", USERS["alice"])
    client = SocketClient(process.url, token)
    assert client.connect(), client.error
    try:
        client.send("Add a mul function to calc.py")
        has(client, "### Job 1", "probing")
        client.send("more: the result should be an int")       # the model: more work on job 1, which still runs
        has(client, "Job 1 is still running. Is this for job 1, or a new job?")
        offered = []
        assert client.wait_for(lambda events: bool(offered.extend(
            d for e, d in events if e == "action" and d.get("name") in ("steer_offer_send", "steer_offer_new"))
            or len(offered) >= 2), 30)
        send = next(d for d in offered if d["name"] == "steer_offer_send")
        assert send["label"] == "Send to job 1"
        assert next(d for d in offered if d["name"] == "steer_offer_new")["label"] == "Start a new job"
        assert not any("### Job 2" in c for c in contents(client))   # nothing started before the pick
        status, text = client.action("steer_offer_send", send["payload"])
        assert status == 200, text
        has(client, "Sent to job 1")
        has(client, "\u201cmore: the result should be an int\u201d — ")
    finally:
        client.close()
