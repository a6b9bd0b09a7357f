"""Steering a job of the scale-out deployment: PostgreSQL (a private server), a queue worker that runs the job in a
Docker sandbox, two web processes on the same database, the scripted model. The job is submitted through web process
A; the user steers it from web process B (another app process, on the same conversation); then `assistant jobs
tell` steers it from the command line against the same database. Each receipt ends acknowledged on the card in both
web processes' sockets, and the scripted model checks that the agent's next turn holds the message."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from assistant.store import Store
from assistant.testing.scripted_model import Reply, ScriptedModelServer
from tests.jobs.queue_harness import Workers, fresh_database, private_postgres, queue_env, wait_for  # noqa: F401
from tests.web import scripts
from tests.web.harness import USERS, AppProcess, SocketClient, make_repo, password_login
from tests.web.test_steer import has

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.timeout(900)]

STEER_TURN = "The user sent a message while you work"
FROM_B = "also handle the empty list case"           # the rules read it as words for the running job
FROM_CLI = "use a set for the seen values"
WAIT_STEPS = 150                                      # the unsteered plan: short waits, so the job runs until told


class ToldAgent:
    """The agent of the job: short waiting commands until it was told two things; each message it reads is
    recorded with the tool results it had then, and answered in its very next turn with a command that names it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.told: list[tuple[int, str]] = []

    def __call__(self, request: dict) -> Reply:
        messages = request.get("messages", [])
        steps = sum(1 for m in messages if m.get("role") == "tool")
        last = messages[-1] if messages else {}
        heard = [m.get("content") or "" for m in messages
                 if m.get("role") == "user" and STEER_TURN in (m.get("content") or "")]
        if last.get("role") == "user" and STEER_TURN in (last.get("content") or ""):
            with self.lock:
                self.told.append((steps, last["content"]))
            return Reply.call("shell", command=f"echo heard message {len(heard)}")
        if len(heard) >= 2:
            return Reply.text("Handled both messages: the empty list, and a set for the seen values.")
        if steps >= WAIT_STEPS:
            return Reply.text("Nobody told me anything.")
        return Reply.call("shell", command="sleep 1; echo waiting")


@pytest.fixture
def deployment(tmp_path, private_postgres, docker_engine):
    """Two web processes and one worker on a database of their own; the scripted model; alice logged in on both."""
    url = fresh_database(private_postgres, "steer_scale_out")
    agent = ToldAgent()
    model = ScriptedModelServer().start()
    model.when_system_contains(scripts.ROUTER, [lambda _r: Reply.text('{"route": "job", "job": null}')],
                               repeat_last=True)
    model.when_system_contains(scripts.AGENT, [agent], repeat_last=True)
    repo = make_repo(tmp_path / "repo")
    data = tmp_path / "data"
    env = queue_env(url, model.base_url, data, ASSISTANT_DEFAULT_REPO=str(repo),
                    ASSISTANT_USERS=",".join(f"{u}:{p}" for u, p in USERS.items()),
                    ASSISTANT_SERVE_WORKERS="false", ASSISTANT_REPO_ROOTS=str(tmp_path))
    workers = Workers(env, tmp_path)
    web_env = {k: v for k, v in env.items() if k.startswith(("ASSISTANT_", "OPENAI_"))}
    webs = [AppProcess(data, model.base_url, repo, tmp_path / f"web-{name}.log", **web_env) for name in "ab"]
    store = Store(url)
    try:
        workers.start("w1")
        for web in webs:
            web.start()
        yield {"env": env, "webs": webs, "store": store, "agent": agent, "tmp": tmp_path}
    finally:
        for closer in (*(web.stop for web in webs), workers.stop_all, store.close, model.stop):
            try:
                closer()
            except Exception:
                pass


def receipt(text: str, step_text: str) -> tuple[str, str]:
    return f"\u201c{text}\u201d — delivered (step ", f"· acknowledged: \u201cshell: $ echo heard message {step_text}"


def test_a_job_on_a_worker_is_steered_from_the_other_web_process_and_from_the_command_line(deployment):
    web_a, web_b = deployment["webs"]
    store, agent = deployment["store"], deployment["agent"]
    _, token_a, _ = password_login(web_a.url, "alice", USERS["alice"])
    _, token_b, _ = password_login(web_b.url, "alice", USERS["alice"])
    assert token_a and token_b
    a = SocketClient(web_a.url, token_a)
    assert a.connect(), a.error
    b = None
    try:
        a.send("/code Add a mul function to calc.py")
        has(a, "### Job 1", "waiting", timeout=240)                  # running on the worker: its first waits
        with a._lock:
            thread_id = next(d["thread_id"] for e, d in a.events if e == "first_interaction")
        job = store.list_jobs(thread_id=thread_id)[0]
        assert job.runner == "w1" and job.state == "running", (job.runner, job.state)

        b = SocketClient(web_b.url, token_b, thread_id)                 # the same conversation on web process B
        assert b.connect(), b.error
        has(b, "### Job 1", "running")
        b.send(FROM_B)
        has(b, "Sent to job 1", "reads it before its next step")
        for client in (a, b):                                           # the receipt, to the end, in both
            has(client, *receipt(FROM_B, "1"), timeout=180)

        cli = subprocess.run([sys.executable, "-m", "assistant.cli", "jobs", "tell", job.id, FROM_CLI],
                             env=deployment["env"], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.startswith(f"told job 1 (id {job.id}) (running); its agent reads it at its next step"), \
            cli.stdout
        for client in (a, b):
            card = has(client, *receipt(FROM_CLI, "2"), timeout=180)
            assert all(part in card for part in receipt(FROM_B, "1"))   # the first receipt stays on the card
        for client in (a, b):
            done = has(client, "### Job 1", "succeeded", timeout=180)
            assert "Your messages to the job" in done

        # The agent read each message in the turn right after it arrived, in the words the user sent.
        told = list(agent.told)
        assert [(FROM_B in text, FROM_CLI in text) for _, text in told] == [(True, False), (False, True)], told
        final = store.get_job(job.id)
        assert final.state == "succeeded" and final.runner == "w1" and final.fence == 1
        rows = store.list_steer_messages(job.id)
        assert [(r.text, r.state) for r in rows] == [(FROM_B, "acknowledged"), (FROM_CLI, "acknowledged")]
        steps = [r.delivered_step for r in rows]
        assert [s + 1 for s, _ in told] == steps, (told, steps)         # delivered as the step after its results
        assert [f"echo heard message {n}" in (r.ack_excerpt or "") for n, r in enumerate(rows, 1)] == [True, True], \
            [r.ack_excerpt for r in rows]
    finally:
        a.close()
        if b is not None:
            b.close()
