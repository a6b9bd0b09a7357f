"""Load benchmark: the web app as a browser sees it, idle and with 16 jobs running, beside the peer way.

    python bench/load.py [--jobs 16] [--questions 30] [--save-baseline] [--check] [--profile DIR]

The model is the scripted server (assistant/testing/scripted_model.py), answering at once; jobs run
several shell steps each in real Docker sandboxes; the browser is a socket.io client
(assistant/testing/chat_client.py); the web app runs as `chainlit run` does, with a probe for event-loop
lag and SQL statements (bench/probed_app.py). The peer way is, per figure: a bare Chainlit app streaming
the same model (bench/peer_app.py), the same jobs one by one, the raw SQL a thread's rows need, and
`docker run` of the same first command. Memory is the server's RSS plus the private memory of its
descendants (short-lived children forked from it share its pages; summing their RSS would count them twice).

Prints one table and writes bench/results/load.json. --save-baseline also writes
bench/results/load-baseline.json; --check compares every figure with that baseline and exits 1 when one
is more than 1.5 times worse (a regression by more than half): a timing that has a peer by its ratio to the
peer of the same run (a shared machine slows both), SQL statement counts by value. --profile DIR writes a pyinstrument report
of the web app's event-loop thread during the 16 jobs and while threads are opened, and a py-spy record of
all its threads during the 16 jobs (needs pyinstrument and py-spy; profiling slows the server, so the
figures of a --profile run are not comparable with others).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from assistant.sandbox import DEFAULT_IMAGE, image_status  # noqa: E402
from assistant.store import Store  # noqa: E402
from assistant.testing.chat_client import ChatSession, is_token, message_with  # noqa: E402
from assistant.testing.scripted_model import Reply, ScriptedModelServer, by_turn, chunk_ids, system_text  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "load.json"
BASELINE = REPO_ROOT / "bench" / "results" / "load-baseline.json"
USER, PASSWORD = "bench", "bench-" + secrets.token_hex(4)
ROUTER, ANSWERER, AGENT = "You route messages", "You answer questions about a codebase", "You are a careful software engineer"
ANSWER_TEXT = ("`add` in calc.py returns the sum of its two arguments and `sub` their difference; "
               "both are plain functions without side effects, so any caller may use them freely.")
QUESTION = "What does add do?"
FIRST_COMMAND = "python3 -c 'import time; print(repr(time.time()))'"
AGENT_STEPS = (
    Reply.call("shell", command=FIRST_COMMAND),
    Reply.call("shell", command="git status --short && ls"),
    Reply.call("shell", command="python3 -c 'import calc; print(calc.add(2, 3))'"),
    Reply.call("shell", command="sleep 1 && echo checked"),
    lambda request: Reply.text(f"Ran the checks; the sum is right 【{chunk_ids(request)[2]}†L1-L1】."),
)
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")


# ---------------------------------------------------------------------------------------------- figures
@dataclass
class Figure:
    key: str
    label: str
    ours: float | None
    peer: float | None = None
    peer_label: str = ""
    unit: str = "ms"
    target: str = ""                 # e.g. "< 150"; judged on `judged` (ours unless said otherwise)
    judged: float | None = None
    lower_is_better: bool = True
    guarded: bool = True             # --check compares it (not a single worst sample: that is noise here)

    @property
    def met(self) -> bool | None:
        if not self.target or self.judged is None:
            return None
        op, limit = self.target.split()
        value = self.judged
        return value < float(limit) if op == "<" else value >= float(limit) if op == ">=" else value == float(limit)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_memory_mb(pid: int) -> float:
    """Memory of a process and its descendants (the host side of the app), MiB: the process's RSS plus
    what each descendant holds privately, so that a short-lived child forked from the server (a `git` it
    runs) does not count the pages it shares with the server twice, as a sum of RSS would."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack += children.get(current, [])
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", rollup, re.M)}
        total += fields.get("Rss", 0) if current == pid else fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return total / 1024


class App:
    """A Chainlit app (ours or the peer) in its own process group, with the probe routes."""

    def __init__(self, target: Path, env: dict[str, str], log: Path):
        self.target, self.env, self.log = target, env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "App":
        self.proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "bench" / "probed_app.py"), str(self.target),
                                      str(self.port)], env=self.env, cwd=REPO_ROOT, start_new_session=True,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self.post("/bench/probe/watch")
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.target.name} did not answer; see {self.log}")

    def post(self, route: str, **params) -> dict:
        return httpx.post(self.url + route, params=params, timeout=60).json()

    def probe(self) -> dict:
        return httpx.get(self.url + "/bench/probe", timeout=60).json()

    def rss_mb(self) -> float:
        return tree_memory_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def base_env(model: ScriptedModelServer, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_", "CHAINLIT_"))}
    env.update(OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="bench", ASSISTANT_MODEL="scripted-model",
               ASSISTANT_DATA_DIR=str(data_dir), ASSISTANT_CONFIG=str(data_dir / "none.toml"),
               CHAINLIT_APP_ROOT=str(REPO_ROOT), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONPATH=str(REPO_ROOT))
    return env


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n")
    (path / "README.md").write_text("# calc\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "calc"]):
        subprocess.run([*git, *args], cwd=path, check=True)
    return path


def script(model: ScriptedModelServer) -> None:
    model.reset()
    decision = json.dumps({"route": "answer", "followup": False, "job": None, "reason": "a question"})
    model.when_system_contains(ROUTER, [Reply.text(decision)], repeat_last=True)
    model.when_system_contains(ANSWERER, [Reply.text(ANSWER_TEXT)], repeat_last=True)
    model.when_system_contains(AGENT, [by_turn(*AGENT_STEPS)], repeat_last=True)


# ---------------------------------------------------------------------------------------------- quick answers
async def ask(chat: ChatSession, model: ScriptedModelServer, text: str = QUESTION) -> dict:
    """One question: ms from send to the model's request, model's first chunk to the browser's first token,
    and send to the browser's first token."""
    seen = len(model.exchanges)
    sent = await chat.send(text)
    first = await chat.wait_for(is_token, since=sent, timeout=60)
    await chat.wait_for(message_with(ANSWER_TEXT[-40:]), since=first.at, timeout=60)
    exchange = next(e for e in model.exchanges[seen:] if ANSWERER in system_text(e.request))
    first_asked = min(e.received_at for e in model.exchanges[seen:] if e.received_at >= sent)
    return {"pre_model_ms": (exchange.received_at - sent) * 1000,
            "first_model_ms": (first_asked - sent) * 1000,  # ours: the router model, when the rules leave it open
            "relay_ms": (first.at - exchange.first_chunk_at) * 1000,
            "first_token_ms": (first.at - sent) * 1000}


async def routing(apps: list[App], model: ScriptedModelServer, questions: int) -> list[list[dict]]:
    """The same questions to each app in turn, so drifting load on a shared machine hits them alike."""
    chats = [await ChatSession(app.url, USER, PASSWORD).open() for app in apps]
    try:
        for _ in range(3):  # warm-up: imports, first connections, the checkout
            for chat in chats:
                await ask(chat, model)
        timings: list[list[dict]] = [[] for _ in apps]
        for _ in range(questions):
            for index, chat in enumerate(chats):
                timings[index].append(await ask(chat, model))
        return timings
    finally:
        for chat in chats:
            await chat.close()


async def conversations_open(app: App, model: ScriptedModelServer, count: int) -> float:
    """RSS with `count` conversations open, each having had one answer."""
    chats = [await ChatSession(app.url, USER, PASSWORD).open() for _ in range(count)]
    try:
        for chat in chats:
            await ask(chat, model)
        await asyncio.sleep(1)
        return app.rss_mb()
    finally:
        for chat in chats:
            await chat.close()


# ---------------------------------------------------------------------------------------------- jobs
def first_command_at(model: ScriptedModelServer, tag: str) -> float | None:
    """Wall-clock time the job's first command printed (from the tool result the agent's next turn carries)."""
    for exchange in list(model.exchanges):
        messages = exchange.request.get("messages", [])
        if AGENT in system_text(exchange.request) and any(tag in (m.get("content") or "") for m in messages[1:2]):
            for message in messages:
                if message.get("role") == "tool":
                    found = re.search(r"\b(\d{10}\.\d+)\b", message.get("content") or "")
                    if found:
                        return float(found.group(1))
    return None


def job_states(store: Store, tag: str) -> dict[str, str]:
    return {j.id: j.state for j in store.list_jobs(limit=100_000) if tag in j.task}


async def wait_jobs(store: Store, tag: str, count: int, timeout: float = 600) -> float:
    """perf_counter() time when `count` jobs tagged `tag` had all ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = job_states(store, tag)
        if len(found) == count and all(s in TERMINAL for s in found.values()):
            return time.perf_counter()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"jobs {tag}: {job_states(store, tag)}")


async def one_by_one(app: App, model: ScriptedModelServer, store: Store, count: int) -> dict:
    chat = await ChatSession(app.url, USER, PASSWORD).open()
    first_command_ms = []
    try:
        started = time.perf_counter()
        for index in range(count):
            tag = f"[serial {index}]"
            sent_wall = time.time()
            await chat.send(f"run the checks {tag}", command="code")
            await wait_jobs(store, tag, 1)
            printed = first_command_at(model, tag)
            if printed is not None:
                first_command_ms.append((printed - sent_wall) * 1000)
        elapsed = time.perf_counter() - started
    finally:
        await chat.close()
    states = job_states(store, "[serial ")
    failures = [f"{j.id} {j.state}: {j.reason}" for j in store.list_jobs(limit=100_000)
                if "[serial " in j.task and j.state != "succeeded"]
    return {"jobs_per_min": count / elapsed * 60, "first_command_ms": first_command_ms,
            "succeeded": sum(1 for s in states.values() if s == "succeeded"), "failures": failures}


async def at_once(app: App, model: ScriptedModelServer, store: Store, count: int, profile: Path | None) -> dict:
    chats = [await ChatSession(app.url, USER, PASSWORD).open() for _ in range(count)]
    asker = await ChatSession(app.url, USER, PASSWORD).open()
    await ask(asker, model)  # the asker's conversation exists before the load starts
    rss_before = app.rss_mb()
    memory: list[tuple[int, float]] = []  # (jobs running, MiB) while the load runs
    app.post("/bench/probe/reset")
    spy = None
    if profile:
        app.post("/bench/probe/profile", action="start")
        spy = record_all_threads(app, profile / "sixteen-jobs.py-spy.txt")
    started = time.perf_counter()
    await asyncio.gather(*(chat.send(f"run the checks [parallel {i}]", command="code") for i, chat in enumerate(chats)))
    answers = []
    while True:
        states = job_states(store, "[parallel ")
        memory.append((sum(1 for s in states.values() if s == "running"), app.rss_mb()))
        if len(answers) < 5 and "running" in states.values():  # asked while the jobs run
            answers.append(await ask(asker, model))
        if len(states) == count and all(s in TERMINAL for s in states.values()):
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    lag = app.probe()["lag_ms"]
    if profile:
        app.post("/bench/probe/profile", action="stop", path=str(profile / "sixteen-jobs.txt"))
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    for chat in chats + [asker]:
        await chat.close()
    failures = [f"{j.id} {j.state}: {j.reason}" for j in store.list_jobs(limit=100_000)
                if "[parallel " in j.task and j.state != "succeeded"]
    return {"jobs_per_min": count / elapsed * 60, "succeeded": sum(1 for s in states.values() if s == "succeeded"),
            "count": count, "failures": failures, "lag_p99_ms": pct(lag, 0.99), "lag_max_ms": max(lag), "lag_samples": len(lag),
            "answers": answers, "answers_first_token_ms": [a["first_token_ms"] for a in answers],
            "rss_before_mb": rss_before, "rss_peak_mb": max(m for _n, m in memory),
            # "with N jobs running": the most jobs seen running at once, and the memory at those moments
            # (while jobs are still being prepared, host-side git clones come and go as well)
            "most_running": max(n for n, _m in memory),
            "rss_running_mb": max(m for n, m in memory if n == max(n for n, _m in memory))}


def record_all_threads(app: App, out: Path) -> subprocess.Popen | None:
    """py-spy on every thread of the web process (workers too: they hold the GIL the event loop waits for),
    as collapsed stacks with thread names and GIL holders marked; None when py-spy is not installed."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("(no py-spy: pip install py-spy for a profile of all threads)", file=sys.stderr)
        return None
    return subprocess.Popen([spy, "record", "--pid", str(app.proc.pid), "--format", "raw", "--threads", "--gil",
                             "--rate", "200", "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------- store
def seed_thread(store: Store, user_id: str, repo: str, messages: int, jobs: int) -> str:
    """A conversation as months of use leave it: `jobs` finished jobs with their events, logs and diffs,
    and user and assistant messages up to `messages` in all (the job cards count)."""
    from assistant.web.relay import card_message_id
    thread = store.create_thread(user_id=user_id, name=f"seeded {messages}/{jobs}", repo=repo)
    diff = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n-x\n+y\n" * 5
    stamp = 0
    for number in range(jobs):
        job = store.create_job(task=f"change {number}", repo=repo, thread_id=thread.id, title=f"change {number}")
        for state in ("preparing", "running"):
            store.transition(job.id, state)
            store.add_event(job.id, "state", {"state": state})
        chunks = []
        for step in range(1, 5):
            chunk = store.add_chunk(job_id=job.id, command=f"pytest -q -k case{step}", text="ok\n" * 20, exit_code=0)
            chunks.append(chunk.id)
            store.add_event(job.id, "step", {"step": step, "tool": "shell", "title": f"pytest -q -k case{step}",
                                             "exit_code": 0, "chunk_id": chunk.id})
        store.put_artifact(job.id, "diff", diff)
        store.put_artifact(job.id, "patch", diff)
        store.update_job(job.id, summary=f"Changed it 【{chunks[0]}†L1-L3】.", outcome={"files": [["calc.py", 1, 1]]},
                         citations=[{"kind": "chunk", "target": chunks[0], "start": 1, "end": 3, "valid": True,
                                     "text": f"【{chunks[0]}†L1-L3】"}])
        store.transition(job.id, "succeeded", "1 citations, 0 unverified")
        store.add_event(job.id, "finished", {"state": "succeeded"})
        store.upsert_message(card_message_id(job.id), thread.id, job_id=job.id, type="assistant_message",
                             name="Jobs", output="", meta={"metadata": {"job_id": job.id}})
    for index in range(messages - jobs):
        stamp += 1
        kind = "user_message" if index % 2 == 0 else "assistant_message"
        store.upsert_message(secrets.token_hex(16), thread.id, type=kind, name=USER if index % 2 == 0 else "Assistant",
                             output=f"message {index}: " + "lorem ipsum dolor sit amet " * 12)
    return thread.id


def raw_rows_ms(db: Path, thread_id: str, runs: int = 10) -> float:
    """The peer way: the two SQL queries that fetch a thread's messages and jobs, nothing else."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with sqlite3.connect(db) as conn:
            conn.execute("SELECT * FROM message WHERE thread_id = ? ORDER BY created_at", (thread_id,)).fetchall()
            conn.execute("SELECT * FROM job WHERE thread_id = ?", (thread_id,)).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


async def open_thread(app: App, thread_id: str, jobs: int, runs: int) -> dict:
    """Opening a thread as the browser does: GET /project/thread/{id} for the page, and the socket's resume
    (until the thread shows, and until every job card in it has been refreshed)."""
    chat = ChatSession(app.url, USER, PASSWORD)
    token = await chat.login()
    http_ms, statements = [], []
    async with httpx.AsyncClient(base_url=app.url, cookies={"access_token": token}, timeout=60) as http:
        for _ in range(runs + 1):
            before = app.probe()["statements"]
            started = time.perf_counter()
            response = await http.get(f"/project/thread/{thread_id}")
            http_ms.append((time.perf_counter() - started) * 1000)
            statements.append(app.probe()["statements"] - before)
            response.raise_for_status()
    resume_ms, cards_ms = [], []
    for _ in range(runs + 1):
        session = ChatSession(app.url, USER, PASSWORD)
        session.token = token
        started = time.perf_counter()
        await session.open(thread_id)
        resumed = await session.wait_for(lambda r: r.event == "resume_thread", timeout=60)
        resume_ms.append((resumed.at - started) * 1000)
        refreshed = await cards_refreshed(session, jobs, since=resumed.at)
        cards_ms.append((refreshed - started) * 1000)
        await session.close()
    return {"http_ms": median(http_ms[1:]), "statements": median(statements[1:]), "resume_ms": median(resume_ms[1:]),
            "cards_ms": median(cards_ms[1:])}


async def cards_refreshed(session: ChatSession, jobs: int, since: float, timeout: float = 120) -> float:
    """perf_counter() time when the session had an update of each of the thread's `jobs` job cards."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        updates = [r for r in session.received if r.at >= since and r.event == "update_message"
                   and isinstance(r.data, dict) and (r.data.get("metadata") or {}).get("job_id")]
        if len({r.data["metadata"]["job_id"] for r in updates}) >= jobs:
            return max(r.at for r in updates)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the {jobs} job cards were not all refreshed within {timeout:.0f} s")


# ---------------------------------------------------------------------------------------------- peer ways
def docker_cli_first_command_ms(runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        sent = time.time()
        out = subprocess.run(["docker", "run", "--rm", "--network", "none", DEFAULT_IMAGE, "bash", "-c",
                              FIRST_COMMAND], capture_output=True, text=True, check=True).stdout
        times.append((float(out.strip()) - sent) * 1000)
    return median(times)


# ---------------------------------------------------------------------------------------------- the run
async def measure(args: argparse.Namespace, scratch: Path) -> tuple[list[Figure], dict]:
    model = ScriptedModelServer().start()
    script(model)
    repo = make_repo(scratch / "repo")
    raw: dict = {}
    profile = Path(args.profile).resolve() if args.profile else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)

    # The peer, a bare Chainlit app on the same model, and ours: up together for the paired figures.
    peer_env = base_env(model, scratch / "peer-data")
    peer_env.update(PEER_USER=f"{USER}:{PASSWORD}", CHAINLIT_AUTH_SECRET=secrets.token_hex(32))
    peer = App(REPO_ROOT / "bench" / "peer_app.py", peer_env, scratch / "peer.log").start()
    data_dir = scratch / "data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o711)  # the sandbox user must reach the workspaces
    env = base_env(model, data_dir)
    env.update(ASSISTANT_USERS=f"{USER}:{PASSWORD}", ASSISTANT_DEFAULT_REPO=str(repo), ASSISTANT_SANDBOX_BACKEND="docker",
               ASSISTANT_MAX_CONCURRENT_JOBS=str(args.jobs), ASSISTANT_SETUP_CACHE="false")
    ours = App(REPO_ROOT / "assistant" / "app.py", env, scratch / "app.log").start()
    store = Store(f"sqlite:///{data_dir / 'assistant.db'}")
    try:
        await asyncio.sleep(2)
        raw["rss_idle_mb"], raw["peer_rss_idle_mb"] = ours.rss_mb(), peer.rss_mb()
        ours.post("/bench/probe/reset")
        raw["routing"], raw["peer_routing"] = await routing([ours, peer], model, args.questions)
        raw["idle_lag_p99_ms"] = pct(ours.probe()["lag_ms"], 0.99)
        raw["rss_20_mb"] = await conversations_open(ours, model, 20)
        raw["peer_rss_20_mb"] = await conversations_open(peer, model, 20)
        peer.stop()
        raw["serial"] = await one_by_one(ours, model, store, args.jobs)
        raw["parallel"] = await at_once(ours, model, store, args.jobs, profile)

        user_id = store.get_or_create_user(USER).id
        big = seed_thread(store, user_id, str(repo), messages=500, jobs=50)
        small = seed_thread(store, user_id, str(repo), messages=500, jobs=5)
        if profile:
            ours.post("/bench/probe/profile", action="start")
        raw["open_big"] = await open_thread(ours, big, jobs=50, runs=5)
        if profile:
            ours.post("/bench/probe/profile", action="stop", path=str(profile / "open-thread.txt"))
        raw["open_small"] = await open_thread(ours, small, jobs=5, runs=3)
        raw["raw_rows_ms"] = raw_rows_ms(data_dir / "assistant.db", big)
    finally:
        store.close()
        ours.stop()
        peer.stop()
        model.stop()
    raw["docker_cli_first_command_ms"] = docker_cli_first_command_ms()
    return figures(raw, args), raw


def figures(raw: dict, args: argparse.Namespace) -> list[Figure]:
    ours_pre = median([r["pre_model_ms"] for r in raw["routing"]])
    peer_pre = median([r["pre_model_ms"] for r in raw["peer_routing"]])
    ours_first = median([r["first_model_ms"] for r in raw["routing"]])
    ours_relay = median([r["relay_ms"] for r in raw["routing"]])
    peer_relay = median([r["relay_ms"] for r in raw["peer_routing"]])
    par, ser = raw["parallel"], raw["serial"]
    answers = par["answers_first_token_ms"]
    per_job = (par["rss_running_mb"] - par["rss_before_mb"]) / max(par["most_running"], 1)
    big, small = raw["open_big"], raw["open_small"]
    n_plus_one = (big["statements"] - small["statements"]) / 45  # the big thread has 45 more jobs
    first_cmd = median(ser["first_command_ms"]) if ser["first_command_ms"] else None
    return [
        Figure("route_pre_model_ms", "message → answering model asked (median)", ours_pre, peer_pre, "bare Chainlit",
               target="< 5", judged=ours_pre - peer_pre),
        Figure("route_first_model_ms", "message → first model request (median; ours: the router)", ours_first,
               peer_pre, "bare Chainlit"),
        Figure("relay_first_token_ms", "model's 1st token → browser's (median)", ours_relay, peer_relay,
               "bare Chainlit", target="< 20", judged=ours_relay),
        Figure("jobs_finished", f"jobs of {par['count']} at once that succeeded", par["succeeded"], None, "",
               unit="jobs", target=f">= {par['count']}", judged=par["succeeded"], lower_is_better=False),
        Figure("jobs_per_min", f"jobs per minute, {par['count']} at once", par["jobs_per_min"], ser["jobs_per_min"],
               "one by one", unit="/min", lower_is_better=False),
        Figure("loop_lag_p99_ms", f"event-loop lag p99, {par['count']} jobs running", par["lag_p99_ms"],
               raw["idle_lag_p99_ms"], "ours idle", target="< 100", judged=par["lag_p99_ms"]),
        Figure("answer_under_load_ms", f"quick answer's 1st token, {par['count']} jobs running (median of "
               f"{len(answers)})", median(answers) if answers else None,
               median([r["first_token_ms"] for r in raw["peer_routing"]]), "bare Chainlit idle",
               target="< 200", judged=median(answers) if answers else None),
        Figure("answer_under_load_worst_ms", f"the same, worst of {len(answers)}", max(answers) if answers else None,
               max(r["first_token_ms"] for r in raw["peer_routing"]), "bare Chainlit idle", guarded=False),
        Figure("rss_idle_mb", "server memory idle", raw["rss_idle_mb"], raw["peer_rss_idle_mb"], "bare Chainlit",
               unit="MB", target="< 250", judged=raw["rss_idle_mb"]),
        Figure("rss_20_conversations_mb", "server memory, 20 conversations open", raw["rss_20_mb"], raw["peer_rss_20_mb"],
               "bare Chainlit", unit="MB"),
        Figure("rss_peak_jobs_mb", f"host memory peak, {par['count']} jobs starting and running (clones on the host)",
               par["rss_peak_mb"], None, "", unit="MB"),
        Figure("rss_per_running_job_mb", f"host memory per running job ({par['most_running']} running)", per_job, None, "",
               unit="MB", target="< 30", judged=per_job),
        Figure("open_thread_http_ms", "open thread, 500 msgs / 50 jobs (GET)", big["http_ms"], raw["raw_rows_ms"],
               "raw SQL of its rows", target="< 150", judged=big["http_ms"]),
        Figure("open_thread_resume_ms", "open thread, 500 msgs / 50 jobs (socket resume)", big["resume_ms"], None, "",
               target="< 150", judged=big["resume_ms"]),
        Figure("open_thread_cards_ms", "the same, until all 50 job cards are refreshed", big["cards_ms"], None, ""),
        Figure("open_thread_statements", "SQL statements to open it (GET)", big["statements"], 2, "raw SQL",
               unit="stmts"),
        Figure("statements_per_extra_job", "SQL statements per extra job (N+1 check)", n_plus_one, 0, "raw SQL",
               unit="stmts", target="< 1", judged=n_plus_one),
        Figure("delegate_first_command_ms", "delegate → agent's first command (median)", first_cmd,
               raw["docker_cli_first_command_ms"], "docker run", target="< 300", judged=first_cmd),
    ]


# ---------------------------------------------------------------------------------------------- output
def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("jobs", "stmts") and float(value).is_integer():
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}" if abs(value) < 1000 else f"{value:.0f} {unit}"


def print_table(figs: list[Figure]) -> None:
    rows = [("figure", "ours", "peer way", "target", "")]
    for f in figs:
        peer = f"{fmt(f.peer, f.unit)} ({f.peer_label})" if f.peer is not None else "—"
        judged = "" if f.judged is None or f.judged == f.ours else f" (judged: {fmt(f.judged, f.unit)})"
        mark = {True: "met", False: "MISSED", None: ""}[f.met]
        rows.append((f.label, fmt(f.ours, f.unit), peer, (f.target + judged).strip(), mark))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def regressions(figs: list[Figure], baseline: dict) -> list[str]:
    """Figures more than 1.5 times worse than the baseline's (a regression by more than half). A figure with a
    timed peer is judged by its ratio to the peer measured in the same run, which a busy machine slows alike;
    counts (SQL statements) by value, where any statement more than a baseline of none is a regression."""
    found = []
    for f in figs:
        base = (baseline.get("figures") or {}).get(f.key, {})
        old, old_peer = base.get("ours"), base.get("peer")
        if not f.guarded or old is None or f.ours is None:
            continue
        if f.unit == "stmts":
            if f.ours > max(old * 1.5, old + 0.5):
                found.append(f"{f.label}: {fmt(f.ours, f.unit)} against {fmt(old, f.unit)} in the baseline")
            continue
        if old <= 0 or f.ours <= 0:
            continue
        relative = f.unit == "ms" and f.peer and old_peer and f.peer > 0 and old_peer > 0
        now, then = (f.ours / f.peer, old / old_peer) if relative else (f.ours, old)
        worse = now / then if f.lower_is_better else then / now
        if worse > 1.5:
            what = f" (ratio to {f.peer_label}: {now:.2f} against {then:.2f})" if relative else ""
            found.append(f"{f.label}: {fmt(f.ours, f.unit)} against {fmt(old, f.unit)} in the baseline{what}, "
                         f"{worse:.1f}x worse")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16, help="jobs at once (and one by one)")
    parser.add_argument("--questions", type=int, default=30, help="quick answers timed per app")
    parser.add_argument("--save-baseline", action="store_true", help=f"also write {BASELINE.name}")
    parser.add_argument("--check", action="store_true", help=f"fail when a figure is 1.5x worse than {BASELINE.name}")
    parser.add_argument("--profile", metavar="DIR", help="pyinstrument reports of the web app's event loop")
    args = parser.parse_args()
    if not image_status(DEFAULT_IMAGE)[0]:
        print(f"the sandbox image {DEFAULT_IMAGE} is missing: run ./run.sh or `assistant sandbox build`", file=sys.stderr)
        return 2
    if args.check and not BASELINE.exists():
        print(f"--check needs a baseline: run once with --save-baseline (writes {BASELINE})", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="bench-load-", dir="/tmp"))
    os.chmod(scratch, 0o711)
    try:
        figs, raw = asyncio.run(measure(args, scratch))
    except BaseException:
        print(f"logs kept in {scratch}", file=sys.stderr)
        raise
    print_table(figs)
    for failure in raw["parallel"]["failures"] + raw["serial"]["failures"]:
        print(f"job that did not succeed: {failure}")
    result = {"figures": {f.key: {"label": f.label, "ours": f.ours, "peer": f.peer, "peer_way": f.peer_label,
                                  "unit": f.unit, "target": f.target, "judged": f.judged, "met": f.met}
                          for f in figs},
              "raw": raw, "jobs": args.jobs, "questions": args.questions, "cpus": os.cpu_count()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS.relative_to(REPO_ROOT)}")
    if args.save_baseline:
        BASELINE.write_text(json.dumps(result, indent=2))
        print(f"wrote {BASELINE.relative_to(REPO_ROOT)}")
    shutil.rmtree(scratch, ignore_errors=True)
    if args.check:
        worse = regressions(figs, json.loads(BASELINE.read_text()))
        for line in worse:
            print(f"REGRESSION: {line}", file=sys.stderr)
        return 1 if worse else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
