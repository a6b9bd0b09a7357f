"""Logins last only as long as the access they were made with; passwords cannot be guessed quickly; only the
app's own origin (and the listed ones) may call it with a user's login. Real app processes on loopback."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.testing.scripted_model import ScriptedModelServer

from . import scripts
from .harness import (CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, SCREENSHOTS, USERS, AppProcess, SocketClient, http,
                      make_repo, password_login)

pytestmark = [pytest.mark.timeout(600)]

OK_ORIGIN = "http://trusted.example:8443"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    repo = make_repo(root / "repo")
    model = scripts.install(ScriptedModelServer().start())
    yield {"root": root, "repo": repo, "model": model}
    model.stop()


def start(base, data: str, **env) -> AppProcess:
    env.setdefault("ASSISTANT_REPO_ROOTS", str(base["root"]))
    env.setdefault("ASSISTANT_WARM_POOL", "false")
    return AppProcess(base["root"] / data, base["model"].base_url, base["repo"], base["root"] / f"{data}.log",
                      **env).start()


def user_of(url: str, token: str | None) -> int:
    return http("GET", url + "/user", token=token)[0]


def wait_until(condition, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def revoke(app: AppProcess, name: str) -> subprocess.CompletedProcess:
    env = {**app.env, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "assistant.cli", "users", "revoke", name], env=env,
                          capture_output=True, text=True, timeout=120)


def test_revoke_ends_cookies_and_open_sockets_at_once(base):
    app = start(base, "revoke")
    try:
        url = app.url
        _, alice, _ = password_login(url, "alice", USERS["alice"])
        _, bob, _ = password_login(url, "bob", USERS["bob"])
        assert user_of(url, alice) == 200 and user_of(url, bob) == 200
        socket = SocketClient(url, alice)
        assert socket.connect(), socket.error
        proc = revoke(app, "alice")
        assert proc.returncode == 0 and "ended every session of alice" in proc.stdout, proc.stderr
        wait_until(lambda: user_of(url, alice) == 401, 10, "alice's old cookie to stop working")
        for route in ("/project/threads", "/cite-thread/x/F:calc.py"):
            assert http("POST" if route == "/project/threads" else "GET", url + route, token=alice,
                        data=b'{"pagination":{"first":5},"filter":{}}' if route == "/project/threads" else None,
                        headers={"Content-Type": "application/json"})[0] == 401
        assert socket.disconnected.wait(15), "alice's open socket was left running"
        again = SocketClient(url, alice)
        assert not again.connect() and "authentication failed" in str(again.error)
        assert user_of(url, bob) == 200  # bob was not revoked
        status, fresh, _ = password_login(url, "alice", USERS["alice"])  # she may log in again
        assert status == 200 and user_of(url, fresh) == 200
        socket.close()
    finally:
        app.stop()


def test_removal_and_password_change_end_old_cookies_after_a_restart(base):
    app = start(base, "restart")
    url = app.url
    try:
        _, alice, _ = password_login(url, "alice", USERS["alice"])
        _, bob, _ = password_login(url, "bob", USERS["bob"])
        assert user_of(url, alice) == 200 and user_of(url, bob) == 200
    finally:
        app.stop()
    # Same data dir (same signing secret): alice's password changed, bob removed.
    app2 = AppProcess(app.data_dir, base["model"].base_url, base["repo"], base["root"] / "restart2.log",
                      ASSISTANT_REPO_ROOTS=str(base["root"]), ASSISTANT_WARM_POOL="false",
                      ASSISTANT_USERS="alice:a-new-password,carol:carol-pw")
    app2.start()
    try:
        url = app2.url
        assert user_of(url, alice) == 401 and user_of(url, bob) == 401
        for token in (alice, bob):
            client = SocketClient(url, token)
            assert not client.connect()
        assert password_login(url, "alice", USERS["alice"])[0] == 401
        status, fresh, _ = password_login(url, "alice", "a-new-password")
        assert status == 200 and user_of(url, fresh) == 200
    finally:
        app2.stop()


def test_header_logins_keep_working_and_can_be_revoked(base):
    app = start(base, "header", ASSISTANT_USERS="", ASSISTANT_HEADER_AUTH="X-Forwarded-User")
    try:
        url = app.url
        status, headers, _ = http("POST", url + "/auth/header", headers={"X-Forwarded-User": "dora"})
        assert status == 200, status
        token = re.search(r"access_token=([^;]+)", headers.get("set-cookie", "")).group(1)
        assert user_of(url, token) == 200
        client = SocketClient(url, token)
        assert client.connect(), client.error
        client.close()
        assert revoke(app, "dora").returncode == 0
        wait_until(lambda: user_of(url, token) == 401, 10, "dora's header login to end")
    finally:
        app.stop()


def test_sixty_wrong_passwords_lock_the_name_and_the_right_one_waits(base):
    app = start(base, "throttle", ASSISTANT_LOGIN_LOCK_S="6")
    try:
        url = app.url
        answers = [password_login(url, "alice", f"guess-{n}") for n in range(60)]
        codes = [a[0] for a in answers]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
        assert b"wrong user name or password" in answers[0][2]
        message = answers[-1][2].decode()
        assert re.search(r"too many attempts, try again in \d+ s", message), message
        status, token, body = password_login(url, "alice", USERS["alice"])
        assert status == 429 and token is None, body
        wait = int(re.search(r"in (\d+) s", body.decode()).group(1))
        assert 1 <= wait <= 6
        locked_at = time.monotonic()
        # The lock ends when it said it would, not before: poll with the right password.
        while (status := password_login(url, "alice", USERS["alice"])[0]) == 429:
            assert time.monotonic() - locked_at < wait + 10, "the lock did not end"
            time.sleep(0.5)
        assert status == 200 and time.monotonic() - locked_at >= wait - 1.5
        # Bob, from the same address, was never locked: the name's lock is not the address's (5 < 20).
        assert password_login(url, "bob", USERS["bob"])[0] == 200
        # A right password cleared alice's count: a single wrong one is a plain 401 again.
        assert password_login(url, "alice", "wrong")[0] == 401
        screenshots_of_the_login_page(url)
    finally:
        app.stop()


def screenshots_of_the_login_page(url: str) -> None:
    """The browser shows the clear message (not the raw 'Unauthorized: credentialssignin')."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for label, viewport in (("desktop", {"width": 1280, "height": 900}), ("phone", {"width": 390, "height": 844})):
                page = browser.new_context(viewport=viewport).new_page()
                page.goto(url + "/login")
                page.get_by_label("User name").wait_for(timeout=30_000)
                assert "user name and password" in page.inner_text("body")
                name = f"carl-{label}"
                page.fill("input[name=email]", name)
                page.fill("input[name=password]", "nope")
                page.click("button[type=submit]")
                page.get_by_text("Wrong user name or password.", exact=True).first.wait_for(timeout=30_000)  # not the toast
                assert "credentialssignin" not in page.inner_text("body")
                page.screenshot(path=str(SCREENSHOTS / f"login-wrong-password-{label}.png"))
                locked = page.get_by_text(re.compile(r"Too many attempts, try again in \d+ s")).first
                for _ in range(10):  # until the name is locked (5 wrong passwords), whatever the machine's pace
                    page.fill("input[name=password]", "nope")
                    with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST"):
                        page.click("button[type=submit]")
                    try:
                        locked.wait_for(timeout=2_000)
                        break
                    except Exception:
                        continue
                locked.wait_for(timeout=30_000)
                assert "credentialssignin" not in page.inner_text("body")
                page.screenshot(path=str(SCREENSHOTS / f"login-too-many-attempts-{label}.png"))
        finally:
            browser.close()


def test_login_page_names_the_admin_and_where_its_password_is(base):
    app = start(base, "admin", ASSISTANT_USERS="", ASSISTANT_REPO_ROOTS="")
    try:
        status, _, body = http("GET", app.url + "/project/translations?language=en-US")
        assert status == 200
        title = __import__("json").loads(body)["translation"]["auth"]["login"]["title"]
        assert "admin" in title and str(app.data_dir / "admin-password") in title
        playwright = pytest.importorskip("playwright.sync_api")
        if Path(CHROMIUM).exists():
            with playwright.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                try:
                    for label, viewport in (("desktop", {"width": 1280, "height": 900}),
                                            ("phone", {"width": 390, "height": 844})):
                        page = browser.new_context(viewport=viewport).new_page()
                        page.goto(app.url + "/login")
                        page.get_by_text("admin-password").first.wait_for(timeout=30_000)
                        page.screenshot(path=str(SCREENSHOTS / f"login-admin-hint-{label}.png"))
                finally:
                    browser.close()
        password = (app.data_dir / "admin-password").read_text().strip()
        assert password_login(app.url, "admin", password)[0] == 200
    finally:
        app.stop()


def test_only_the_apps_own_and_listed_origins_get_cors(base):
    app = start(base, "cors", ASSISTANT_ALLOWED_ORIGINS=OK_ORIGIN)
    try:
        url = app.url
        _, token, _ = password_login(url, "alice", USERS["alice"])
        evil = {"Origin": "http://evil.example"}
        status, headers, _ = http("GET", url + "/user", token=token, headers=evil)
        assert "access-control-allow-origin" not in headers and "access-control-allow-credentials" not in headers
        status, headers, _ = http("OPTIONS", url + "/user", headers={**evil, "Access-Control-Request-Method": "GET"})
        assert status >= 400 and "access-control-allow-origin" not in headers
        status, headers, _ = http("GET", url + "/ws/socket.io/?EIO=4&transport=polling", token=token, headers=evil)
        assert status == 403
        # The app's own origin: served (same-origin needs no CORS header) and its socket opens.
        status, _, _ = http("GET", url + "/user", token=token, headers={"Origin": url})
        assert status == 200
        status, _, _ = http("GET", url + "/ws/socket.io/?EIO=4&transport=polling", token=token, headers={"Origin": url})
        assert status == 200
        # A listed origin gets its CORS answer, credentials included; never a wildcard.
        status, headers, _ = http("GET", url + "/user", token=token, headers={"Origin": OK_ORIGIN})
        assert status == 200 and headers.get("access-control-allow-origin") == OK_ORIGIN
        assert headers.get("access-control-allow-credentials") == "true"
        status, headers, _ = http("OPTIONS", url + "/user", headers={"Origin": OK_ORIGIN,
                                                                     "Access-Control-Request-Method": "GET"})
        assert status == 200 and headers.get("access-control-allow-origin") == OK_ORIGIN
    finally:
        app.stop()


def test_a_wildcard_origin_setting_is_refused(settings_for):
    from assistant.config import SettingsError
    with pytest.raises(SettingsError, match="wildcard"):
        settings_for(ASSISTANT_ALLOWED_ORIGINS="*")
    with pytest.raises(SettingsError, match="not an origin"):
        settings_for(ASSISTANT_ALLOWED_ORIGINS="evil.example")
    assert settings_for(ASSISTANT_ALLOWED_ORIGINS="https://a.example, http://b.example:81/").origins() == \
        ("https://a.example", "http://b.example:81")

