"""Every finished job card is complete in every session that shows it, without a reload: several jobs in one
conversation open in two browser sessions (a routed job from each, a Retry, "Run as a job"), then a cancelled
job that keeps its steps and says plainly why it has no diff. Headless Chromium against the real app process,
the scripted model and the Docker sandbox; screenshots (desktop 1280×900, phone 390×844) go to
tests/artifacts/screenshots/."""
from __future__ import annotations

import re

import pytest

from assistant.testing.scripted_model import ScriptedModelServer

from . import scripts
from .harness import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, AppProcess, login, make_repo, send

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.timeout(900)]

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
FINAL_BUTTONS = ("Apply to working copy", "Create branch", "Retry")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.web.test_browser import _docker_ready
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("final-cards")
    repo = make_repo(root / "repo")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    model = scripts.install(ScriptedModelServer().start())
    app = AppProcess(root / "data", model.base_url, repo, root / "app.log", ASSISTANT_REPO_ROOTS=str(root)).start()
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    state = {"app": app, "browser": browser, "pages": {}}
    yield state
    for closer in (browser.close, pw.stop, app.stop, model.stop):
        try:
            closer()
        except Exception:
            pass


def card(page, number: int):
    return page.locator(".step", has=page.locator(f"h3:has-text('Job {number} ·')")).last


def button(page, number: int, label: str):
    return card(page, number).get_by_role("button", name=label, exact=True)


def wait_finished(page, number: int, state: str = "succeeded", timeout_s: float = 240) -> None:
    card(page, number).locator(f"text={state}").first.wait_for(timeout=timeout_s * 1000)


def assert_complete(page, number: int, who: str) -> None:
    """The final card: its diff view, the buttons of a finished job with a patch, and no Cancel. Buttons and the
    diff element arrive as their own socket events after the text: wait for them, never reload."""
    where = f"job {number} in {who}'s session"
    diff = card(page, number).locator("[data-testid=diff-view]")
    diff.first.wait_for(timeout=30_000)
    for label in FINAL_BUTTONS:
        button(page, number, label).first.wait_for(timeout=30_000)
    page.wait_for_function(
        "n => { const h = [...document.querySelectorAll('h3')].filter(e => e.textContent.includes(`Job ${n} ·`)).pop();"
        " const step = h && h.closest('.step');"
        " return !!step && ![...step.querySelectorAll('button')].some(b => b.textContent.trim() === 'Cancel'); }",
        arg=number, timeout=30_000)
    assert diff.count() == 1, f"{where}: {diff.count()} diff views"
    for label in FINAL_BUTTONS:
        assert button(page, number, label).count() == 1, f"{where}: {button(page, number, label).count()} × {label}"
    assert button(page, number, "Cancel").count() == 0, f"{where} still has a Cancel button"


@pytest.fixture
def pages(world):
    """The test's pages; on a failure each one's screen is kept in the screenshots directory."""
    opened = {}
    yield opened
    for name, page in opened.items():
        try:
            page.screenshot(path=str(SCREENSHOTS / f"final-cards-last-{name}.png"), full_page=True)
        except Exception:
            pass


def test_finished_cards_are_complete_in_both_sessions(world, pages):
    url = world["app"].url
    alice = pages["first"] = world["browser"].new_context(viewport=DESKTOP).new_page()
    login(alice, url, "alice")
    send(alice, "Add a mul function to calc.py")                      # job 1: routed, in the first session
    card(alice, 1).wait_for(timeout=60_000)
    alice.wait_for_url(re.compile(r"/thread/"), timeout=30_000)
    thread_url = alice.url
    other = pages["second"] = world["browser"].new_context(viewport=DESKTOP).new_page()
    login(other, url, "alice")
    other.goto(thread_url)
    card(other, 1).wait_for(timeout=60_000)
    send(other, "Create division support")                             # job 2: routed, in the second session
    card(alice, 2).wait_for(timeout=60_000)                             # the first session sees it appear
    wait_finished(alice, 1)
    alice.evaluate("window.scrollTo(0, 0); document.querySelectorAll('*').forEach(e => { e.scrollTop = 0; })")
    button(alice, 1, "Retry").click()                                   # job 3: a Retry
    card(other, 3).wait_for(timeout=60_000)
    card(alice, 3).wait_for(timeout=60_000)
    alice.wait_for_function(                                             # scrolled into view where it was started
        "() => { const h = [...document.querySelectorAll('h3')].find(e => e.textContent.includes('Job 3 ·'));"
        " if (!h) return false; const r = h.getBoundingClientRect();"
        " return r.top >= 0 && r.top < window.innerHeight; }", timeout=15_000)
    send(alice, "Where is add defined?")                                # an answer, then "Run as a job": job 4
    answer = alice.locator(".step[data-step-type='assistant_message']", has_text="Answered directly").last
    answer.wait_for(timeout=120_000)
    answer.get_by_role("button", name="Run as a job").click()
    card(alice, 4).wait_for(timeout=60_000)
    for page, who in ((alice, "the first"), (other, "the second")):
        for number in (1, 2, 3, 4):
            wait_finished(page, number)
            assert_complete(page, number, who)
    world["pages"] = {"alice": alice, "other": other}


def test_a_cancelled_card_keeps_its_steps_and_says_why_there_is_no_diff(world):
    alice, other = world["pages"]["alice"], world["pages"]["other"]
    send(alice, "Slowly count to three hundred")                        # job 5: one long step, then a cancel
    card(alice, 5).locator("text=tick").first.wait_for(timeout=180_000)
    button(alice, 5, "Cancel").click()
    for page in (alice, other):
        wait_finished(page, 5, "cancelled", timeout_s=90)
        done = card(page, 5)
        done.get_by_text("No diff: the job was cancelled before it changed anything").wait_for(timeout=30_000)
        text = done.inner_text()
        assert "step 1:" in text and "stopped by the cancel" in text, text
        assert "command server is gone" not in text and "exited with code" not in text, text
        button(page, 5, "Retry").first.wait_for(timeout=30_000)  # buttons come as their own events, after the text
        assert button(page, 5, "Cancel").count() == 0 and button(page, 5, "Retry").count() == 1
    for page, size, name in ((alice, DESKTOP, "desktop"), (alice, PHONE, "phone")):
        page.set_viewport_size(size)
        for number, what in ((1, "finished"), (5, "cancelled")):
            card(page, number).locator("h3").first.evaluate("h => h.scrollIntoView({block: 'start'})")  # its top
            page.wait_for_timeout(300)
            page.screenshot(path=str(SCREENSHOTS / f"final-card-{what}-{name}.png"))
            card(page, number).get_by_role("button").last.evaluate("b => b.scrollIntoView({block: 'end'})")  # its end
            page.wait_for_timeout(300)
            page.screenshot(path=str(SCREENSHOTS / f"final-card-{what}-{name}-end.png"))
