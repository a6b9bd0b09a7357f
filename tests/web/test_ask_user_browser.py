"""A job waiting for the user, in the browser: the agent's question shows on the card with a button per choice, the
page (hidden) shows a notification whose body is the question, and a choice button answers it. Headless Chromium
against the real app process and the scripted model, with the local (bubblewrap) sandbox; `window.Notification` and
`document.hidden` are stubbed as in test_steer_browser.py. Screenshots of the waiting card (desktop 1280×800, phone
390×844) go to tests/artifacts/screenshots/ and /work/shots/ when it exists."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from assistant.testing.scripted_model import ScriptedModelServer

from . import scripts
from .harness import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, AppProcess, login, make_repo, send
from .test_ask_user import CHOICES, QUESTION, AskingAgent
from .test_steer_browser import DESKTOP, PHONE, STUB, card

ASK_TIMEOUT_S = 15  # several polls of the page (every 3 s) see the job waiting, however busy the machine
# The page's polls of /jobs/signals, counted (set up after STUB): a test waits for the first answer instead of a time.
COUNT_POLLS = """
window.__polls = 0;
const __fetch = window.fetch.bind(window);
window.fetch = function (input, init) {
  const answer = __fetch(input, init);
  if (String(input).indexOf("/jobs/signals") >= 0) answer.then(function () { window.__polls += 1; }, function () {});
  return answer;
};
"""

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900),
              pytest.mark.skipif(shutil.which("bwrap") is None or not Path(CHROMIUM).exists(),
                                 reason="needs bubblewrap and /usr/bin/chromium")]


def open_world(**env: str):
    """The app (with `env`), the asking agent, a browser; and the function that closes them."""
    import json

    from assistant.testing.scripted_model import Reply
    root = Path(tempfile.mkdtemp(prefix="ask-browser-"))
    root.chmod(0o711)  # the local sandbox's unprivileged user must reach the data directory
    repo = make_repo(root / "repo")
    agent = AskingAgent()
    model = ScriptedModelServer().start()
    model.when_system_contains(scripts.ROUTER, [lambda request: Reply.text(json.dumps({"route": "job"}))],
                               repeat_last=True)
    model.when_system_contains(scripts.AGENT, [agent], repeat_last=True)
    (root / "data").mkdir()
    app = AppProcess(root / "data", model.base_url, repo, root / "app.log", ASSISTANT_SANDBOX_BACKEND="local",
                     ASSISTANT_REPO_ROOTS=str(root), **env).start()
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def close():
        for closer in (browser.close, pw.stop, app.stop, model.stop):
            try:
                closer()
            except Exception:
                pass
        shutil.rmtree(root, ignore_errors=True)
    return {"app": app, "browser": browser, "agent": agent}, close


@pytest.fixture
def world():
    opened, close = open_world()
    yield opened
    close()


@pytest.fixture
def impatient_world():
    opened, close = open_world(ASSISTANT_ASK_TIMEOUT_S=str(ASK_TIMEOUT_S))
    yield opened
    close()


def test_a_waiting_job_shows_its_question_notifies_it_and_a_choice_answers_it(world):
    context = world["browser"].new_context(viewport=DESKTOP)
    context.add_init_script(STUB)
    page = context.new_page()
    try:
        login(page, world["app"].url, "alice")
        page.wait_for_timeout(4000)   # the page's first poll has answered: what it lists after that is news
        send(page, "Add a mul function to calc.py")
        page.evaluate("window.__hidden = true")                      # the user looks elsewhere
        card(page, 1).locator("blockquote", has_text=QUESTION).wait_for(timeout=120_000)
        assert "Your next message in this conversation answers it." in card(page, 1).inner_text()
        page.wait_for_function("window.__notes.length >= 1", timeout=30_000)
        note = page.evaluate("({title: window.__notes[0].title, body: window.__notes[0].body})")
        assert "Job 1" in note["title"] and "waiting" in note["title"], note
        assert note["body"] == QUESTION, note
        page.evaluate("window.__hidden = false")
        buttons = [page.get_by_role("button", name=choice) for choice in CHOICES]
        for button in buttons:
            button.first.wait_for(timeout=30_000)

        shots = Path("/work/shots")
        for size, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
            page.set_viewport_size(size)
            card(page, 1).locator("blockquote", has_text=QUESTION).first.evaluate(
                "e => e.scrollIntoView({block: 'center'})")
            page.wait_for_timeout(400)
            for where in (SCREENSHOTS, shots) if shots.is_dir() else (SCREENSHOTS,):
                page.screenshot(path=str(where / f"waiting-card-{name}.png"))
        page.set_viewport_size(DESKTOP)

        buttons[0].first.click()
        card(page, 1).locator("text=succeeded").first.wait_for(timeout=180_000)
        text = card(page, 1).inner_text()
        assert f"Asked: \u201c{QUESTION}\u201d \u2014 answered: \u201c{CHOICES[0]}\u201d" in text
        assert "> " + CHOICES[0] in world["agent"].results[0]
    finally:
        try:
            page.screenshot(path=str(SCREENSHOTS / "ask-browser-last.png"), full_page=True)
        except Exception:
            pass
        context.close()


def test_a_question_nobody_answers_in_time_ends_the_job_and_says_so(impatient_world):
    context = impatient_world["browser"].new_context(viewport=DESKTOP)
    context.add_init_script(STUB)
    context.add_init_script(COUNT_POLLS)
    page = context.new_page()
    try:
        login(page, impatient_world["app"].url, "alice")
        page.wait_for_function("window.__polls >= 2", timeout=30_000)  # what the page lists from now on is news
        send(page, "Add a mul function to calc.py")
        page.evaluate("window.__hidden = true")                         # the user looks elsewhere
        waiting = card(page, 1)
        waiting.locator("blockquote", has_text=QUESTION).wait_for(timeout=120_000)
        text = waiting.inner_text()
        assert "waiting for you" in text and "Your next message in this conversation answers it." in text, text
        page.wait_for_function("window.__notes.length >= 1", timeout=30_000)
        note = page.evaluate("({title: window.__notes[0].title, body: window.__notes[0].body})")
        assert "Job 1" in note["title"] and "waiting" in note["title"], note
        assert note["body"] == QUESTION, note

        card(page, 1).locator("text=failed").first.wait_for(timeout=120_000)  # nobody answered
        card(page, 1).get_by_text("Summary").first.wait_for(timeout=30_000)
        done = card(page, 1).inner_text()
        assert f"Asked: \u201c{QUESTION}\u201d \u2014 no answer within {ASK_TIMEOUT_S} s" in done, done
        summary = done.split("Summary", 1)[1]
        assert f"for an answer that did not come (ASSISTANT_ASK_TIMEOUT_S is {ASK_TIMEOUT_S} s)" in summary, summary
        assert "Next: retry the job with the answer to its question in the task" in summary, summary
        assert "Your next message in this conversation answers it." not in done
        for choice in CHOICES:  # no button answers an ended question (they go as their own events, after the text)
            page.get_by_role("button", name=choice).first.wait_for(state="detached", timeout=30_000)
            assert page.get_by_role("button", name=choice).count() == 0, choice
        assert impatient_world["agent"].results == []                    # no answer ever reached the agent
        # Hidden, the page also tells that the job ended: a second notification, after the waiting one.
        page.wait_for_function("window.__notes.length >= 2", timeout=30_000)
        ended = page.evaluate("({title: window.__notes[1].title, body: window.__notes[1].body})")
        assert "Job 1" in ended["title"] and "failed" in ended["title"], ended
        assert page.evaluate("window.__asks") == 1
    finally:
        try:
            page.screenshot(path=str(SCREENSHOTS / "ask-timeout-browser-last.png"), full_page=True)
        except Exception:
            pass
        context.close()
