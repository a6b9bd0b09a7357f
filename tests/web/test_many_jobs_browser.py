"""Twelve jobs in one conversation open in two browser sessions of the same user: nine started from the composer
(alternately in each session; the second builds on the first), three of which fail on purpose and are retried from
their card's Retry button (in either session). Every finished card, in BOTH sessions, ends complete without a reload: a succeeded job's diff view
and buttons, a failed job's reason and buttons, and no Cancel left on any. Headless Chromium against the real app
process, the scripted model and the Docker sandbox; the test waits for states of the page, never for a time."""
from __future__ import annotations

import re
import threading
from collections import Counter

import pytest

from assistant.store import Store
from assistant.testing.scripted_model import Reply, ScriptedModelServer

from . import scripts
from .harness import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, AppProcess, login, make_repo, send
from .test_final_cards import DESKTOP, assert_complete, button, card, wait_finished

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.timeout(1500)]

MODULES = 9
FRAGILE = (2, 5, 8)          # their first attempt fails (the model endpoint refuses the agent's first request)
FAILED_BUTTONS = ("Retry", "Run 3 attempts")


def task(i: int) -> str:
    return f"Create module m{i} with a function f{i}" + (" (fragile)" if i in FRAGILE else "")


class ModuleAgent:
    """Each job adds its own module m<i>.py and ends; a fragile task's first attempt fails at its first request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.first_turns: Counter = Counter()

    def __call__(self, request: dict) -> Reply:
        match = re.search(r"Create module m(\d+)", scripts._task(request))
        if match is None:
            return Reply.text("Nothing to do.")
        i = int(match.group(1))
        steps = scripts._tool_results(request)
        if steps == 0:
            with self.lock:
                self.first_turns[i] += 1
                attempt = self.first_turns[i]
            if i in FRAGILE and attempt == 1:
                return Reply.error(400)
            return Reply.call("apply_patch", patch=f"*** Begin Patch\n*** Add File: m{i}.py\n+def f{i}():\n"
                                                   f"+    return {i}\n*** End Patch")
        return Reply.text(f"Added module m{i} with f{i} \u3010F:m{i}.py\u2020L1-L2\u3011.")


@pytest.fixture
def world(tmp_path):
    from tests.web.test_browser import _docker_ready
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    repo = make_repo(tmp_path / "repo")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    agent = ModuleAgent()
    model = ScriptedModelServer().start()
    model.when_system_contains(scripts.ROUTER, [lambda _r: Reply.text('{"route": "job", "job": null}')],
                               repeat_last=True)
    model.when_system_contains(scripts.AGENT, [agent], repeat_last=True)
    app = AppProcess(tmp_path / "data", model.base_url, repo, tmp_path / "app.log",
                     ASSISTANT_REPO_ROOTS=str(tmp_path)).start()
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    pages: dict = {}
    yield {"app": app, "browser": browser, "pages": pages, "agent": agent, "data": tmp_path / "data"}
    for name, page in pages.items():
        try:
            page.screenshot(path=str(SCREENSHOTS / f"many-jobs-last-{name}.png"), full_page=True)
        except Exception:
            pass
    for closer in (browser.close, pw.stop, app.stop, model.stop):
        try:
            closer()
        except Exception:
            pass


def assert_failed_complete(page, number: int, who: str) -> None:
    """A failed card, final: its reason, the buttons of a failed job (no Apply: it changed nothing), no Cancel."""
    where = f"job {number} in {who}'s session"
    for label in FAILED_BUTTONS:
        button(page, number, label).first.wait_for(timeout=60_000)
    page.wait_for_function(
        "n => { const h = [...document.querySelectorAll('h3')].filter(e => e.textContent.includes(`Job ${n} ·`)).pop();"
        " const step = h && h.closest('.step');"
        " return !!step && ![...step.querySelectorAll('button')].some(b => b.textContent.trim() === 'Cancel'); }",
        arg=number, timeout=60_000)
    text = card(page, number).inner_text()
    assert "answered 400" in text, f"{where}: no reason on the card: {text[:600]}"
    for label in FAILED_BUTTONS:
        assert button(page, number, label).count() == 1, f"{where}: {button(page, number, label).count()} × {label}"
    for label in ("Cancel", "Apply to working copy"):
        assert button(page, number, label).count() == 0, f"{where} has a {label} button"


def test_twelve_jobs_with_retries_are_complete_in_both_sessions(world):
    url = world["app"].url
    first = world["pages"]["first"] = world["browser"].new_context(viewport=DESKTOP).new_page()
    login(first, url, "alice")
    send(first, f"/code {task(1)}")
    card(first, 1).wait_for(timeout=60_000)
    first.wait_for_url(re.compile(r"/thread/"), timeout=30_000)
    thread_id = first.url.rsplit("/thread/", 1)[1].split("?")[0]
    second = world["pages"]["second"] = world["browser"].new_context(viewport=DESKTOP).new_page()
    login(second, url, "alice")
    second.goto(f"{url}/thread/{thread_id}")
    card(second, 1).wait_for(timeout=60_000)
    sessions = {"first": first, "second": second}
    # Job 1 done first: job 2's words match its title (the router's title rule), so job 2 builds on it and so does
    # its retry, every run the same (while job 1 ran, job 2 would be a new job).
    wait_finished(first, 1)
    for i in range(2, MODULES + 1):                                    # alternately from each session
        page = second if i % 2 == 0 else first
        send(page, f"/code {task(i)}")
        for other in (first, second):                                  # each card shows in both sessions
            card(other, i).wait_for(timeout=120_000)

    retried: dict[int, int] = {}                                       # new job number -> the failed one
    for n, (failed, page) in enumerate(zip(FRAGILE, (first, second, first)), start=MODULES + 1):
        wait_finished(page, failed, "failed", timeout_s=600)
        button(page, failed, "Retry").click()
        retried[n] = failed
        for other in (first, second):
            card(other, n).wait_for(timeout=120_000)

    for who, page in sessions.items():
        for number in range(1, MODULES + len(FRAGILE) + 1):
            if number in FRAGILE:
                wait_finished(page, number, "failed", timeout_s=600)
                assert_failed_complete(page, number, who)
                continue
            wait_finished(page, number, timeout_s=600)
            assert_complete(page, number, who)
            module = retried.get(number, number)
            diff = card(page, number).locator("[data-testid=diff-view]").inner_text()
            assert f"m{module}.py" in diff, f"job {number} in {who}'s session: {diff[:300]}"
            if number in retried:                                      # the card says what it retries
                text = card(page, number).inner_text()
                assert f"Retry of job {retried[number]}, with its own repository" in text, text[:600]

    store = Store(f"sqlite:///{world['data'] / 'assistant.db'}")
    try:
        jobs = {j.number: j for j in store.list_jobs(thread_id=thread_id)}
    finally:
        store.close()
    assert sorted(jobs) == list(range(1, 13))
    assert {n: j.state for n, j in jobs.items()} == {n: "failed" if n in FRAGILE else "succeeded" for n in jobs}
    for number, failed in retried.items():                             # each retry ran the failed job's task
        assert jobs[number].task == jobs[failed].task and f"m{failed}" in jobs[number].task
    by_id = {j.id: n for n, j in jobs.items()}
    assert {n: by_id.get(j.parent_job_id) for n, j in jobs.items() if j.parent_job_id} == {2: 1, 10: 1}
    assert [f for _, f in jobs[10].outcome["files"]] == ["m1.py", "m2.py"]  # a retried follow-up: on job 1's result
    assert all(world["agent"].first_turns[i] == (2 if i in FRAGILE else 1) for i in range(1, MODULES + 1)), \
        world["agent"].first_turns
