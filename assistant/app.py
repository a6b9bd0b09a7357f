"""Chainlit handlers: translate chat events to the conversation core and job updates to messages.

Started by `assistant serve` as `chainlit run assistant/app.py` with CHAINLIT_APP_ROOT at the repository root.
"""
from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path
from urllib.parse import quote

# chainlit loads this file by path, so the package root is not importable unless we say so.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import chainlit as cl  # noqa: E402
from chainlit.context import context  # noqa: E402
from chainlit.input_widget import NumberInput, TextInput  # noqa: E402
from chainlit.server import app as http_app  # noqa: E402
from sqlalchemy.exc import IntegrityError  # noqa: E402

from assistant.conversation.router import JOB, Route  # noqa: E402
from assistant.core import load_assistant  # noqa: E402
from assistant.jobs import states  # noqa: E402
from assistant.web import gitops  # noqa: E402
from assistant.web.auth import PasswordBook, ensure_auth_secret, header_user  # noqa: E402
from assistant.web.cards import STATE_BADGES, cite_url, link_citations  # noqa: E402
from assistant.web.datalayer import StoreDataLayer  # noqa: E402
from assistant.web.relay import JobRelay, card_message_id, web_card  # noqa: E402
from assistant.web.routes import install_routes, make_router  # noqa: E402
from assistant.web.viewer import ViewerMiddleware  # noqa: E402

log = logging.getLogger("assistant.web")

core = load_assistant()
store = core.store
ensure_auth_secret(core.settings)
passwords = PasswordBook(core.settings)
print(f"[assistant] {passwords.login_notice()}", flush=True)
http_app.add_middleware(ViewerMiddleware)
install_routes(http_app, make_router(lambda: store))
relay: JobRelay | None = None
HISTORY_LIMIT = 12
SHUTDOWN_WAIT_S = 4.0  # for job workers to wind down; assistant/serve.py kills the server after its STOP_GRACE_S


# ---------------------------------------------------------------------- job buttons
def job_actions(job) -> list[cl.Action]:
    payload = {"job_id": job.id}
    if job.state in states.ACTIVE:
        return [cl.Action(name="cancel_job", payload=payload, label="Cancel", icon="square")]
    actions = []
    local = gitops.local_repo(job.repo)
    has_patch = bool((job.outcome or {}).get("files"))
    if job.state == states.SUCCEEDED and has_patch and local is not None:
        actions.append(cl.Action(name="apply_job", payload=payload, label="Apply to working copy", icon="download"))
        actions.append(cl.Action(name="branch_job", payload=payload, label="Create branch", icon="git-branch"))
    actions.append(cl.Action(name="retry_job", payload=payload, label="Retry", icon="rotate-ccw"))
    actions.append(cl.Action(name="attempts_job", payload={**payload, "n": 3}, label="Run 3 attempts", icon="layers"))
    return actions


# ---------------------------------------------------------------------- wiring
@cl.data_layer
def _data_layer():
    return StoreDataLayer(store, render_job_card=lambda job_id: web_card(
        store, job_id, relay.tail(job_id) if relay else None, relay.current(job_id) if relay else None))


@cl.on_app_startup
async def _start_relay():
    global relay
    relay = JobRelay(store, asyncio.get_running_loop(), job_actions)
    core.jobs.subscribe(relay.on_update)


@cl.on_app_shutdown
async def _stop():
    # SIGTERM or SIGINT (uvicorn's graceful stop): running jobs end interrupted and retryable, their
    # containers and the embedded model stop. Chainlit calls os._exit() after this hook: no atexit runs.
    await asyncio.to_thread(core.close, SHUTDOWN_WAIT_S)


@cl.password_auth_callback
async def _password_login(username: str, password: str):
    if passwords.check(username, password):
        return cl.User(identifier=username, metadata={"provider": "credentials"})
    return None


if core.settings.header_auth:
    @cl.header_auth_callback
    async def _header_login(headers):
        name = header_user(core.settings, headers)
        return cl.User(identifier=name, metadata={"provider": "header"}) if name else None


@cl.set_starters
async def _starters(user=None, language=None):
    return [
        cl.Starter(label="Ask about the code", icon="/public/ask.svg",
                   message="What does this repository do, and where is its entry point?"),
        cl.Starter(label="Delegate a job", icon="/public/job.svg", command="code",
                   message="Add a unit test for the main function and make sure the test suite passes."),
    ]


COMMANDS = [
    {"id": "ask", "icon": "message-circle-question", "description": "Answer from the code; never start a job", "button": False},
    {"id": "code", "icon": "hammer", "description": "Run this as a job in a sandbox", "button": False},
    {"id": "jobs", "icon": "list-checks", "description": "List the jobs and their states", "button": False},
]


# ---------------------------------------------------------------------- helpers
def thread_id() -> str:
    return context.session.thread_id


def persisted_user_id() -> str | None:
    user = context.session.user
    if user is None:
        return None
    return getattr(user, "id", None) or store.get_or_create_user(user.identifier).id


def ensure_thread() -> None:
    """Our rows need the thread before Chainlit's first-interaction write may have created it."""
    tid = thread_id()
    if store.get_thread(tid) is None:
        try:
            store.create_thread(user_id=persisted_user_id(), thread_id=tid)
        except IntegrityError:
            pass
    repo, ref = cl.user_session.get("repo"), cl.user_session.get("ref")
    thread = store.get_thread(tid)
    if thread is not None and repo and (thread.repo, thread.ref) != (repo, ref):
        store.update_thread(tid, repo=repo, ref=ref)


def where_text(repo: str | None, ref: str | None) -> str:
    if not repo:
        return "no repository yet — set one in the chat settings (⚙)"
    return f"`{repo}`" + (f" @ `{ref}`" if ref else "")


async def send_header(repo: str | None, ref: str | None) -> None:
    info = await asyncio.to_thread(core.describe)
    lines = [f"**Repository:** {where_text(repo, ref)}",
             f"**Model:** `{info['model']}` · **Sandbox:** `{info['backend']}`"
             + (f" *({info['backend_reason']})*" if info.get("backend_reason") else "")]
    if info.get("notice"):
        lines.append(f"> ⚠ {info['notice']}")
    await cl.Message(content="\n\n".join(lines), author="Assistant", metadata={"kind": "header"}).send()


async def send_settings(repo: str | None, ref: str | None, attempts: int = 1) -> None:
    await cl.ChatSettings([
        TextInput(id="repo", label="Repository (local path or git URL)", initial=repo or "",
                  placeholder="/path/to/repo or https://host/org/repo.git"),
        TextInput(id="ref", label="Git ref (branch, tag or commit; empty: default branch)", initial=ref or ""),
        NumberInput(id="attempts", label="Attempts per job (best of N)", initial=attempts),
    ]).send()


def history_for(tid: str, exclude_id: str | None) -> list[dict[str, str]]:
    messages = [m for m in store.list_messages(tid) if m.id != exclude_id and not m.job_id
                and m.type in ("user_message", "assistant_message") and (m.output or "").strip()
                and ((m.meta or {}).get("metadata") or {}).get("kind") != "header"]
    return [{"role": "user" if m.type == "user_message" else "assistant", "content": m.output}
            for m in messages[-HISTORY_LIMIT:]]


def answer_links(tid: str, job_id: str | None):
    def url_for(kind: str, target: str, start: int, end: int) -> str:
        if kind == "chunk" and job_id:
            return cite_url(job_id, target, start, end)
        return f"/cite-thread/{tid}/{quote(target, safe=':')}?L={start}-{end}"
    return url_for


# ---------------------------------------------------------------------- lifecycle
@cl.on_chat_start
async def on_chat_start():
    repo, ref = core.settings.default_repo, core.settings.default_ref
    cl.user_session.set("repo", repo)
    cl.user_session.set("ref", ref)
    cl.user_session.set("attempts", 1)
    await context.emitter.set_commands(COMMANDS)
    await send_settings(repo, ref)
    await send_header(repo, ref)


@cl.on_chat_resume
async def on_chat_resume(thread_dict):
    thread = await asyncio.to_thread(store.get_thread, thread_dict["id"])
    repo = (thread.repo if thread else None) or core.settings.default_repo
    ref = (thread.ref if thread else None) or core.settings.default_ref
    cl.user_session.set("repo", repo)
    cl.user_session.set("ref", ref)
    await context.emitter.set_commands(COMMANDS)
    await send_settings(repo, ref, int(cl.user_session.get("attempts") or 1))
    session = context.session

    async def refresh_cards():
        # The resume event reaches the browser after this hook returns; updates sent earlier are lost.
        await asyncio.sleep(0.5)
        for job in await asyncio.to_thread(store.list_jobs, thread_id=thread_dict["id"]):
            if relay:
                await relay.refresh_in(session, job.id)

    asyncio.ensure_future(refresh_cards())


@cl.on_chat_end
async def on_chat_end():
    # Fires on every socket drop; jobs belong to the thread and keep running.
    if relay:
        relay.forget_session(context.session.id)


@cl.on_settings_update
async def on_settings_update(values: dict):
    repo = (values.get("repo") or "").strip() or None
    ref = (values.get("ref") or "").strip() or None
    try:
        attempts = max(1, min(int(values.get("attempts") or 1), 8))
    except (TypeError, ValueError):
        attempts = 1
    cl.user_session.set("repo", repo)
    cl.user_session.set("ref", ref)
    cl.user_session.set("attempts", attempts)
    tid = thread_id()
    if await asyncio.to_thread(store.get_thread, tid) is not None:
        await asyncio.to_thread(store.update_thread, tid, repo=repo, ref=ref)
    await cl.Message(content=f"Repository set to {where_text(repo, ref)}; jobs run {attempts} attempt(s).",
                     author="Assistant", metadata={"kind": "header"}).send()


# ---------------------------------------------------------------------- messages
@cl.on_message
async def on_message(message: cl.Message):
    tid = thread_id()
    text, command = message.content.strip(), message.command
    typed = re.match(r"^/(ask|code|jobs)\b\s*", text)
    if typed and not command:  # the command typed out rather than picked from the menu
        command, text = typed.group(1), text[typed.end():]
    if command == "jobs":
        await list_jobs()
        return
    if not text:
        return
    await asyncio.to_thread(ensure_thread)
    route = await asyncio.to_thread(core.conversation.route, tid, text, command)
    if route.is_job:
        await delegate(text, route)
    else:
        await answer(text, route, message.id)


async def delegate(text: str, route: Route, attempts: int | None = None) -> None:
    tid = thread_id()
    attempts = attempts or int(cl.user_session.get("attempts") or 1)
    try:
        jobs = await asyncio.to_thread(core.conversation.delegate, tid, persisted_user_id(), text, route, attempts)
    except Exception as exc:
        await cl.Message(content=f"⚠ Could not start the job: {exc}", author="Jobs").send()
        return
    for job in jobs:
        content = await asyncio.to_thread(web_card, store, job.id)
        card = cl.Message(id=card_message_id(job.id), content=content or "", author="Jobs",
                          metadata={"job_id": job.id, "route": route.kind, "route_reason": route.reason},
                          actions=[])
        await card.send()
        if relay:
            await relay.refresh(job.id, tid)


async def answer(text: str, route: Route, user_message_id: str) -> None:
    tid = thread_id()
    history = await asyncio.to_thread(history_for, tid, user_message_id)
    reply = cl.Message(content="", author="Assistant", metadata={"route": route.kind, "route_reason": route.reason})
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def produce() -> None:
        try:
            for event in core.conversation.answer(tid, text, route, history=history):
                loop.call_soon_threadsafe(queue.put_nowait, event)
        except Exception as exc:  # the message must end with an explanation, not silence
            log.exception("answer failed")
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    producer = loop.run_in_executor(None, produce)
    final_text, citations, job_id = "", [], route.job_id
    while (event := await queue.get()) is not None:
        if isinstance(event, Exception):
            reply.content += f"\n\n⚠ {event}"
        elif event.kind == "token":
            await reply.stream_token(event.text)
        elif event.kind == "tool":
            async with cl.Step(name=event.text, type="tool") as step:
                step.input = event.data.get("arguments")
                step.output = event.data.get("output", "")
        elif event.kind == "done":
            final_text, citations = event.text, event.data.get("citations", [])
            job_id = event.data.get("job_id") or job_id
        elif event.kind == "error":
            reply.content += f"\n\n⚠ {event.text}"
    await producer
    if final_text:
        reply.content = link_citations(final_text, citations, answer_links(tid, job_id))
    via = {"rules": "by the first-pass rules", "model": "by the router model", "command": "by your command",
           "fallback": "by default"}.get(route.decided_by, "")
    reply.content += f"\n\n*Answered directly ({route.reason or 'a question'}; decided {via}).*"
    reply.actions = [cl.Action(name="run_as_job", payload={"text": text}, label="Run as a job instead", icon="hammer")]
    await reply.send()


async def list_jobs() -> None:
    user_id = await asyncio.to_thread(persisted_user_id)
    jobs = await asyncio.to_thread(store.list_jobs, user_id=user_id, limit=1000)
    if not jobs:
        await cl.Message(content="No jobs yet.", author="Jobs").send()
        return
    tid = thread_id()
    rows = ["| job | title | state | conversation |", "|---|---|---|---|"]
    for job in jobs[-30:]:
        here = "this one" if job.thread_id == tid else (job.thread_id or "")[:8]
        title = (job.title or job.task)[:60].replace("|", "\\|")
        rows.append(f"| {job.number} (`{job.id}`) | {title} | {STATE_BADGES.get(job.state, job.state)} | {here} |")
    await cl.Message(content="\n".join(rows), author="Jobs").send()


# ---------------------------------------------------------------------- actions
def owned_job(action: cl.Action):
    job = store.get_job(action.payload["job_id"])
    if job.thread_id != thread_id():
        raise PermissionError("that job belongs to another conversation")
    return job


async def reply_to_card(job, text: str) -> None:
    await cl.Message(content=text, author="Jobs").send()


@cl.action_callback("cancel_job")
async def on_cancel(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    cancelled = await asyncio.to_thread(core.jobs.cancel, job.id)
    if not cancelled:
        await reply_to_card(job, f"Job {job.number} had already ended.")


@cl.action_callback("retry_job")
async def on_retry(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    await delegate(job.task, Route(JOB, job.parent_job_id, f"retry of job {job.number}"), attempts=1)


@cl.action_callback("attempts_job")
async def on_attempts(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    n = max(2, min(int(action.payload.get("n") or 3), 8))
    route = Route(JOB, job.parent_job_id, f"{n} attempts at job {job.number}")
    await delegate(job.task, route, attempts=n)


@cl.action_callback("run_as_job")
async def on_run_as_job(action: cl.Action):
    await asyncio.to_thread(ensure_thread)
    await delegate(action.payload["text"], Route(JOB, None, "you asked to run it as a job", "command"))


@cl.action_callback("apply_job")
async def on_apply(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    repo = gitops.local_repo(job.repo)
    patch = await asyncio.to_thread(store.get_artifact, job.id, "patch")
    if repo is None or not patch:
        await reply_to_card(job, "Nothing to apply: the repository is not a local working copy, or the job changed nothing.")
        return
    try:
        stat = await asyncio.to_thread(gitops.apply_to_working_copy, repo, patch)
    except gitops.GitOpError as exc:
        await reply_to_card(job, f"⚠ The patch of job {job.number} does not apply to `{repo}`: {exc}")
        return
    await reply_to_card(job, f"Applied job {job.number} to `{repo}` (uncommitted):\n\n```text\n{stat}\n```")


@cl.action_callback("branch_job")
async def on_branch(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    repo = gitops.local_repo(job.repo)
    patch = await asyncio.to_thread(store.get_artifact, job.id, "patch")
    if repo is None or not patch or not job.base_commit:
        await reply_to_card(job, "No branch: the repository is not a local working copy, or the job changed nothing.")
        return
    branch = gitops.branch_name_for(job.number, job.title or job.task)
    message = f"{job.title or job.task.splitlines()[0]}\n\n{job.summary or ''}".strip()
    try:
        commit = await asyncio.to_thread(gitops.create_branch, repo, patch, base_commit=job.base_commit,
                                         branch=branch, message=message)
    except gitops.GitOpError as exc:
        await reply_to_card(job, f"⚠ Could not create the branch: {exc}")
        return
    await reply_to_card(job, f"Created branch `{branch}` in `{repo}` with commit `{commit[:12]}`.")

