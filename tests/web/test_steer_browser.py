"""Steering in the browser: a running job is steered twice from the composer (after its step, then "now:"), both
receipts on its card end acknowledged, and the scripted model checks that each message arrived in the agent's next
turn. The page asks for notification permission once, when the job starts (not on load), and shows a notification
when the job ends while the page is hidden; clicking it brings the card into view. Headless Chromium against the real
app process and the scripted model, with the local (bubblewrap) sandbox; `window.Notification` and
`document.hidden` are stubbed in the page by an init script to record what the page does (the browser is real).
Screenshots of the steered card (desktop 1280×800, phone 390×844) go to tests/artifacts/screenshots/."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from assistant.testing.scripted_model import ScriptedModelServer

from . import scripts
from .harness import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, AppProcess, login, make_repo, send
from .test_steer import FIRST, SECOND, SteeredAgent, route

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900),
              pytest.mark.skipif(shutil.which("bwrap") is None or not Path(CHROMIUM).exists(),
                                 reason="needs bubblewrap and /usr/bin/chromium")]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# What the page does with notifications, recorded: permission asks, notifications made, and a switch for
# document.hidden (a headless page is never hidden on its own).
STUB = """
window.__asks = 0; window.__notes = []; window.__hidden = false;
Object.defineProperty(document, "hidden", { configurable: true, get: function () { return window.__hidden; } });
function RecordedNotification(title, options) {
  this.title = title; this.body = (options || {}).body; this.onclick = null;
  window.__notes.push(this);
}
RecordedNotification.permission = "default";
RecordedNotification.requestPermission = function () {
  window.__asks += 1; RecordedNotification.permission = "granted"; return Promise.resolve("granted");
};
RecordedNotification.prototype.close = function () {};
window.Notification = RecordedNotification;
"""


@pytest.fixture
def world():
    root = Path(tempfile.mkdtemp(prefix="steer-browser-"))
    root.chmod(0o711)  # the local sandbox's unprivileged user must reach the data directory
    repo = make_repo(root / "repo")
    agent = SteeredAgent()
    model = ScriptedModelServer().start()
    model.when_system_contains(scripts.ROUTER, [route], repeat_last=True)
    model.when_system_contains(scripts.AGENT, [agent], repeat_last=True)
    (root / "data").mkdir()
    app = AppProcess(root / "data", model.base_url, repo, root / "app.log", ASSISTANT_SANDBOX_BACKEND="local",
                     ASSISTANT_REPO_ROOTS=str(root)).start()
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield {"app": app, "browser": browser, "agent": agent}
    for closer in (browser.close, pw.stop, app.stop, model.stop):
        try:
            closer()
        except Exception:
            pass
    shutil.rmtree(root, ignore_errors=True)


def card(page, number: int):
    return page.locator(".step", has=page.locator(f"h3:has-text('Job {number} ·')")).last


def receipt(page, number: int, text: str):
    return card(page, number).locator("li", has_text=text)


def test_a_job_steered_twice_from_the_browser_shows_both_receipts_acknowledged(world):
    context = world["browser"].new_context(viewport=DESKTOP)
    context.add_init_script(STUB)
    page = context.new_page()
    try:
        login(page, world["app"].url, "alice")
        page.wait_for_timeout(4000)                                   # a poll or more: no ask on page load
        assert page.evaluate("window.__asks") == 0
        send(page, "Add a mul function to calc.py")
        card(page, 1).locator("text=probing").first.wait_for(timeout=120_000)
        page.wait_for_function("window.__asks === 1", timeout=30_000)  # asked once, as the job started
        send(page, FIRST)
        receipt(page, 1, FIRST).locator("text=acknowledged").wait_for(timeout=180_000)
        card(page, 1).locator("text=tick").first.wait_for(timeout=120_000)
        assert page.evaluate("window.__notes.length") == 0           # a running job notifies nobody
        send(page, SECOND)
        page.evaluate("window.__hidden = true")                      # the user looks elsewhere
        now = receipt(page, 1, "stop counting and use a set")
        now.locator("text=acknowledged").wait_for(timeout=180_000)
        card(page, 1).locator("text=succeeded").first.wait_for(timeout=180_000)
        first_line = receipt(page, 1, FIRST).inner_text()
        second_line = now.inner_text()
        assert "delivered (step 2)" in first_line and "acknowledged: \u201cshell: $ for i in" in first_line
        assert "now" in second_line and "delivered (step 3), stopped" in second_line
        assert "acknowledged: \u201capply_patch" in second_line
        told = world["agent"].told
        assert [(step, FIRST in text) for step, text in told[:1]] == [(1, True)]
        assert [(step, "stop counting and use a set" in text) for step, text in told[1:]] == [(2, True)]

        page.wait_for_function("window.__notes.length === 1", timeout=30_000)
        note = page.evaluate("({title: window.__notes[0].title, body: window.__notes[0].body})")
        assert note["title"].startswith("Job 1 \u00b7 Add a mul function to calc.py \u2014 succeeded"), note
        assert note["body"].startswith("Added mul with the empty list handled"), note
        assert page.evaluate("window.__asks") == 1                    # asked once, never again
        page.evaluate("window.scrollTo(0, 0); document.querySelectorAll('*').forEach(e => { e.scrollTop = 0; })")
        page.evaluate("window.__hidden = false; window.__notes[0].onclick()")
        page.wait_for_function(
            "() => { const h = [...document.querySelectorAll('h3')].find(e => e.textContent.includes('Job 1 ·'));"
            " if (!h) return false; const r = h.getBoundingClientRect();"
            " return r.top >= -5 && r.top < window.innerHeight; }", timeout=15_000)

        shots = Path("/work/shots")
        shots.mkdir(parents=True, exist_ok=True)
        for size, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
            page.set_viewport_size(size)
            card(page, 1).get_by_text("Your messages to the job").first.evaluate(
                "e => e.scrollIntoView({block: 'center'})")
            page.wait_for_timeout(400)
            for where in (SCREENSHOTS, shots):
                page.screenshot(path=str(where / f"steered-card-{name}.png"))
    finally:
        try:
            page.screenshot(path=str(SCREENSHOTS / "steer-browser-last.png"), full_page=True)
        except Exception:
            pass
        context.close()
