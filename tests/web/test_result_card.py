"""The job card shows what kind of result a job produced, the review flags above its diff, claims the log
does not support, the summary of a failed job, and the tokens it spent: headless Chromium against the real
app process, the scripted model and the Docker sandbox. Screenshots go to tests/artifacts/screenshots/."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from assistant.testing.scripted_model import Reply, ScriptedModelServer, chunk_ids
from tests.fixtures.repos import FIX_PATCH, make_calc_repo

from .harness import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, USERS, AppProcess

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.timeout(600)]

ROUTER = "You route messages"
AGENT = "You are a careful software engineer"
SUMMARY_ROLE = "You write the summary of a coding job"
TEST_CMD = "python3 -m unittest -v 2>&1"
TEST_EDIT = """*** Begin Patch
*** Update File: test_calc.py
@@ class CalcTest(unittest.TestCase):
     def test_add(self):
-        self.assertEqual(add(2, 3), 5)
+        self.assertEqual(add(2, 3), -1)
*** End Patch"""


def _task(request: dict) -> str:
    return next((m.get("content") or "" for m in request["messages"] if m["role"] == "user"), "").lower()


def route(_request: dict) -> Reply:
    return Reply.text(json.dumps({"route": "job", "followup": False, "job": None, "reason": "asks for a change"}))


def agent(request: dict) -> Reply:
    """Three jobs: a real fix; a test edited to pass with a summary over a failing run; a directory-listing loop."""
    task, done = _task(request), sum(1 for m in request["messages"] if m["role"] == "tool")
    ids = chunk_ids(request)
    if "loop" in task:
        return Reply.call("shell", command="ls -la")
    if "quickly" in task:
        plan = [Reply.call("shell", command=TEST_CMD), Reply.call("apply_patch", patch=TEST_EDIT),
                Reply.call("shell", command=TEST_CMD)]
        final = f"Updated the expectation 【F:test_calc.py†L8-L8】. All tests pass 【{ids[0]}†L1-L3】." if ids else ""
    else:
        plan = [Reply.call("shell", command=TEST_CMD), Reply.call("apply_patch", patch=FIX_PATCH),
                Reply.call("shell", command=TEST_CMD)]
        final = (f"`add` subtracted 【F:calc.py†L1-L2】. The test failed before 【{ids[0]}†L1-L3】 and all tests "
                 f"pass after the fix 【{ids[-1]}†L1-L3】.") if ids else ""
    return plan[done] if done < len(plan) else Reply.text(final)


def summarise(request: dict) -> Reply:
    chunks = re.findall(r"chunk ([0-9a-f]{6}) · agent · exit 0 · (\d+) lines", request["messages"][-1]["content"])
    first, lines = chunks[0]
    return Reply.text(f"- The agent listed the workspace again and again 【{first}†L1-L{lines}】 without reading a "
                      "file or running a test.\n- It was stopped by the loop guard after the sixth identical call.\n"
                      "- Next: retry with a task that names the failing test.")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.web.test_browser import _docker_ready
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("result-card")
    repo = make_calc_repo(root / "repo")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    model = ScriptedModelServer().start()
    model.when_system_contains(ROUTER, [route], repeat_last=True)
    model.when_system_contains(SUMMARY_ROLE, [summarise], repeat_last=True)
    model.when_system_contains(AGENT, [agent], repeat_last=True)
    app = AppProcess(root / "data", model.base_url, repo, root / "app.log",
                     ASSISTANT_PRICE_TABLE="scripted-model=2.50/10", ASSISTANT_REPO_ROOTS=str(repo.parent)).start()
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.goto(app.url + "/login")
    page.fill("input[name=email]", "alice")
    page.fill("input[name=password]", USERS["alice"])
    page.click("button[type=submit]")
    page.wait_for_selector("#chat-input", timeout=30_000)
    yield page
    for closer in (context.close, browser.close, pw.stop, app.stop, model.stop):
        try:
            closer()
        except Exception:
            pass


def send(page, text: str) -> None:
    """Submit once the app has greeted the chat (its first message): the composer ignores Enter before that."""
    page.locator("text=Repository:").first.wait_for(timeout=60_000)
    page.wait_for_selector("#chat-input:not([disabled])", timeout=30_000)
    page.wait_for_selector("#stop-button", state="detached", timeout=60_000)
    users = page.locator(".step[data-step-type='user_message']")
    before = users.count()
    page.fill("#chat-input", text)
    for _attempt in range(3):
        page.keyboard.press("Enter")
        try:
            page.wait_for_function(f"document.querySelectorAll(\".step[data-step-type='user_message']\").length > {before}",
                                   timeout=10_000)
            return
        except playwright.TimeoutError:
            page.focus("#chat-input")
    raise AssertionError(f"the message {text!r} was not sent")


def finished_card(page, number: int, state: str):
    card = page.locator(".step", has=page.locator(f"h3:has-text('Job {number} ·')")).last
    card.locator(f"text={state}").first.wait_for(timeout=180_000)
    card.get_by_text("Tokens:").first.wait_for(timeout=30_000)
    return card


def shot(card, name: str) -> Path:
    card.scroll_into_view_if_needed()
    path = SCREENSHOTS / f"{name}.png"
    card.screenshot(path=str(path))
    return path


def test_a_fix_shows_its_kind_the_runs_it_rests_on_and_its_cost(world):
    send(world, "Fix the failing test in calc")
    card = finished_card(world, 1, "succeeded")
    text = card.inner_text()
    assert "✔ fix" in text and "Result: ✔ fix" in text
    assert "passed after the last edit" in text and "→ exit 0, after the last edit" in text
    assert re.search(r"Tokens: [\d,.k]+ prompt \+ [\d,.k]+ completion · model: scripted-model · 0\.\d{4} USD", text), text
    assert "Review flags" not in text and "not supported by the log" not in text
    shot(card, "result-1-fix")


def test_a_test_edit_is_flagged_above_the_diff_and_a_false_claim_is_marked(world):
    send(world, "Make the failing test pass quickly")
    card = finished_card(world, 2, "succeeded")
    text = card.inner_text()
    assert "✎ draft" in text and "tests themselves were changed: test_calc.py" in text
    flags = card.get_by_text("Review flags (1)")
    assert flags.count() == 1 and "1 assertion rewritten in an existing test" in text
    diff = card.locator("[data-testid=diff-view]")
    diff.wait_for(timeout=30_000)
    assert flags.bounding_box()["y"] < diff.bounding_box()["y"]          # the flags come before the diff
    assert "⚠ not supported by the log" in text and "exited 1" in text
    shot(card, "result-2-draft-flagged")


def test_a_job_stopped_by_the_loop_guard_has_a_checked_summary(world):
    send(world, "Look around in a loop")
    card = finished_card(world, 3, "failed")
    text = card.inner_text()
    assert "repeated the same call 6 times" in text and "∅ no result" in text
    assert "Summary (written from the log by the summary model)" in text
    assert "It was stopped by the loop guard" in text and "unverified" not in text
    assert card.locator("a", has_text=re.compile(r"log [0-9a-f]{6}")).count() >= 1   # its citation is a live link
    shot(card, "result-3-loop-guard")
