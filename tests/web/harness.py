"""The web app as a real subprocess on a loopback port, and a small git repository for it to work on."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}
SCREENSHOTS = REPO_ROOT / "tests" / "artifacts" / "screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repo(path: Path, setup: str | None = None) -> Path:
    """A tiny Python project with a function, a test and a history of one commit (and a setup script if given)."""
    path.mkdir(parents=True)
    if setup:
        (path / ".assistant").mkdir()
        (path / ".assistant" / "setup.sh").write_text(setup + "\n")
    (path / "calc.py").write_text(
        '"""A tiny calculator."""\n\n\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n')
    (path / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    (path / "README.md").write_text("# calc\n\nA tiny calculator used by the web tests.\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "calc"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env)
    return path


class AppProcess:
    """`chainlit run assistant/app.py` as `assistant serve` runs it, against a scripted model."""

    def __init__(self, data_dir: Path, model_url: str, repo: Path, log_path: Path, **extra_env: str):
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = log_path
        self.env = {**os.environ, "CHAINLIT_APP_ROOT": str(REPO_ROOT), "ASSISTANT_DATA_DIR": str(data_dir),
                    "OPENAI_BASE_URL": model_url, "OPENAI_API_KEY": "test-key", "ASSISTANT_MODEL": "scripted-model",
                    "ASSISTANT_MODEL_MAX_RETRIES": "1", "ASSISTANT_MODEL_TIMEOUT_S": "30",
                    "ASSISTANT_USERS": ",".join(f"{u}:{p}" for u, p in USERS.items()),
                    "ASSISTANT_DEFAULT_REPO": str(repo), "ASSISTANT_CONFIG": str(data_dir / "none.toml"),
                    "ASSISTANT_SANDBOX_BACKEND": "docker", "PYTHONPATH": str(REPO_ROOT),
                    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **extra_env}
        self.env.pop("CHAINLIT_AUTH_SECRET", None)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> "AppProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chainlit", "run", str(REPO_ROOT / "assistant" / "app.py"), "--headless",
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"the app did not answer on {self.url}; see {self.log_path}")

    def kill(self) -> None:
        """Die like a crashed server: no shutdown hooks run."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def login(page, url: str, user: str) -> None:
    """Log in and wait for the app's greeting (the composer ignores Enter before it)."""
    page.goto(url + "/login")
    page.fill("input[name=email]", user)
    page.fill("input[name=password]", USERS[user])
    page.click("button[type=submit]")
    page.wait_for_selector("#chat-input", timeout=30_000)
    page.locator("text=Repository:").first.wait_for(timeout=60_000)  # greeted: the composer takes Enter now


USER_MESSAGES = ".step[data-step-type='user_message']"
COMPOSER_HOLDS_JS = ("text => { const norm = t => t.replace(/\\s+/g, ' ').trim();"
                     " return norm(document.querySelector('#chat-input')?.innerText || '') === norm(text); }")


def send(page, text: str, timeout: float = 180) -> None:
    """Submit a message and check that it went.

    The composer ignores Enter while the previous message's handler runs (Chainlit's `loading`, set when the
    server's task_start arrives), and that start can reach the browser after the previous message already showed:
    on a busy machine a message typed right after the previous one is dropped and its text left in the composer.
    So: Enter when no handler is running, then wait until the composer has taken the text; while it has not, press
    Enter again once no handler runs. A second Enter cannot send twice: taking a message empties the composer at
    once. `timeout` bounds the whole (a loaded two-core machine answers slowly, but it answers)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout

    def left_ms() -> float:
        return max(1.0, (deadline - time.monotonic()) * 1000)

    page.wait_for_selector("#chat-input:not([disabled])", timeout=left_ms())
    before = page.locator(USER_MESSAGES).count()
    page.fill("#chat-input", text)
    presses = 0
    while True:
        page.wait_for_selector("#stop-button", state="detached", timeout=left_ms())
        page.press("#chat-input", "Enter")  # "/jobs" too: it runs at once, no second Enter (public/composer.js)
        presses += 1
        try:  # taken: the composer emptied (or the message already shows)
            page.wait_for_function(
                f"text => !({COMPOSER_HOLDS_JS})(text) || document.querySelectorAll(\"{USER_MESSAGES}\").length"
                f" > {before}", arg=text, timeout=min(left_ms(), 2_000))
            break
        except PlaywrightTimeout:
            if time.monotonic() >= deadline:
                raise AssertionError(f"the composer never took {text!r} ({presses} presses of Enter)") from None
    if presses > 1:  # worth seeing in a test's output: how often the race above happens
        print(f"send({text[:40]!r}): taken at Enter {presses}, {timeout - (deadline - time.monotonic()):.1f} s")
    page.wait_for_function(f"document.querySelectorAll(\"{USER_MESSAGES}\").length > {before}", timeout=left_ms())


# ---------------------------------------------------------------------- HTTP and socket.io as a script would
def http(method: str, url: str, *, token: str | None = None, headers: dict | None = None, data: bytes | None = None,
         timeout: float = 30) -> tuple[int, dict, bytes]:
    """One request; (status, headers in lower case, body), errors included."""
    import urllib.error

    request = urllib.request.Request(url, method=method, data=data, headers=dict(headers or {}))
    if token:
        request.add_header("Cookie", f"access_token={token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def password_login(url: str, user: str, password: str) -> tuple[int, str | None, bytes]:
    """POST /login as the login page does: (status, the access token from the cookie or None, body)."""
    from http.cookies import SimpleCookie
    from urllib.parse import urlencode

    status, headers, body = http("POST", url + "/login", data=urlencode({"username": user, "password": password}).encode(),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    jar = SimpleCookie()
    for key, value in headers.items():
        if key == "set-cookie":
            jar.load(value)
    token = jar["access_token"].value if "access_token" in jar else None
    if token is None and status == 200:
        import json
        token = json.loads(body or b"{}").get("access_token")
    return status, token, body


# A polling response carries every packet the server queued since the previous one (python-engineio's server
# drains its whole queue): a reopened thread easily has more than 16 waiting (its cards, their buttons, Chainlit's
# own resume events). The browser's engine.io parser takes any number; python-engineio's client caps a payload at
# 16 packets (Payload.max_decode_packets, a guard against floods; python-engineio issue 142) and drops the socket
# on the 17th, losing the whole response. The harness reads as the browser does.
BROWSER_MAX_DECODE_PACKETS = sys.maxsize


def read_payloads_as_the_browser() -> None:
    from engineio import payload

    payload.Payload.max_decode_packets = BROWSER_MAX_DECODE_PACKETS  # class-wide: this test process only


DROP_SETTLE_S = 1.0


class SocketClient:
    """A chat socket as the browser opens it (python-socketio), recording every event it receives."""

    def __init__(self, url: str, token: str, thread_id: str | None = None):
        import threading
        import uuid

        import socketio

        read_payloads_as_the_browser()

        self.url, self.token = url, token
        self.session_id = str(uuid.uuid4())
        self.thread_id = thread_id
        self.events: list[tuple[str, object]] = []
        self.error: object = None
        self.disconnected = threading.Event()
        self.dropped: str | None = None  # why the socket went down when neither side closed it
        self._closing = False
        self._lock = threading.Lock()
        self.sio = socketio.Client(reconnection=False)

        @self.sio.on("*")
        def _any(event, *args):
            with self._lock:
                self.events.append((event, args[0] if len(args) == 1 else list(args)))

        self.refused = threading.Event()

        @self.sio.event
        def connect_error(data):
            self.error = data
            self.refused.set()

        @self.sio.event
        def disconnect(reason=None):
            said_goodbye = (self.sio.reason.CLIENT_DISCONNECT, self.sio.reason.SERVER_DISCONNECT)
            if not self._closing and reason not in said_goodbye:
                self.dropped = str(reason)
            self.disconnected.set()

    def connect(self) -> bool:
        """True when the server accepted the socket; else self.error says why."""
        import socketio

        auth = {"sessionId": self.session_id, "clientType": "webapp", "userEnv": "{}", "chatProfile": None,
                "threadId": self.thread_id}
        try:
            self.sio.connect(self.url, socketio_path="/ws/socket.io", transports=["polling"], auth=auth,
                             headers={"Cookie": f"access_token={self.token}"}, wait_timeout=30)
        except socketio.exceptions.ConnectionError as exc:
            if not self.refused.wait(10):  # the server's reason arrives on the client's own thread
                self.error = str(exc)
            return False
        self.sio.emit("connection_successful")
        return True

    def send(self, text: str) -> str:
        import datetime
        import uuid

        message_id = str(uuid.uuid4())
        now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        self.sio.emit("client_message", {"message": {"id": message_id, "name": "User", "type": "user_message",
                                                     "output": text, "createdAt": now, "threadId": self.thread_id or ""},
                                         "fileReferences": None})
        return message_id

    def action(self, name: str, payload: dict) -> tuple[int, bytes]:
        """Press a button (Chainlit's POST /project/action for this session)."""
        import json
        import uuid

        body = json.dumps({"sessionId": self.session_id, "action": {"name": name, "payload": payload, "label": name,
                                                                     "id": str(uuid.uuid4()), "forId": None}})
        status, _, text = http("POST", self.url + "/project/action", token=self.token, data=body.encode(),
                               headers={"Content-Type": "application/json"})
        return status, text

    def received(self) -> str:
        import json

        with self._lock:
            return json.dumps(self.events, default=str)

    def wait_for(self, predicate, timeout: float = 60) -> bool:
        """True once `predicate(events)` holds. A socket that dropped on its own (a transport error: no server
        said goodbye, no test closed it) can receive nothing more: that fails at once, saying so, instead of
        waiting out the timeout. Events already read are handled on threads of their own: they get
        DROP_SETTLE_S to land first."""
        deadline = time.monotonic() + timeout
        dropped_at = None
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(list(self.events)):
                    return True
            if self.dropped is not None:
                dropped_at = dropped_at or time.monotonic()
                if time.monotonic() - dropped_at > DROP_SETTLE_S:
                    raise AssertionError(f"the socket of session {self.session_id} dropped ({self.dropped}): "
                                         f"nothing more can arrive; last events: {self.received()[-1500:]}")
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self._closing = True
        try:
            self.sio.disconnect()
        except Exception:
            pass
