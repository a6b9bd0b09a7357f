"""The scale-out deployment on one machine, end to end: PostgreSQL (a private server), three Docker engines (the
default one and two extra dockerd), two web processes, two workers, a real browser on each web process, the
scripted model. Twelve jobs are submitted through web process 1 and followed live on web process 2 while a
worker is killed, an engine is killed, web process 1 is killed and PostgreSQL restarts."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time

import pytest

from assistant.domain import events as ev
from assistant.sandbox.engine import DEPLOYMENT_LABEL
from assistant.store import Store
from tests.jobs.queue_harness import (Workers, fresh_database, private_postgres, queue_env,  # noqa: F401
                                      sleeping_agent, wait_for)
from tests.sandbox.engines import (DEFAULT_URL, ensure_engine, extra_engines, hosts_setting, kill_engine,  # noqa: F401
                                   socket_url)
from tests.web.harness import CHROMIUM, CHROMIUM_ARGS, USERS, AppProcess, login, make_repo, send

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.browser, pytest.mark.timeout(900)]

JOBS = 12
CAPACITY = 2
ENGINES = {"default": DEFAULT_URL, "scale-a": socket_url("scale-a"), "scale-b": socket_url("scale-b")}
CARDS_JS = """() => Object.fromEntries([...document.querySelectorAll('.step')].flatMap(step => {
    const h = step.querySelector('h3'); const m = h && h.innerText.match(/Job (\\d+) ·/);
    return m ? [[m[1], step.innerText]] : [];
}))"""


class CapacityWatch(threading.Thread):
    """Samples the running containers of this deployment on each engine, twice a second."""

    def __init__(self, deployment: str):
        super().__init__(daemon=True)
        self.deployment = deployment
        self.peak: dict[str, int] = collections.Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for name, url in ENGINES.items():
                listed = subprocess.run(["docker", "-H", url, "ps", "-q", "--filter",
                                         f"label={DEPLOYMENT_LABEL}={self.deployment}"],
                                        capture_output=True, text=True, timeout=10)
                if listed.returncode == 0:
                    self.peak[name] = max(self.peak[name], len(listed.stdout.split()))


def leftovers(deployment: str) -> dict[str, list[str]]:
    found = {}
    for name, url in ENGINES.items():
        listed = subprocess.run(["docker", "-H", url, "ps", "-aq", "--filter", f"label={DEPLOYMENT_LABEL}={deployment}"],
                                capture_output=True, text=True, timeout=10)
        found[name] = listed.stdout.split() if listed.returncode == 0 else ["(engine not answering)"]
    return found


def test_scale_out_survives_worker_engine_web_and_database_failures(tmp_path, private_postgres, scripted_model,
                                                                    extra_engines):
    url = fresh_database(private_postgres, "scale_out")
    sleeping_agent(scripted_model, 15)
    repo = make_repo(tmp_path / "repo")
    data = tmp_path / "data"
    env = queue_env(url, scripted_model.base_url, data, ASSISTANT_DOCKER_HOSTS=hosts_setting(CAPACITY),
                    ASSISTANT_DEFAULT_REPO=str(repo), ASSISTANT_USERS=",".join(f"{u}:{p}" for u, p in USERS.items()),
                    ASSISTANT_SERVE_WORKERS="false", ASSISTANT_REPO_ROOTS=str(tmp_path))
    store = Store(url)
    deployment = store.deployment_id()
    workers = Workers(env, tmp_path)
    web_env = {k: v for k, v in env.items() if k.startswith(("ASSISTANT_", "OPENAI_"))}
    webs = [AppProcess(data, scripted_model.base_url, repo, tmp_path / f"web{i}.log", **web_env) for i in (1, 2)]
    watch = CapacityWatch(deployment)
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        w1 = workers.start("w1", concurrency=6)
        workers.start("w2", concurrency=6)
        for web in webs:
            web.start()
        watch.start()
        page1 = browser.new_context().new_page()
        page2 = browser.new_context().new_page()
        login(page1, webs[0].url, "alice")
        login(page2, webs[1].url, "alice")

        for i in range(JOBS // 2):
            send(page1, f"/code Rest for a while, please ({chr(ord('a') + i)})")
        thread_id = wait_for(lambda: (store.list_threads(store.get_user("alice").id) or [None])[0], 30,
                             "alice's thread").id
        page2.goto(f"{webs[1].url}/thread/{thread_id}")  # the second half starts while web 2 shows the thread
        page2.wait_for_selector("h3:has-text('Job 1 ·')", timeout=30_000)
        for i in range(JOBS // 2, JOBS):
            send(page1, f"/code Rest for a while, please ({chr(ord('a') + i)})")
        wait_for(lambda: len(store.list_jobs(thread_id=thread_id)) == JOBS, 60, "the twelve jobs")
        seen: list[tuple[float, str, str]] = []  # (time, job number, card text) as web process 2 showed them

        def look(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    for number, text in page2.evaluate(CARDS_JS).items():
                        if not seen or (number, text) != seen[-1][1:]:
                            seen.append((time.monotonic(), number, text))
                except Exception:  # the page is between renders
                    pass
                page2.wait_for_timeout(250)

        def running() -> int:
            return sum(j.state == "running" for j in store.list_jobs(thread_id=thread_id))

        deadline = time.monotonic() + 120
        while running() < 5 and time.monotonic() < deadline:
            look(1)
        assert running() >= 5, [j.state for j in store.list_jobs(thread_id=thread_id)]
        on_w1 = [j.id for j in store.list_jobs(thread_id=thread_id) if j.runner == "w1" and j.state == "running"]
        os.kill(w1.pid, signal.SIGKILL)                               # a worker dies under its jobs
        look(2)
        on_b = [j.id for j in store.list_jobs(thread_id=thread_id) if j.engine == "scale-b" and j.state == "running"]
        kill_engine("scale-b")                                        # an engine dies under its jobs
        look(3)
        webs[0].kill()                                                # the web process the jobs came through dies
        web1_killed = time.monotonic()
        look(3)
        running_at_restart = running()
        private_postgres.restart()                                    # the database restarts
        while time.monotonic() - web1_killed < 400:
            look(2)
            if all(j.state in ("succeeded", "failed", "cancelled", "interrupted")
                   for j in store.list_jobs(thread_id=thread_id)):
                break
        look(2)

        jobs = store.list_jobs(thread_id=thread_id)
        assert [j.state for j in jobs] == ["succeeded"] * JOBS, [(j.number, j.state, j.reason) for j in jobs]
        # Each ran to its end once, on one engine that was up, and no engine ever ran more than its capacity.
        assert all(j.engine in ("default", "scale-a") for j in jobs if j.id in on_b)
        assert all(j.engine in ENGINES and j.fence <= 2 for j in jobs)
        for job in jobs:
            events = store.read_events(job.id)
            assert sum(isinstance(e, ev.Finished) for e in events) == 1
            assert sum(isinstance(e, ev.SummaryWritten) for e in events) == 1
            assert [e.seq for e in store.list_events(job.id)] == list(range(1, len(events) + 1))
        retried = {j.id: j for j in jobs if j.fence == 2}
        assert on_w1 and on_b and set(retried) >= set(on_w1) | set(on_b)
        for job_id in on_w1:  # the dead worker's jobs: interrupted for want of a heartbeat, then run by w2
            assert retried[job_id].runner == "w2"
            assert any(isinstance(e, ev.StateChanged) and e.state == "interrupted" and "no heartbeat" in e.reason
                       for e in store.read_events(job_id))
        assert running_at_restart > 0
        assert max(watch.peak.values()) <= CAPACITY, dict(watch.peak)
        assert store.engine_states()["scale-b"].state == "down"
        # Web process 2 showed every job's live progress, and kept showing progress after web process 1 died.
        progressed = {n for _, n, text in seen if "running" in text and ("step 1" in text or "now:" in text)}
        assert progressed == {str(j.number) for j in jobs}, sorted(progressed)
        assert {n for t, n, text in seen if t > web1_killed and "succeeded" in text} == {str(j.number) for j in jobs}
        assert any(t > web1_killed and "running" in text for t, _, text in seen)
    finally:
        watch.stop.set()
        for closer in (browser.close, pw.stop, *(web.stop for web in webs), workers.stop_all):
            try:
                closer()
            except Exception:
                pass
        ensure_engine("scale-b")
    # Back up, the engine is swept of what the dead runs left; no container of this deployment remains anywhere.
    survivor = Workers(env, tmp_path)
    try:
        survivor.start("sweeper")
        wait_for(lambda: store.engine_states()["scale-b"].state == "up", 60, "scale-b to come back up")
        wait_for(lambda: not any(leftovers(deployment).values()), 90, f"no containers left: {leftovers(deployment)}")
    finally:
        survivor.stop_all()
        store.close()
