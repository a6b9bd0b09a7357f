"""A review in the browser: "review the branch feature against main" typed in the composer yields the review card
(the verdict as its headline, the verified blocker marked so and the unverified findings as claims, the proof's runs
on head and base), its Fix this buttons reachable on a phone, and Fix this shows the follow-up job's card. Headless
Chromium against the real app process, the scripted reviewer and fixer, the local (bubblewrap) sandbox.
Screenshots of the finished card (desktop 1280×800, phone 390×844) go to tests/artifacts/screenshots/ and to
/work/shots/ when it exists."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from assistant.testing.scripted_model import ScriptedModelServer
from tests.fixtures.chunks import AGENT_FIX, CHUNKS_BUGGY, REVIEWER, bug_findings, make_chunks_repo, reviewer

from . import scripts
from .harness import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, AppProcess, login, send

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900),
              pytest.mark.skipif(shutil.which("bwrap") is None or not Path(CHROMIUM).exists(),
                                 reason="needs bubblewrap and /usr/bin/chromium")]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
FIX_F1 = "Fix this: f1 (verified blocker)"


@pytest.fixture
def world():
    root = Path(tempfile.mkdtemp(prefix="review-browser-"))
    root.chmod(0o711)  # the local sandbox's unprivileged user must reach the data directory
    repo = make_chunks_repo(root / "chunks", CHUNKS_BUGGY)
    model = ScriptedModelServer().start()
    model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    model.when_system_contains(scripts.AGENT, [AGENT_FIX], repeat_last=True)
    (root / "data").mkdir()
    app = AppProcess(root / "data", model.base_url, repo, root / "app.log", ASSISTANT_SANDBOX_BACKEND="local",
                     ASSISTANT_REPO_ROOTS=str(root)).start()
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield {"app": app, "browser": browser}
    for closer in (browser.close, pw.stop, app.stop, model.stop):
        try:
            closer()
        except Exception:
            pass
    shutil.rmtree(root, ignore_errors=True)


def card(page, number: int):
    return page.locator(".step", has=page.locator(f"h3:has-text('Job {number} ·')")).last


def on_screen(locator) -> bool:
    """The element is inside the viewport's width, and the page needs no sideways scrolling."""
    return locator.evaluate("e => { const r = e.getBoundingClientRect(); return r.left >= 0 && "
                            "r.right <= window.innerWidth && document.documentElement.scrollWidth <= window.innerWidth; }")


def test_a_review_card_in_the_browser_and_fix_this(world):
    context = world["browser"].new_context(viewport=DESKTOP)
    page = context.new_page()
    try:
        login(page, world["app"].url, "alice")
        send(page, "review the branch feature against main")
        review = card(page, 1)
        review.locator("h2", has_text="Verdict: ✗ Changes requested").wait_for(timeout=240_000)
        fix = page.get_by_role("button", name=FIX_F1).first
        fix.wait_for(timeout=60_000)
        text = review.inner_text()
        assert "f1 · chunked drops the last item of an odd-length list — ✔ verified" in text
        assert "f2 · chunked is slow on huge lists — ⚠ unverified — no proof was given" in text
        assert "The reviewer's claim, not checked by the product:" in text
        assert "f2 · major · chunked is slow on huge lists — unverified (no proof was given)" in text
        assert "head: exit 1 ✖ fails" in text and "base: exit 0 ✔ passes" in text
        for name in ("Fix all blockers (1)", "Apply proof tests", "Review again"):
            assert page.get_by_role("button", name=name).count() >= 1, name

        shots = Path("/work/shots")
        for size, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
            page.set_viewport_size(size)
            review.locator("h2", has_text="Verdict").first.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            for where in (SCREENSHOTS, shots) if shots.is_dir() else (SCREENSHOTS,):
                page.screenshot(path=str(where / f"review-card-{name}.png"))
            review.get_by_text("f2 · chunked is slow on huge lists").first.evaluate(
                "e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(300)
            page.screenshot(path=str(SCREENSHOTS / f"review-card-unverified-{name}.png"))
            fix.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            assert on_screen(fix), f"{FIX_F1} is cut off at {size}"
            page.screenshot(path=str(SCREENSHOTS / f"review-card-buttons-{name}.png"))
        fix.click()                                                   # on the phone, as a user there would
        follow = card(page, 2)
        follow.locator("text=Fix this: finding f1 of review job 1").first.wait_for(timeout=60_000)
        follow.locator("text=succeeded").first.wait_for(timeout=240_000)
        assert "Starts from the result of job 1" in follow.inner_text()
    finally:
        try:
            page.screenshot(path=str(SCREENSHOTS / "review-browser-last.png"), full_page=True)
        except Exception:
            pass
        context.close()
