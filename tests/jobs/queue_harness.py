"""Pieces for the queue tests: a private PostgreSQL server, `assistant worker` processes, waiting for things."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from assistant.testing import postgres

ROOT = Path(__file__).resolve().parents[2]
AGENT = "You are a careful software engineer"
HEARTBEAT_S, LOST_AFTER_S = "1", "4"


@pytest.fixture(scope="module")
def private_postgres():
    reason = postgres.available()
    if reason:
        pytest.skip(reason)
    server = postgres.PrivatePostgres().start()
    yield server
    server.close()


def fresh_database(server: postgres.PrivatePostgres, name: str) -> str:
    """A database of its own for one test, on the module's server."""
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + "/" + name


def queue_env(database_url: str, model_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATABASE_URL=database_url, ASSISTANT_DATA_DIR=str(data_dir), OPENAI_BASE_URL=model_url,
               OPENAI_API_KEY="k", ASSISTANT_MODEL="scripted-model", ASSISTANT_SANDBOX_BACKEND="docker",
               ASSISTANT_CONFIG=str(data_dir / "none.toml"), NO_PROXY="127.0.0.1,localhost",
               ASSISTANT_WORKER_HEARTBEAT_S=HEARTBEAT_S, ASSISTANT_WORKER_LOST_AFTER_S=LOST_AFTER_S,
               ASSISTANT_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Workers:
    """`assistant worker` processes, each logging to a file; all stopped at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, concurrency: int = 2, **extra_env: str) -> subprocess.Popen:
        log = open(self.log_dir / f"worker-{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "worker", "--name", name,
                                 "--concurrency", str(concurrency)], env={**self.env, **extra_env}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        wait_for(lambda: "running up to" in self.log(name) or proc.poll() is not None, 60, f"worker {name} to start")
        assert proc.poll() is None, self.log(name)
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"worker-{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def managed_containers(job_id: str | None = None, host: str | None = None, *, running: bool = False) -> list[str]:
    """The engine's containers of a job (or of the product), stopped ones too unless only the running are asked."""
    label = f"assistant.job={job_id}" if job_id else "assistant.managed=1"
    argv = ["docker"] + (["-H", host] if host else []) + ["ps", "-q" if running else "-aq", "--filter", f"label={label}"]
    return subprocess.run(argv, capture_output=True, text=True).stdout.split()


def sleeping_agent(model, seconds: float):
    """Every job's agent sleeps, says so, and ends: jobs whose time is the sandbox's, not the model's."""
    from assistant.testing.scripted_model import Reply, by_turn
    model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=f"sleep {seconds}; echo slept"),
                                               Reply.text("Done sleeping."))], repeat_last=True)


def held_agent(model, seconds: float, hold_limit_s: float = 100) -> threading.Event:
    """Like sleeping_agent, but each job's last model turn waits until the returned event is set (at most
    hold_limit_s, below the model timeout): what a test does to running jobs happens while they run, however
    slowly a loaded machine started them."""
    from assistant.testing.scripted_model import Reply, by_turn
    release = threading.Event()

    def held_last_turn(_request: dict) -> Reply:
        release.wait(hold_limit_s)
        return Reply.text("Done sleeping.")
    model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=f"sleep {seconds}; echo slept"),
                                               held_last_turn)], repeat_last=True)
    return release


class Deployment:
    """A database of its own on the module's server, a web-side Assistant (no worker in it) that records every
    update it hears, a repository, and `assistant worker` processes on demand."""

    def __init__(self, test_name: str, tmp_path: Path, server, model, **env: str):
        from assistant.config import load_settings
        from assistant.core import Assistant
        from tests.fixtures.repos import make_calc_repo

        self.url = fresh_database(server, "q_" + "".join(c for c in test_name[5:40].lower() if c.isalnum() or c == "_"))
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        self.env = queue_env(self.url, model.base_url, data, **env)
        self.web = Assistant(load_settings(self.env))
        self.web.start(sweep=False)
        self.workers = Workers(self.env, tmp_path)
        self.updates: list = []
        self.web.jobs.subscribe(self.updates.append)
        self.model = model
        self.repo = make_calc_repo(tmp_path / "calc")

    def submit(self, task: str = "work", **kw):
        from assistant.jobs.manager import JobRequest
        return self.web.jobs.submit(JobRequest(task=task, repo=str(self.repo), setup=[], **kw))

    def heard(self, job_id: str, kind: str) -> bool:
        return any(u.kind == kind for u in self.updates if u.job_id == job_id)

    def close(self) -> None:
        self.workers.stop_all()
        self.web.close()
