"""`assistant serve` as a service manager runs it: a real process tree, a real job, a real signal."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from assistant.store import Store
from assistant.testing.chat_client import ChatSession, message_with
from assistant.testing.scripted_model import Reply, system_text
from tests.fixtures.repos import make_calc_repo

AGENT = "You are a careful software engineer"
STOP_BUDGET_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nobody listens, and a new server can bind it (as servers do, with SO_REUSEADDR: the old server's
    closed connections may linger in TIME_WAIT)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Serve:
    """`assistant serve` on a free port, its output in a log file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.port = free_port()
        self.data_dir = tmp_path / "data"
        self.log = tmp_path / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
        self.env.update(ASSISTANT_DATA_DIR=str(self.data_dir), ASSISTANT_USERS="alice:pw-alice",
                        ASSISTANT_CONFIG=str(tmp_path / "none.toml"), ASSISTANT_SANDBOX_BACKEND="docker",
                        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **env)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "Serve":
        self.proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(self.log.read_text())

    def server_pid(self) -> int:
        [pid] = children_of(self.proc.pid)
        return pid

    def stop_by(self, signum: int) -> float:
        started = time.monotonic()
        self.proc.send_signal(signum)
        self.proc.wait(STOP_BUDGET_S + 5)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            for pid in children_of(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serving(tmp_path, scripted_model):
    made = []

    def make(**env) -> Serve:
        env.setdefault("OPENAI_BASE_URL", scripted_model.base_url)
        env.setdefault("OPENAI_API_KEY", "k")
        env.setdefault("ASSISTANT_MODEL", "scripted-model")
        serve = Serve(tmp_path, env)
        made.append(serve)
        return serve.start()
    yield make
    for serve in made:
        serve.kill()


async def start_job(url: str) -> str:
    """Delegate a job from a chat session; returns its id once its card shows it running."""
    chat = await ChatSession(url, "alice", "pw-alice").open()
    try:
        await chat.send("wait for a long time", command="code")
        running = message_with("running")  # the card's state; the welcome header also says "a running job"
        card = await chat.wait_for(lambda r: running(r) and "job_id" in (r.data.get("metadata") or {}), timeout=60)
        return card.data["metadata"]["job_id"]
    finally:
        await chat.close()


def job_containers(job_id: str, data_dir: Path) -> list:
    """The job's containers: labelled with it, or the one the job recorded (a warm sandbox keeps the label it was
    readied with)."""
    from assistant.sandbox.engine import JOB_LABEL, MANAGED_LABEL, docker_client
    store = Store(f"sqlite:///{data_dir / 'assistant.db'}")
    try:
        recorded = store.get_job(job_id).container
    finally:
        store.close()
    return [c for c in docker_client().containers.list(ignore_removed=True, all=True, filters={"label": f"{MANAGED_LABEL}=1"})
            if c.labels.get(JOB_LABEL) == job_id or (recorded and c.id == recorded)]


def server_containers(pid: int) -> list:
    from assistant.sandbox.engine import MANAGED_LABEL, OWNER_LABEL, docker_client
    return [c for c in docker_client().containers.list(ignore_removed=True, all=True, filters={"label": f"{MANAGED_LABEL}=1"})
            if c.labels.get(OWNER_LABEL, "").endswith(f":{pid}")]


def old_leftover(data_dir: Path) -> Path:
    path = data_dir / "workspaces" / "0ldj0b02"
    path.mkdir(parents=True)
    old = time.time() - 30 * 86_400
    os.utime(path, (old, old))
    return path


@pytest.mark.docker
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_interrupts_jobs_stops_the_children_and_frees_the_port(tmp_path, docker_engine, scripted_model,
                                                                            serving, signum):
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 300")], repeat_last=True)
    leftover = old_leftover(tmp_path / "data")
    serve = serving(ASSISTANT_DEFAULT_REPO=str(make_calc_repo(tmp_path / "calc")),
                    ASSISTANT_RETENTION_INTERVAL_MIN="0.02")
    job_id = asyncio.run(start_job(serve.url))
    server = serve.server_pid()
    assert job_containers(job_id, serve.data_dir), "the job runs in a container"
    deadline = time.monotonic() + 60  # a bound for a loaded machine; it runs every 1.2 s
    while leftover.exists() and time.monotonic() < deadline:  # retention runs beside the server
        time.sleep(0.2)
    assert not leftover.exists(), serve.log.read_text()

    took = serve.stop_by(signum)

    assert took < STOP_BUDGET_S and serve.proc.returncode == 0, serve.log.read_text()
    assert not alive(server)
    assert port_is_free(serve.port)
    assert job_containers(job_id, serve.data_dir) == []
    assert server_containers(server) == []  # nor a warm sandbox readied for the next job
    store = Store(f"sqlite:///{serve.data_dir / 'assistant.db'}")
    job = store.get_job(job_id)
    store.close()
    assert job.state == "interrupted" and "retry" in job.reason


@pytest.mark.docker
def test_a_server_that_does_not_stop_in_time_is_killed_and_its_jobs_interrupted(tmp_path, docker_engine,
                                                                                 scripted_model, serving):
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 300")], repeat_last=True)
    serve = serving(ASSISTANT_DEFAULT_REPO=str(make_calc_repo(tmp_path / "calc")))
    job_id = asyncio.run(start_job(serve.url))
    server = serve.server_pid()
    os.kill(server, signal.SIGSTOP)  # hangs: it cannot run its shutdown at all

    took = serve.stop_by(signal.SIGTERM)

    assert took < STOP_BUDGET_S, serve.log.read_text()
    assert serve.proc.returncode != 0 and not alive(server) and port_is_free(serve.port)
    assert job_containers(job_id, serve.data_dir) == []
    store = Store(f"sqlite:///{serve.data_dir / 'assistant.db'}")
    job = store.get_job(job_id)
    store.close()
    assert job.state == "interrupted" and "retry" in job.reason


@pytest.mark.localmodel
def test_a_stop_signal_stops_the_embedded_model_server(tmp_path):
    serve = Serve(tmp_path, {}).start(timeout=300)  # no endpoint configured: the embedded model starts
    try:  # whatever fails here, no server is left running for the tests after this one
        server = serve.server_pid()
        deadline = time.monotonic() + 300  # a fresh install assembles the model file before its server starts
        while not children_of(server) and time.monotonic() < deadline:
            time.sleep(0.5)
        [model_server] = children_of(server)
        assert "llama" in Path(f"/proc/{model_server}/cmdline").read_text() or \
            "local_child" in Path(f"/proc/{model_server}/cmdline").read_text()
        took = serve.stop_by(signal.SIGTERM)
    finally:
        serve.kill()
    assert took < STOP_BUDGET_S and serve.proc.returncode == 0, serve.log.read_text()
    assert not alive(server) and not alive(model_server) and port_is_free(serve.port)


@pytest.mark.docker
def test_a_bounded_shutdown_interrupts_a_job_whose_worker_is_stuck(tmp_path, docker_engine, scripted_model,
                                                                   assistant_for):
    from assistant.jobs.manager import JobRequest
    scripted_model.when_system_contains(AGENT, [Reply(content="late", delay_s=6)], repeat_last=True)
    a = assistant_for(scripted_model, ASSISTANT_MODEL_TIMEOUT_S=60)
    job = a.jobs.submit(JobRequest(task="wait", repo=str(make_calc_repo(tmp_path / "calc")), setup=[]))[0]
    deadline = time.monotonic() + 60
    while not any(AGENT in system_text(r) for r in list(scripted_model.requests)) and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker now waits on the model (6 s), where no cancel reaches it
    assert a.store.get_job(job.id).state == "running"

    started = time.monotonic()
    a.jobs.shutdown(wait_s=1.0)

    assert time.monotonic() - started < 3
    final = a.store.get_job(job.id)
    assert final.state == "interrupted" and "retry" in final.reason
