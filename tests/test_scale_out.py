"""The scale-out deployment on one machine, end to end: PostgreSQL (a private server), three Docker engines (the
default one and two extra dockerd), two web processes, two workers, a real browser on each web process, the
scripted model. Twelve jobs are submitted through web process 1 and followed live on web process 2 while a
worker is killed, an engine is killed, web process 1 is killed and PostgreSQL restarts."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from assistant.domain import events as ev
from assistant.sandbox.engine import DEPLOYMENT_LABEL
from assistant.store import Store
from tests.jobs.queue_harness import (Workers, fresh_database, held_agent, private_postgres, queue_env,  # noqa: F401
                                      wait_for)
from tests.sandbox.engines import (DEFAULT_URL, ensure_engine, extra_engines, hosts_setting, kill_engine,  # noqa: F401
                                   socket_url)
from tests.web.harness import CHROMIUM, CHROMIUM_ARGS, USERS, AppProcess, login, make_repo, send

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.browser, pytest.mark.timeout(900)]

JOBS = 12
CAPACITY = 2
ENGINES = {"default": DEFAULT_URL, "scale-a": socket_url("scale-a"), "scale-b": socket_url("scale-b")}
# Installed in web process 2's page before it loads: every state a job card takes in that page, as the browser
# renders it ([time in s since the epoch, job number, card text]), so no state is missed between two looks.
RECORD_CARDS_JS = """(() => {
    window.__cards = [];
    let last = {};
    const record = () => {
        const now = {};
        for (const step of document.querySelectorAll('.step')) {
            const h = step.querySelector('h3'); const m = h && h.innerText.match(/Job (\\d+) ·/);
            if (m) now[m[1]] = step.innerText;
        }
        for (const [number, text] of Object.entries(now)) {
            if (last[number] !== text) window.__cards.push([Date.now() / 1000, number, text]);
        }
        last = now;
    };
    new MutationObserver(record).observe(document, {subtree: true, childList: true, characterData: true});
})()"""


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
    # Every job's agent sleeps 15 s in its sandbox, then waits for the model's last turn, which is held until the
    # scenario's failures are done: they happen while every job is under way, however slowly the machine submits them.
    release = held_agent(scripted_model, 15)
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
    seen: dict[tuple[float, str, str], None] = {}  # (time, job number, card text) as web process 2 showed them
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        w1 = workers.start("w1", concurrency=6)
        workers.start("w2", concurrency=6)
        for web in webs:
            web.start()
        watch.start()
        page1 = browser.new_context().new_page()
        page2 = browser.new_context().new_page()
        page2.add_init_script(RECORD_CARDS_JS)
        login(page1, webs[0].url, "alice")
        login(page2, webs[1].url, "alice")

        first_send = time.time()
        send(page1, "/code Rest for a while, please (a)")
        thread_id = wait_for(lambda: (store.list_threads(store.get_user("alice").id) or [None])[0], 30,
                             "alice's thread").id
        page2.goto(f"{webs[1].url}/thread/{thread_id}")  # the other jobs start while web 2 shows the thread
        page2.wait_for_selector("h3:has-text('Job 1 ·')", timeout=60_000)
        for i in range(1, JOBS):
            send(page1, f"/code Rest for a while, please ({chr(ord('a') + i)})")
        sends_done = time.time()
        wait_for(lambda: len(store.list_jobs(thread_id=thread_id)) == JOBS, 60, "the twelve jobs")

        def look(seconds: float) -> None:
            """Let the scenario run for a while, collecting what web process 2's page recorded meanwhile."""
            end = time.monotonic() + seconds
            while True:
                try:
                    seen.update(dict.fromkeys(tuple(row) for row in page2.evaluate("window.__cards.splice(0)")))
                except Exception:  # the page is reloading; its recorder starts again with it
                    pass
                if time.monotonic() >= end:
                    return
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
        web1_killed = time.time()
        look(3)
        running_at_restart = running()
        private_postgres.restart()                                    # the database restarts
        release.set()                                                 # the jobs may end now
        while time.time() - web1_killed < 400:
            look(2)
            if all(j.state in ("succeeded", "failed", "cancelled", "interrupted")
                   for j in store.list_jobs(thread_id=thread_id)):
                break
        look(2)

        jobs = store.list_jobs(thread_id=thread_id)
        assert [j.state for j in jobs] == ["succeeded"] * JOBS, [(j.number, j.state, j.reason, j.runner, j.engine)
                                                                 for j in jobs if j.state != "succeeded"]
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
        shown_done = {n: min((t for t, m, text in seen if m == n and "succeeded" in text), default=float("nan"))
                      for _, n, _ in seen}
        print(f"the twelve sends took {sends_done - first_send:.1f} s; web 2 showed jobs succeeded at (s after the "
              f"first send): {', '.join(f'{n}: {t - first_send:.1f}' for n, t in sorted(shown_done.items()))}")
        progressed = {n for _, n, text in seen if "running" in text and ("step 1" in text or "now:" in text)}
        missed = {str(j.number) for j in jobs} - progressed
        assert not missed, {n: [(round(t - first_send, 1), " | ".join(text.splitlines()[:4])) for t, m, text in seen
                                if m == n] for n in sorted(missed)}
        shown_since_web1_died = {n: text for t, n, text in sorted(seen) if t <= web1_killed}  # each card then...
        shown_since_web1_died = [(n, text) for n, text in shown_since_web1_died.items()] + [
            (n, text) for t, n, text in seen if t > web1_killed]                           # ...and every change since
        assert {n for n, text in shown_since_web1_died if "succeeded" in text} == {str(j.number) for j in jobs}
        assert any(t > web1_killed and "running" in text for t, _, text in seen)
    finally:
        release.set()
        watch.stop.set()
        (tmp_path / "web2-cards.json").write_text(json.dumps(list(seen), indent=1))  # what web 2 showed, to read
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
