"""Two users on one real server: bob tries everything on alice's conversation and gets nothing.

The attack of issue 20: bob opens the chat socket with alice's thread id (a python socket.io client and
headless Chromium), presses every job button with her job ids (his own session and hers), and fetches
every route that names her thread or job. All are refused; her repository, thread and jobs stay as they
were; no event bob's socket receives and no request the scripted model receives for bob carries her text.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from assistant.store import Element, Store
from assistant.testing.scripted_model import ScriptedModelServer

from . import scripts
from .harness import (CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, USERS, AppProcess, SocketClient, http, make_repo,
                      password_login)

pytestmark = [pytest.mark.timeout(600)]

SECRET = "ALICE-SECRET-7731"
PATCH = """diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -7,3 +7,7 @@ def add(a, b):
 
 def sub(a, b):
     return a - b
+
+
+def mul(a, b):
+    return a * b
"""
ACTIONS = ("apply_job", "branch_job", "retry_job", "attempts_job", "cancel_job", "answer_instead", "toggle_steps",
           "run_as_job")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def answered(client: SocketClient, needle: str):
    return lambda events: any(needle in json.dumps(data, default=str) for name, data in events
                              if name in ("new_message", "update_message", "stream_start"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    repo = make_repo(root / "repo")
    (repo / "loop-a").symlink_to("loop-b")  # a committed symlink loop: reading it must be a clean "no such file"
    (repo / "loop-b").symlink_to("loop-a")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "loop")
    model = scripts.install(ScriptedModelServer().start())
    app = AppProcess(root / "data", model.base_url, repo, root / "app.log", ASSISTANT_REPO_ROOTS=str(root),
                     ASSISTANT_WARM_POOL="false").start()
    store = Store(f"sqlite:///{root / 'data' / 'assistant.db'}")
    state = {"root": root, "repo": repo, "model": model, "app": app, "store": store, "clients": []}
    yield state
    for client in state["clients"]:
        client.close()
    for closer in (store.close, app.stop, model.stop):
        try:
            closer()
        except Exception:
            pass


@pytest.fixture(scope="module")
def alice(world):
    """Alice's conversation: a question carrying her secret, answered; a finished job with a patch, a job still
    queued, and an element, all in her thread."""
    url, store, repo = world["app"].url, world["store"], world["repo"]
    status, token, _ = password_login(url, "alice", USERS["alice"])
    assert status == 200 and token
    tid = str(uuid.uuid4())
    client = SocketClient(url, token, tid)
    world["clients"].append(client)
    assert client.connect(), client.error
    assert client.wait_for(answered(client, "Repository:")), client.received()[-2000:]
    client.send(f"What does add do? {SECRET}")
    assert client.wait_for(answered(client, "returns the sum")), client.received()[-2000:]
    owner = store.get_user("alice")
    base = git(repo, "rev-parse", "HEAD").strip()
    done = store.create_job(task=f"Add mul {SECRET}", repo=str(repo), thread_id=tid, user_id=owner.id,
                            artifacts={"patch": PATCH, "cited_files": json.dumps({"calc.py": f"# {SECRET}\n"})},
                            state="succeeded", base_commit=base, summary=f"Added mul {SECRET}",
                            outcome={"files": ["calc.py"]}, title="Add mul")
    queued = store.create_job(task=f"Add div {SECRET}", repo=str(repo), thread_id=tid, user_id=owner.id)
    element = Element(id=str(uuid.uuid4()), thread_id=tid, type="text", name="note", display="inline",
                      mime="text/plain", content=SECRET, props={})
    store.upsert_element(element)
    return {"token": token, "tid": tid, "client": client, "done": done.id, "queued": queued.id,
            "element": element.id}


def snapshot(world, alice) -> dict:
    store, repo = world["store"], world["repo"]
    return {"status": git(repo, "status", "--porcelain"), "branches": git(repo, "branch", "--list"),
            "head": git(repo, "rev-parse", "HEAD"),
            "messages": sorted((m.id, m.output) for m in store.list_messages(alice["tid"])),
            "jobs": sorted((j.id, j.state) for j in store.list_jobs(thread_id=alice["tid"])),
            "all_jobs": len(store.list_jobs(limit=1000)), "thread": store.get_thread(alice["tid"]).user_id}


def test_bob_can_touch_nothing_of_alices(world, alice):
    url, store, model = world["app"].url, world["store"], world["model"]
    before = snapshot(world, alice)
    assert SECRET in json.dumps(before["messages"])  # her thread holds her text: the checks below can fail
    status, bob_token, _ = password_login(url, "bob", USERS["bob"])
    assert status == 200 and bob_token

    # 1. The socket with her thread id is refused outright.
    intruder = SocketClient(url, bob_token, alice["tid"])
    world["clients"].append(intruder)
    assert not intruder.connect()
    assert "authorization failed" in str(intruder.error)

    # 2. His own conversation: every button with her job ids is refused.
    bob = SocketClient(url, bob_token, str(uuid.uuid4()))
    world["clients"].append(bob)
    assert bob.connect(), bob.error
    assert bob.wait_for(answered(bob, "Repository:"))
    pressed = 0
    for name in ACTIONS:
        for job_id in (alice["done"], alice["queued"]):
            payload = {"job_id": job_id}
            if name == "run_as_job":
                payload["text"] = "Add a test"
            if name == "attempts_job":
                payload["n"] = 2
            code, _ = bob.action(name, payload)
            assert code in (200, 401, 403, 404), (name, code)
            pressed += 1
    assert bob.wait_for(lambda events: sum(1 for n, _ in events if n == "toast") >= pressed, timeout=60), \
        bob.received()[-3000:]
    # ... and with her session id, Chainlit's own check refuses the session.
    bob_as_alice = SocketClient(url, bob_token)
    bob_as_alice.session_id = alice["client"].session_id
    code, _ = bob_as_alice.action("apply_job", {"job_id": alice["done"]})
    assert code == 401

    # 3. His question is answered from his conversation only.
    model.requests.clear()
    bob.send("What does add do?")
    assert bob.wait_for(answered(bob, "returns the sum"))
    assert model.requests, "bob's question reached no model"
    assert not [r for r in model.requests if SECRET in json.dumps(r)]

    # 4. Every route that names her thread, job or element: refused for him, served to her.
    routes = [f"/project/thread/{alice['tid']}", f"/project/thread/{alice['tid']}/element/{alice['element']}",
              f"/project/share/{alice['tid']}", f"/cite/{alice['done']}/F:calc.py?L=1",
              f"/cite-thread/{alice['tid']}/F:calc.py?L=1", f"/jobs/{alice['done']}/patch"]
    for route in routes:
        code, _, body = http("GET", url + route, token=bob_token)
        assert code in (401, 403, 404), (route, code, body[:300])
        assert SECRET.encode() not in body and b"def mul" not in body
    for route in routes[:2] + routes[3:]:
        code, _, body = http("GET", url + route, token=alice["token"])
        assert code == 200, (route, code, body[:300])
    code, _, _ = http("GET", url + f"/cite-thread/{alice['tid']}/F:calc.py?L=1", token=None)
    assert code == 401

    # 5. A real browser: bob opens her thread's page.
    frames = browse_as_bob(url, alice["tid"], world["app"].log_path)
    assert SECRET not in frames

    # Nothing of hers changed, and nothing of hers reached him.
    after = snapshot(world, alice)
    assert after == before
    received = bob.received() + intruder.received()
    leaks = [e for e in bob.events + intruder.events if SECRET in json.dumps(e, default=str)
             or alice["tid"] in json.dumps(e, default=str)]
    assert not leaks, leaks[:3]
    assert SECRET not in received and alice["tid"] not in received
    assert alice["done"] not in received.replace(json.dumps(alice["done"]), "")  # no card, no diff of her job
    assert not [e for e in bob.events if e[0] in ("new_message", "update_message")
                and (e[1] or {}).get("metadata", {}).get("job_id") in (alice["done"], alice["queued"])]

    # Her own buttons still work (the refusals above are about who asks).
    code, _ = alice["client"].action("cancel_job", {"job_id": alice["queued"]})
    assert code == 200
    deadline_state = store.get_job(alice["queued"]).state
    assert deadline_state == "cancelled" or alice["client"].wait_for(
        lambda _e: store.get_job(alice["queued"]).state == "cancelled", timeout=30)


def browse_as_bob(url: str, alice_tid: str, log: Path) -> str:
    """Bob in Chromium at /thread/<her id>: whatever the page shows and the socket brings, as text."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            frames: list[str] = []
            responses: list[str] = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))

            def keep(response):
                if "/project/thread" in response.url:
                    try:
                        responses.append(response.text())
                    except Exception:
                        pass
            page.on("response", keep)
            page.goto(url + "/login")
            page.fill("input[name=email]", "bob")
            page.fill("input[name=password]", USERS["bob"])
            page.click("button[type=submit]")
            page.wait_for_selector("#chat-input", timeout=30_000)
            refusals = log.read_text().count(f"socket of bob refused: thread {alice_tid}")
            page.goto(url + f"/thread/{alice_tid}")
            # The page opens the chat socket with her thread id to resume it: the server refuses that socket.
            deadline = time.monotonic() + 60
            while log.read_text().count(f"socket of bob refused: thread {alice_tid}") == refusals:
                assert time.monotonic() < deadline, "the browser's socket for her thread was never refused"
                page.wait_for_timeout(200)
            page.wait_for_load_state("networkidle", timeout=30_000)
            page.screenshot(path=str(SCREENSHOTS / "isolation-bob-at-alices-thread.png"))
            text = page.inner_text("body")
            assert "returns the sum" not in text
            return text + "\n".join(frames) + "\n".join(responses)
        finally:
            browser.close()


def test_a_symlink_loop_cited_in_a_conversation_is_a_clean_404(world, alice):
    url, root = world["app"].url, world["root"]
    for path in ("F:loop-a", "F:loop-b", "F:loop-a/x", "F:missing.py"):
        code, headers, body = http("GET", url + f"/cite-thread/{alice['tid']}/{path}?L=1", token=alice["token"])
        assert code == 404, (path, code, body[:300])
        assert b"no such file" in body and str(root).encode() not in body
    code, _, body = http("GET", url + f"/cite-thread/{alice['tid']}/F:calc.py?L=1", token=alice["token"])
    assert code == 200 and b"def add" in body
