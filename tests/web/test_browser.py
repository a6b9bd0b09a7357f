"""The chat app in headless Chromium against the real app process, a scripted model and the Docker sandbox.

The stages run in order on one server and share its state, like one user's afternoon: a quick answer,
a job, a follow-up, two jobs at once, a reload, a crash and restart, retries and settings, the same
conversation on a 390×844 phone, and a second user (on a phone) who sees none of it and can read nothing
outside ASSISTANT_REPO_ROOTS. Screenshots of each stage go to tests/artifacts/screenshots/.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from assistant.store import Store
from assistant.testing.scripted_model import ScriptedModelServer

from . import scripts
from .harness import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, USERS, AppProcess, make_repo, send

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.timeout(900)]


def _docker_ready() -> str | None:
    try:
        from assistant.sandbox import docker_status, image_status
        ok, detail = docker_status()
        if not ok:
            return f"no Docker engine: {detail}"
        ok, detail = image_status("assistant-sandbox:latest")
        if not ok:
            return f"the sandbox image is not ready: {detail}"
    except Exception as exc:
        return f"sandbox unavailable: {exc}"
    if not Path(CHROMIUM).exists():
        return "no Chromium at /usr/bin/chromium"
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("web")
    repo = make_repo(root / "repo")
    # A second repository whose setup takes a minute: its jobs wait in `setting up` long enough to be undone.
    slow = make_repo(root / "slow-repo", setup="sleep 60")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    model = scripts.install(ScriptedModelServer().start())
    # Two users: local repositories only under the root (which also holds the data dir, never a repository).
    app = AppProcess(root / "data", model.base_url, repo, root / "app.log", ASSISTANT_REPO_ROOTS=str(root)).start()
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    state = {"root": root, "repo": repo, "slow": slow, "model": model, "app": app, "browser": browser}
    yield state
    for closer in (browser.close, pw.stop, app.stop, model.stop):
        try:
            closer()
        except Exception:
            pass


@pytest.fixture(scope="module")
def alice(world):
    context = world["browser"].new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    login(page, world["app"].url, "alice", screenshot="00-login")
    yield page
    context.close()


# ---------------------------------------------------------------------- helpers
def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


PHONE = {"width": 390, "height": 844}


def login(page, url: str, user: str, screenshot: str | None = None) -> None:
    page.goto(url + "/login")
    page.get_by_label("User name").wait_for(timeout=30_000)  # not "Email address": names are what users have
    assert "Email" not in page.inner_text("body")
    if screenshot:
        shot(page, screenshot)
    page.fill("input[name=email]", user)
    page.fill("input[name=password]", USERS[user])
    page.click("button[type=submit]")
    page.wait_for_selector("#chat-input", timeout=30_000)
    page.wait_for_selector("text=Repository:", timeout=30_000)


def answers(page):
    return page.locator(".step[data-step-type='assistant_message']")


def header(page):
    return page.locator(".step[data-step-type='system_message']", has_text="Repository:").first


def set_repository(page, value: str, expect: str) -> None:
    """Type a repository into the settings panel, save, and wait for the app's notice about it."""
    notices = page.locator(f"text={expect}")
    before = notices.count()
    page.click("#chat-settings-header-button")
    page.fill("#repo", value)
    page.click("#confirm-sidebar")
    deadline = time.monotonic() + 30
    while notices.count() == before and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert notices.count() > before, f"no notice {expect!r} after setting the repository to {value!r}"


def fits_the_screen(page, selector: str) -> bool:
    """Nothing of the element is cut off or needs sideways scrolling on this viewport."""
    return page.locator(selector).last.evaluate(
        "e => e.getBoundingClientRect().right <= window.innerWidth && e.scrollWidth <= e.clientWidth + 1"
        " && document.documentElement.scrollWidth <= window.innerWidth")


def card(page, number: int):
    return page.locator(".step", has=page.locator(f"h3:has-text('Job {number} ·')")).last


def wait_card_state(page, number: int, state: str, timeout: float = 120) -> None:
    card(page, number).locator(f"text={state}").first.wait_for(timeout=timeout * 1000)


def db(world) -> Store:
    return Store(f"sqlite:///{world['root'] / 'data' / 'assistant.db'}")


def alice_thread(world) -> str:
    store = db(world)
    try:
        user = store.get_user("alice")
        threads = store.list_threads(user.id)
        assert threads, "alice has no thread"
        return threads[0].id
    finally:
        store.close()


def diff_view(page, number: int):
    return card(page, number).locator("[data-testid=diff-view]")


def diff_file(page, number: int, path: str):
    return diff_view(page, number).locator(f"[data-testid=diff-file][data-path='{path}']")


def diff_files(page, number: int) -> dict[str, tuple[str, str]]:
    """path -> (status, open) of every file section in a card's DiffView."""
    files = diff_view(page, number).locator("[data-testid=diff-file]")
    return {files.nth(i).get_attribute("data-path"): (files.nth(i).locator("[data-testid=diff-status]").inner_text(),
                                                       files.nth(i).get_attribute("data-open"))
            for i in range(files.count())}


def assert_one_diff_view_per_finished_card(page, numbers) -> None:
    for number in numbers:
        assert diff_view(page, number).count() == 1, f"job {number} shows {diff_view(page, number).count()} diff views"
    assert page.locator("[data-testid=diff-view]").count() == len(numbers)


def toggle_squares_file(page, name: str) -> None:
    """The big file starts folded, opens on a click with coloured lines and a truncation note, and folds again.

    Its 451 diff lines (a hunk header and 450 additions) exceed the 400 a card shows of one file.
    """
    squares = diff_file(page, 3, "squares.py")
    assert squares.get_attribute("data-open") == "false"
    assert squares.locator("[data-testid=diff-body]").count() == 0
    squares.locator("button[aria-expanded]").click()
    squares.locator("[data-testid=diff-truncated]").wait_for(timeout=5_000)
    assert squares.get_attribute("data-open") == "true"
    assert "51 more lines not shown" in squares.locator("[data-testid=diff-truncated]").inner_text()
    added = squares.locator("[data-kind=add]")
    assert added.count() == 399 and added.first.inner_text() == "+SQUARE_0 = 0"
    assert "46, 160, 67" in added.first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert squares.locator("[data-kind=hunk]").first.inner_text().startswith("@@")
    squares.scroll_into_view_if_needed()
    shot(page, name)
    squares.locator("[data-testid=diff-truncated]").scroll_into_view_if_needed()
    shot(page, name + "-end")
    squares.locator("button[aria-expanded]").click()
    squares.locator("[data-testid=diff-body]").wait_for(state="detached", timeout=5_000)
    assert squares.get_attribute("data-open") == "false"


def open_thread(page, title: str) -> None:
    page.locator("#thread-history").get_by_text(title, exact=False).first.click()
    page.wait_for_timeout(500)


# ---------------------------------------------------------------------- stages

def alice_jobs(world) -> dict:
    """Alice's jobs in her thread, by number, read straight from the store."""
    store = db(world)
    try:
        return {j.number: j for j in store.list_jobs(thread_id=alice_thread(world))}
    finally:
        store.close()

def test_quick_question_streams_an_answer_with_a_valid_citation(world, alice):
    starters = alice.locator("#starters")
    starters.wait_for(timeout=10_000)  # a new chat offers both starters beside the header
    assert "Ask about the code" in starters.inner_text() and "Delegate a job" in starters.inner_text()
    assert "the ⚙ button at the top right" in header(alice).inner_text()  # the welcome names the settings
    shot(alice, "01-logged-in")
    send(alice, "Where is add defined?")
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # sample the message while it streams
        texts = alice.locator(".step[data-step-type='assistant_message']").all_inner_texts()
        seen.append(texts[-1] if texts else "")
        if "Answered directly" in seen[-1]:
            break
        alice.wait_for_timeout(60)
    partial = [t for t in seen if "add" in t and "arguments." not in t]
    assert partial, f"never saw a partial answer while streaming: {seen[-3:]}"
    assert "returns the sum of its two arguments" in seen[-1]
    link = alice.locator("a", has_text="calc.py #L4-5").last
    link.wait_for()
    shot(alice, "02-quick-answer")
    href = link.get_attribute("href")
    assert href and "/cite-thread/" in href
    response = alice.request.get(world["app"].url + href)
    assert response.status == 200
    body = response.text()
    assert "def add(a, b):" in body and 'class="cited"' in body


def test_delegated_job_shows_progress_then_summary_and_diff(world, alice):
    send(alice, "Add a mul function to calc.py")
    card(alice, 1).wait_for(timeout=30_000)
    wait_card_state(alice, 1, "running", timeout=90)
    card(alice, 1).locator("text=probing").first.wait_for(timeout=30_000)  # the live tail of the command
    shot(alice, "03-job-running")
    wait_card_state(alice, 1, "succeeded", timeout=120)
    job_card = card(alice, 1)
    job_card.locator("text=+def mul(a, b):").first.wait_for(timeout=10_000)
    shot(alice, "04-job-diff")
    text = job_card.inner_text()
    assert "step 2: apply_patch · M calc.py" in text and "Summary" in text
    assert "step 1: $ for i in 1 2 3" in text and '"command"' not in text  # each step is its command
    assert "Started as a job (asks for a change; decided by the first-pass rules) — it runs in a sandbox." in text
    assert "1 file changed · +4 −0" in text
    assert diff_files(alice, 1) == {"calc.py": ("modified", "true")}
    assert job_card.locator("code.language-diff").count() == 0, "the Markdown diff is shown as well as the DiffView"
    assert "diff --git" not in text
    added_lines = diff_file(alice, 1, "calc.py").locator("[data-kind=add]")
    assert added_lines.count() == 4
    assert_one_diff_view_per_finished_card(alice, [1])
    assert "Apply to working copy" in alice.inner_text("body")
    log_link = job_card.locator("a", has_text=re.compile(r"log [0-9a-f]{6} #L1")).first
    href = log_link.get_attribute("href")
    response = alice.request.get(world["app"].url + href)
    assert response.status == 200 and "5" in response.text()
    file_link = job_card.locator("a", has_text="calc.py #L12-13").first
    page = alice.request.get(world["app"].url + file_link.get_attribute("href")).text()
    assert "def mul(a, b):" in page
    patch = alice.request.get(world["app"].url + job_card.locator("a", has_text="Download the patch").get_attribute("href"))
    assert patch.status == 200 and "+def mul(a, b):" in patch.text()


def test_follow_up_question_is_answered_from_the_job(world, alice):
    send(alice, "Why did you add mul in the last job?")
    reply = answers(alice).filter(has_text="Because the task asked").filter(has_text="Answered directly")
    reply.wait_for(timeout=30_000)  # streamed to the end
    reply.scroll_into_view_if_needed()
    shot(alice, "05-follow-up")
    text = reply.inner_text()
    assert "About job 1 · Add a mul function to calc.py" in text, text[:120]
    assert text.index("About job 1") < text.index("Because the task asked")
    # The invented link is shown as text, not as a link; the checked citation is one, into job 1's kept file.
    assert scripts.INVENTED_LINK in text
    assert reply.locator("a[href*='github.com']").count() == 0
    jobs = alice_jobs(world)
    assert reply.locator(f"a[href^='/cite/{jobs[1].id}/']", has_text="calc.py #L12-13").count() == 1
    history = [m.get("content") or "" for m in world["model"].requests[-1]["messages"] if m["role"] != "system"]
    for notice in ("Repository:", "Answered directly", "Job 1 ·", "Started as a job"):
        assert not any(notice in m for m in history), f"the app's own {notice!r} went back to the model"
    requests = [r for r in world["model"].requests
                if scripts.ANSWERER in "\n".join(m.get("content") or "" for m in r["messages"] if m["role"] == "system")
                and "Why did you" in str(r["messages"])]
    assert requests, "the follow-up never reached the answerer"
    system = "\n".join(m.get("content") or "" for m in requests[-1]["messages"] if m["role"] == "system")
    assert "Added `mul`" in system or "mul" in system  # the job's summary is in the answer's context


def test_two_jobs_run_at_once(world, alice):
    send(alice, "Also add a test for mul")
    card(alice, 2).wait_for(timeout=30_000)
    send(alice, "Add division support in a new module, not in calc/__init__.py")
    card(alice, 3).wait_for(timeout=30_000)
    users = alice.locator(".step[data-step-type='user_message']")
    assert "not in calc/__init__.py" in users.last.inner_text()  # as written, not calc/**init**.py
    assert "Job 3 · Add division support in a new module, not in calc/__init__.py" in card(alice, 3).inner_text()
    card(alice, 2).locator("text=running").first.wait_for(timeout=60_000)
    card(alice, 3).locator("text=running").first.wait_for(timeout=60_000)
    card(alice, 2).scroll_into_view_if_needed()
    shot(alice, "06-two-jobs")
    wait_card_state(alice, 2, "succeeded", timeout=180)
    wait_card_state(alice, 3, "succeeded", timeout=180)
    shot(alice, "07-two-jobs-done")
    jobs = alice_jobs(world)
    assert jobs[2].parent_job_id == jobs[1].id  # "also ..." built on job 1's result
    assert jobs[2].running_at < jobs[3].finished_at and jobs[3].running_at < jobs[2].finished_at, "they did not overlap"
    assert "test_mul.py" in card(alice, 2).inner_text()


def test_diff_view_folds_each_file(world, alice):
    assert_one_diff_view_per_finished_card(alice, [1, 2, 3])
    # Job 2 started from job 1's result, so its diff against the base commit holds job 1's change too.
    assert diff_files(alice, 2) == {"calc.py": ("modified", "true"), "test_mul.py": ("added", "true")}
    assert diff_files(alice, 3) == {"blob.bin": ("binary", "true"), "div.py": ("added", "true"),
                                    "squares.py": ("added", "false")}
    assert "+450 −0" in diff_file(alice, 3, "squares.py").locator("[data-testid=diff-counts]").inner_text()
    assert "Binary file" in diff_file(alice, 3, "blob.bin").inner_text()
    assert diff_file(alice, 3, "blob.bin").locator("[data-testid=diff-counts]").count() == 0
    diff_view(alice, 3).scroll_into_view_if_needed()
    shot(alice, "07b-diff-folded")
    toggle_squares_file(alice, "07c-diff-unfolded")
    div = diff_file(alice, 3, "div.py")
    div.locator("button[aria-expanded]").click()
    assert div.get_attribute("data-open") == "false"
    div.locator("button[aria-expanded]").click()
    assert div.get_attribute("data-open") == "true"
    store = db(world)
    try:
        elements = store.list_elements(alice_thread(world))
    finally:
        store.close()
    diff_elements = [e for e in elements if e.name == "DiffView"]
    assert len(diff_elements) == 3, [(e.id, e.for_id) for e in diff_elements]  # one per finished card, however often it re-rendered
    assert all(set(e.props) == {"files", "hidden_files", "added", "removed"} for e in diff_elements)


def test_reload_shows_the_history(world, alice):
    alice.reload()
    alice.wait_for_selector("#chat-input", timeout=30_000)
    open_thread(alice, "Where is add defined?")
    card(alice, 3).wait_for(timeout=30_000)
    body = alice.inner_text("body")
    for expected in ("Where is add defined?", "returns the sum", "Job 1 ·", "Job 2 ·", "Job 3 ·",
                     "Because the task asked", "+def mul(a, b):"):
        assert expected in body, expected
    card(alice, 1).get_by_role("button", name="Create branch").wait_for(timeout=15_000)  # recreated on resume
    answers(alice).filter(has_text="returns the sum").first.get_by_role("button", name="Run as a job").wait_for(
        timeout=15_000)
    diff_file(alice, 3, "squares.py").wait_for(timeout=15_000)
    alice.wait_for_timeout(1500)  # past the resume's card refresh, which must not add a second element
    assert_one_diff_view_per_finished_card(alice, [1, 2, 3])
    assert diff_files(alice, 3) == {"blob.bin": ("binary", "true"), "div.py": ("added", "true"),
                                    "squares.py": ("added", "false")}
    shot(alice, "08-reloaded")
    toggle_squares_file(alice, "08b-reloaded-diff-unfolded")


def test_restart_keeps_finished_jobs_and_interrupts_a_killed_one(world, alice):
    send(alice, "Slowly count ticks for a while")
    card(alice, 4).wait_for(timeout=30_000)
    wait_card_state(alice, 4, "running", timeout=90)
    card(alice, 4).locator("text=tick").first.wait_for(timeout=30_000)
    shot(alice, "09-before-crash")
    world["app"].kill()
    world["app"].start()
    alice.goto(world["app"].url)
    alice.wait_for_selector("#chat-input", timeout=30_000)
    open_thread(alice, "Where is add defined?")
    wait_card_state(alice, 4, "interrupted", timeout=30)
    wait_card_state(alice, 1, "succeeded", timeout=10)
    card(alice, 1).locator("text=+def mul(a, b):").first.wait_for(timeout=10_000)
    card(alice, 4).get_by_role("button", name="Retry").wait_for(timeout=15_000)  # buttons come back on resume
    diff_file(alice, 3, "squares.py").wait_for(timeout=15_000)
    alice.wait_for_timeout(1500)
    assert_one_diff_view_per_finished_card(alice, [1, 2, 3])  # the interrupted job 4 changed nothing
    assert diff_files(alice, 1) == {"calc.py": ("modified", "true")}
    shot(alice, "10-after-restart")
    toggle_squares_file(alice, "10b-after-restart-diff-unfolded")
    jobs = alice_jobs(world)
    assert jobs[4].state == "interrupted" and all(jobs[n].state == "succeeded" for n in (1, 2, 3))


def test_branch_retry_and_cancel_buttons(world, alice):
    card(alice, 1).get_by_role("button", name="Create branch").click()
    alice.locator("text=Created branch").first.wait_for(timeout=30_000)
    branches = subprocess.run(["git", "-C", str(world["repo"]), "branch", "--list", "assistant/*"],
                              capture_output=True, text=True, check=True).stdout
    assert "assistant/job-1-" in branches
    card(alice, 4).get_by_role("button", name="Retry").click()
    card(alice, 5).wait_for(timeout=30_000)
    wait_card_state(alice, 5, "running", timeout=90)
    card(alice, 5).get_by_role("button", name="Cancel").click()
    wait_card_state(alice, 5, "cancelled", timeout=60)
    shot(alice, "11-branch-retry-cancel")


def test_a_long_job_folds_its_earlier_steps_and_unfolds_them(world, alice):
    send(alice, "/code Take many small steps")
    wait_card_state(alice, 6, "succeeded", timeout=120)
    job_card = card(alice, 6)
    text = job_card.inner_text()
    assert "… 2 earlier steps not shown" in text and "echo small step 3" in text and "echo small step 2" not in text
    job_card.get_by_role("button", name="Show all steps").click()
    job_card.get_by_text("$ echo small step 1", exact=True).wait_for(timeout=15_000)
    assert "not shown" not in job_card.inner_text()
    job_card.scroll_into_view_if_needed()
    shot(alice, "11b-all-steps")
    job_card.get_by_role("button", name="Show fewer steps").click()
    job_card.get_by_text("2 earlier steps not shown", exact=False).wait_for(timeout=15_000)


def test_settings_check_the_repository_and_the_header_follows(world, alice):
    missing = world["root"] / "no-such-repo"
    set_repository(alice, str(missing), "The repository was not changed")
    refusal = answers(alice).last.inner_text()
    assert f"{missing} does not exist or is not a directory" in refusal and f"Still using {world['repo']}" in refusal
    set_repository(alice, str(world["root"] / "data"), "The repository was not changed")
    assert "data directory, which is never a repository" in answers(alice).last.inner_text()
    assert str(world["repo"]) in header(alice).inner_text()
    answers(alice).last.scroll_into_view_if_needed()
    shot(alice, "12-settings-refused")
    set_repository(alice, str(world["slow"]), "Repository set to")
    header(alice).get_by_text(str(world["slow"])).wait_for(timeout=10_000)  # the first message follows
    header(alice).scroll_into_view_if_needed()
    shot(alice, "13-settings-changed")


def test_retry_keeps_the_jobs_own_repository_and_parent(world, alice):
    """The conversation now points at another repository; a retry still runs the job as it was."""
    card(alice, 2).get_by_role("button", name="Retry").click()
    card(alice, 7).wait_for(timeout=30_000)
    jobs = alice_jobs(world)
    assert (jobs[7].repo, jobs[7].ref, jobs[7].setup, jobs[7].parent_job_id) == \
        (jobs[2].repo, jobs[2].ref, jobs[2].setup, jobs[1].id)
    assert jobs[7].repo == str(world["repo"]) != str(world["slow"])
    text = card(alice, 7).inner_text()
    assert "Starts from the result of job 1 · Add a mul function to calc.py" in text
    assert "Retry of job 2, with its own repository, ref, setup and starting point." in text
    assert str(world["repo"]) in text
    wait_card_state(alice, 7, "succeeded", timeout=120)  # built on job 1's result in job 1's repository
    card(alice, 7).scroll_into_view_if_needed()
    shot(alice, "14-retry-keeps-settings")
    assert diff_files(alice, 7) == {"calc.py": ("modified", "true"), "test_mul.py": ("added", "true")}


def test_a_routed_job_can_become_an_answer_before_it_starts(world, alice):
    send(alice, "Add a docstring to sub")
    card(alice, 8).wait_for(timeout=30_000)
    assert re.search(r"Started as a job \(asks for a change; decided by the (first-pass rules|router model)\)",
                     card(alice, 8).inner_text())
    wait_card_state(alice, 8, "setting up", timeout=60)  # the slow repository's setup holds it there
    undo = card(alice, 8).get_by_role("button", name="Answer instead")
    undo.wait_for(timeout=15_000)
    shot(alice, "15-answer-instead")
    undo.click()
    wait_card_state(alice, 8, "cancelled", timeout=15)  # at once, though its setup was still running
    alice.locator("text=you asked for an answer instead of job 8").last.wait_for(timeout=30_000)
    assert "returns the sum of its two arguments" in answers(alice).last.inner_text()
    assert alice_jobs(world)[8].repo == str(world["slow"])  # a new job takes the conversation's repository


def test_the_conversation_on_a_phone(world):
    context = world["browser"].new_context(viewport=PHONE)
    page = context.new_page()
    try:
        login(page, world["app"].url, "alice", screenshot="16a-phone-login")
        shot(page, "16-phone-new-chat")
        assert page.locator("#starters").is_visible()
        if not page.locator("#thread-history").is_visible():  # on a phone the history is behind the menu button
            page.click("#sidebar-trigger-button")
        open_thread(page, "Where is add defined?")
        card(page, 8).wait_for(timeout=30_000)
        follow_up = answers(page).filter(has_text="About job 1").first
        follow_up.scroll_into_view_if_needed()
        shot(page, "17-phone-follow-up")
        assert scripts.INVENTED_LINK in follow_up.inner_text()
        assert follow_up.locator("a[href*='github.com']").count() == 0
        assert "not in calc/__init__.py" in card(page, 3).inner_text()
        assert fits_the_screen(page, ".step:has(h3:has-text('Job 3 ·'))")
        send(page, "/jobs")
        table = page.locator("table", has_text="Add division support")
        table.last.wait_for(timeout=30_000)
        table.last.scroll_into_view_if_needed()
        shot(page, "18-phone-jobs-table")
        assert "not in calc/__init__.py" in table.last.inner_text()
        assert fits_the_screen(page, "table")
    finally:
        context.close()


def test_second_user_sees_none_of_it(world):
    thread_id = alice_thread(world)
    store = db(world)
    try:
        job = store.list_jobs(thread_id=thread_id)[0]
    finally:
        store.close()
    context = world["browser"].new_context(viewport=PHONE)
    page = context.new_page()
    try:
        login(page, world["app"].url, "bob")
        page.wait_for_timeout(1500)
        body = page.inner_text("body")
        assert "Where is add defined?" not in body and "Job 1" not in body
        send(page, "/jobs")
        page.locator("text=No jobs yet.").first.wait_for(timeout=30_000)
        shot(page, "19-second-user")
        base = world["app"].url
        assert page.request.get(f"{base}/project/thread/{thread_id}").status in (401, 404)
        threads = page.request.post(f"{base}/project/threads", data={"pagination": {"first": 20}, "filter": {}})
        assert threads.status == 200 and thread_id not in threads.text()
        assert page.request.get(f"{base}/jobs/{job.id}/patch").status == 404
        assert page.request.get(f"{base}/cite/{job.id}/F:calc.py?L=1-2").status == 404
        assert page.request.get(f"{base}/cite-thread/{thread_id}/F:calc.py?L=1-2").status == 404
        page.goto(f"{base}/thread/{thread_id}")
        page.wait_for_timeout(2000)
        assert "Where is add defined?" not in page.inner_text("body")
        shot(page, "20-second-user-direct-link")
    finally:
        context.close()


def test_second_user_cannot_read_outside_the_repo_roots(world):
    """Not by the settings, nor by a link swapped after they were saved: answers, citations and jobs refuse."""
    root = world["root"]
    link = root / "bobs-repo"
    link.symlink_to(world["repo"])
    outside = root.parent / "not-a-root"
    outside.mkdir()
    context = world["browser"].new_context(viewport=PHONE)
    page = context.new_page()
    try:
        login(page, world["app"].url, "bob")
        for path, reason in ((str(outside), "outside the directories repositories may come from"),
                             ("/etc", "ASSISTANT_REPO_ROOTS"), (str(root), "contains the assistant's data directory"),
                             (str(root / "data"), "never a repository"), (f"file://{root}/data", "never a repository")):
            set_repository(page, path, "The repository was not changed")
            assert reason in answers(page).last.inner_text(), path
        shot(page, "21-second-user-settings-refused")
        set_repository(page, str(link), "Repository set to")
        send(page, "Where is add defined?")  # allowed: answered from the linked repository
        page.locator("text=returns the sum of its two arguments").last.wait_for(timeout=30_000)
        store = db(world)
        try:
            bob_thread = store.list_threads(store.get_user("bob").id)[0].id
        finally:
            store.close()
        assert page.request.get(f"{world['app'].url}/cite-thread/{bob_thread}/F:calc.py?L=4-5").status == 200
        link.unlink()
        link.symlink_to(root / "data")  # swapped after the setting was saved
        for target in ("F:auth-secret?L=1-1", "F:assistant.db?L=1-1"):
            response = page.request.get(f"{world['app'].url}/cite-thread/{bob_thread}/{target}")
            assert response.status == 403 and "data directory" in response.text()
        send(page, "What is in the auth-secret file?")
        answers(page).filter(has_text="never a repository").filter(has_text="Answered directly").wait_for(timeout=30_000)
        send(page, "/code Add a docstring to sub")
        page.locator("text=Could not start the job").last.wait_for(timeout=30_000)
        assert "data directory" in answers(page).last.inner_text()
        shot(page, "22-second-user-reads-nothing")
        store = db(world)
        try:
            assert not [j for j in store.list_jobs(limit=1000) if j.repo == str(link)]
        finally:
            store.close()
        secret = (root / "data" / "auth-secret").read_text().strip()
        assert not any(secret in json.dumps(r) for r in world["model"].requests), "the model saw the data dir"
    finally:
        context.close()
