"""Chainlit handlers: translate chat events to the conversation core and job updates to messages.

Started by `assistant serve` as `chainlit run assistant/app.py` with CHAINLIT_APP_ROOT at the repository root.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import sys
import uuid
from functools import partial
from pathlib import Path
from urllib.parse import quote

# chainlit loads this file by path, so the package root is not importable unless we say so.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import chainlit as cl  # noqa: E402
from chainlit.context import context  # noqa: E402
from chainlit.input_widget import NumberInput, TextInput  # noqa: E402
from chainlit.server import app as http_app  # noqa: E402
from sqlalchemy.exc import IntegrityError  # noqa: E402

from assistant import ownership  # noqa: E402
from assistant.access import RepoNotAllowed  # noqa: E402
from assistant.conversation.checkout import CheckoutError, check_repository  # noqa: E402
from assistant.conversation.router import (ANSWER, FOLLOWUP_JOB, JOB, REVIEW, STEER, ReviewCommandError,  # noqa: E402
                                           Route, SteerCommandError)
from assistant.conversation.service import ANSWER_KIND  # noqa: E402
from assistant.core import load_assistant  # noqa: E402
from assistant.agent.asking import MAX_CHOICES  # noqa: E402
from assistant.jobs import states  # noqa: E402
from assistant.jobs.apply import START_PATCH, ApplyError, apply_job, apply_proof_tests  # noqa: E402
from assistant.jobs.review import ReviewError, fix_blockers, fix_finding  # noqa: E402
from assistant.sandbox.base import RepoError  # noqa: E402
from assistant.store import NotFound  # noqa: E402
from assistant.jobs.steering import SteerRefused  # noqa: E402
from assistant.jobs.uncommitted import read as read_uncommitted  # noqa: E402
from assistant.jobs.events import Routed  # noqa: E402
from assistant.web import gitops  # noqa: E402
from assistant.web.auth import AccessBook, LoginThrottle, PasswordBook, ensure_auth_secret, header_user  # noqa: E402
from assistant.web.cards import (MAX_STEPS_SHOWN, STATE_BADGES, cite_url, link_citations,  # noqa: E402
                                 plain, progress_count, review_of, tool_output_block, waiting_choices)
from assistant.web.review_card import FIX_BUTTON_NAMES, review_buttons  # noqa: E402
from assistant.web.datalayer import StoreDataLayer  # noqa: E402
from assistant.web.gate import GATE, GateMiddleware, limit_cors  # noqa: E402
from assistant.web.nosleep import install_resume_without_sleep, new_message  # noqa: E402
from assistant.web.relay import JobRelay, card_message_id, web_card  # noqa: E402
from assistant.web.routes import install_routes, make_router, translations_router  # noqa: E402
from assistant.web.threadview import ThreadJobsView  # noqa: E402
from assistant.web.viewer import ViewerMiddleware  # noqa: E402

log = logging.getLogger("assistant.web")

core = load_assistant()
store = core.store
passwords = PasswordBook(core.settings)
access = AccessBook(passwords, store.user_revocations, ensure_auth_secret(core.settings))
GATE.access, GATE.throttle, GATE.origins = access, LoginThrottle.from_settings(core.settings), core.settings.origins()
print(f"[assistant] {passwords.login_notice()}", flush=True)
http_app.add_middleware(ViewerMiddleware)
http_app.add_middleware(GateMiddleware)  # added last: runs first, so the viewer never sees a stale login
limit_cors(http_app, core.settings.origins())
install_resume_without_sleep()
install_routes(http_app, make_router(lambda: store, core.conversation.policy))
install_routes(http_app, translations_router(passwords), first=True)
relay: JobRelay | None = None
# Jobs started by routing (not by /code or a button): "Answer instead" undoes the route until the agent starts.
answerable_jobs: set[str] = set()
BEFORE_AGENT = (states.QUEUED, states.PREPARING, states.SETTING_UP)
DECIDED_BY = {"rules": "by the first-pass rules", "model": "by the router model", "command": "by your command",
              "classifier": "by the built-in classifier", "fallback": "by default", "choice": "by your pick"}
RESUME_EVENT_WAIT_S = 5.0  # a Chainlit that emits no resume event through the emitter: refresh after this
SHUTDOWN_WAIT_S = 4.0  # for job workers to wind down; assistant/serve.py kills the server after its STOP_GRACE_S


# ---------------------------------------------------------------------- job buttons
def job_actions(job, source=store) -> list[cl.Action]:
    """The buttons of a job's card; `source` is the store or a ThreadJobsView of the job's thread."""
    payload = {"job_id": job.id}
    actions = [steps_action(job)] if progress_count(source, job.id) > MAX_STEPS_SHOWN else []
    if job.state == states.WAITING:  # one button per choice the agent offered: it sends that choice as the answer
        for i, choice in enumerate(waiting_choices(job, source.read_events(job.id))):
            actions.append(cl.Action(name=f"answer_choice_{i}", payload={**payload, "answer": choice},
                                     label=choice, icon="reply"))
    review = review_of(source, job) if job.state == states.SUCCEEDED else None
    if review is not None:  # a finished review: its fix buttons, its proof tests, and Retry (the same review again)
        local = gitops.local_repo(job.repo)
        actions += [cl.Action(name=b.name, payload=b.payload, label=b.label, icon=b.icon, tooltip=b.tooltip)
                    for b in review_buttons(job.id, review, can_apply=local is not None)]
        return actions + [cl.Action(name="retry_job", payload=payload, label="Review again", icon="rotate-ccw")]
    if job.state in states.ACTIVE:
        if job.id in answerable_jobs and job.state in BEFORE_AGENT:
            actions.append(cl.Action(name="answer_instead", payload=payload, label="Answer instead",
                                     icon="message-circle-question"))
        return actions + [cl.Action(name="cancel_job", payload=payload, label="Cancel", icon="square")]
    local = gitops.local_repo(job.repo)
    has_patch = bool((job.outcome or {}).get("files"))
    if job.state == states.SUCCEEDED and has_patch and local is not None:
        actions.append(cl.Action(name="apply_job", payload=payload, label="Apply to working copy", icon="download"))
        actions.append(cl.Action(name="branch_job", payload=payload, label="Create branch", icon="git-branch"))
    actions.append(cl.Action(name="retry_job", payload=payload, label="Retry", icon="rotate-ccw"))
    uncommitted = read_uncommitted(source, job.id)
    if uncommitted and not uncommitted.get("included"):
        actions.append(cl.Action(name="retry_uncommitted_job", payload=payload, icon="file-diff",
                                 label="Run again with my uncommitted changes"))
    actions.append(cl.Action(name="attempts_job", payload={**payload, "n": 3}, label="Run 3 attempts", icon="layers"))
    return actions


ANSWER_CHOICE_NAMES = tuple(f"answer_choice_{i}" for i in range(MAX_CHOICES))
JOB_ACTION_NAMES = ("toggle_steps", "answer_instead", "cancel_job", "apply_job", "branch_job", "retry_job",
                    "attempts_job")  # every button job_actions can put on a card but the choices (see _sync_actions)
# and a finished review's (FIX_BUTTON_NAMES, fix_blockers, apply_proofs): only a final card has them, sent after the clear


def steps_action(job) -> cl.Action:
    unfolded = relay is not None and job.id in relay.all_steps
    return cl.Action(name="toggle_steps", payload={"job_id": job.id}, icon="list",
                     label="Show fewer steps" if unfolded else "Show all steps")


# ---------------------------------------------------------------------- wiring
@cl.data_layer
def _data_layer():
    return StoreDataLayer(store, render_job_card=lambda job_id, source: relay.render(job_id, source) if relay
                          else web_card(source, job_id))


@cl.on_app_startup
async def _start_relay():
    global relay
    relay = JobRelay(store, asyncio.get_running_loop(), job_actions, JOB_ACTION_NAMES)
    core.jobs.subscribe(relay.on_update)
    asyncio.ensure_future(end_stale_sessions())


@cl.on_app_shutdown
async def _stop():
    # SIGTERM or SIGINT (uvicorn's graceful stop): running jobs end interrupted and retryable, their
    # containers and the embedded model stop. Chainlit calls os._exit() after this hook: no atexit runs.
    await asyncio.to_thread(core.close, SHUTDOWN_WAIT_S)


@cl.password_auth_callback
async def _password_login(username: str, password: str):
    if passwords.check(username, password):
        # The token carries the access it was made with; it stops working when that access changes.
        stamp = await asyncio.to_thread(access.stamp, username, "credentials")
        return cl.User(identifier=username, metadata={"provider": "credentials", "access": stamp})
    return None


if core.settings.header_auth:
    @cl.header_auth_callback
    async def _header_login(headers):
        name = header_user(core.settings, headers)
        if not name:
            return None
        stamp = await asyncio.to_thread(access.stamp, name, "header")
        return cl.User(identifier=name, metadata={"provider": "header", "access": stamp})


# ---------------------------------------------------------------------- who may touch what
class SessionEnded(PermissionError):
    pass


def session_user() -> str:
    """The identifier of the user behind this socket session, while their login still stands."""
    session = context.session
    if session.user is None or not GATE.token_valid(getattr(session, "token", None)):
        raise SessionEnded("your session has ended; log in again")
    return session.user.identifier


def checked_thread() -> str:
    """The session's thread id, once ownership.thread_for said this user may touch it (theirs, or new)."""
    ownership.thread_for(store, thread_id(), session_user())
    return thread_id()


async def refuse(exc: Exception) -> None:
    """Tell the socket no, store nothing (a toast is not a message), and drop a session that must not go on."""
    from chainlit.server import sio

    session = context.session
    log.warning("refused %s for session %s (thread %s): %s", getattr(session.user, "identifier", None), session.id,
                session.thread_id, exc)  # the ids stay in the log: the user learns nothing about others' threads
    text = str(exc) if isinstance(exc, SessionEnded) else f"Refused: {exc}."
    try:
        await context.emitter.send_toast(text, "error")
    except Exception:
        pass
    if isinstance(exc, SessionEnded) or session.thread_id and not await asyncio.to_thread(thread_is_users, session):
        await sio.disconnect(session.socket_id)


def thread_is_users(session) -> bool:
    try:
        ownership.thread_for(store, session.thread_id, session.user.identifier if session.user else "")
        return True
    except ownership.NotYours:
        return False


def guarded(handler):
    """Every chat event checks, before it reads or writes anything, that the login stands and the session's
    thread is the user's (Chainlit lets the client name it)."""
    @functools.wraps(handler)
    async def run(*args, **kwargs):
        try:
            await asyncio.to_thread(checked_thread)
        except (ownership.NotYours, SessionEnded) as exc:
            await refuse(exc)
            return None
        try:
            return await handler(*args, **kwargs)
        except (ownership.NotYours, SessionEnded) as exc:
            await refuse(exc)
            return None
    return run


def guard_socket_connect() -> None:
    """Before Chainlit's own connect handler: a stale login, or a thread id of someone else's conversation,
    is refused outright (the client gets connect_error; no session, no thread, nothing sent)."""
    from chainlit.auth.jwt import decode_jwt
    from chainlit.server import sio
    from chainlit.socket import _get_token
    from socketio.exceptions import ConnectionRefusedError

    chainlit_connect = sio.handlers["/"]["connect"]

    async def connect(sid, environ, auth=None):
        token = _get_token(environ)
        if not await asyncio.to_thread(GATE.token_valid, token):
            raise ConnectionRefusedError("authentication failed")
        user = decode_jwt(token).identifier
        try:
            await asyncio.to_thread(ownership.thread_for, store, (auth or {}).get("threadId"), user)
        except ownership.NotYours:
            log.warning("socket of %s refused: thread %s is not theirs", user, (auth or {}).get("threadId"))
            raise ConnectionRefusedError("authorization failed: this conversation is not yours") from None
        return await chainlit_connect(sid, environ, auth)

    sio.handlers["/"]["connect"] = connect


guard_socket_connect()
SWEEP_INTERVAL_S = 2.0


async def end_stale_sessions() -> None:
    """Sockets opened before a revoke, a password change or a removal are closed, not left to run."""
    from chainlit.server import sio
    from chainlit.session import ws_sessions_id

    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        try:
            for session in list(ws_sessions_id.values()):
                token = getattr(session, "token", None)
                if session.user is not None and not await asyncio.to_thread(GATE.token_valid, token):
                    log.warning("closing a session of %s: their login no longer stands", session.user.identifier)
                    await sio.disconnect(session.socket_id)
        except Exception:
            log.exception("sweeping stale sessions failed")


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
    {"id": "steer", "icon": "send", "button": False,
     "description": "Tell the running job something: /steer [job number] [now] text (now stops its command)"},
    {"id": "review", "icon": "search-check", "button": False,
     "description": "Review a change: /review [--base REF] BRANCH, /review job N, or a patch pasted or attached"},
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
    """Our rows need the thread before Chainlit's first-interaction write may have created it.
    Once per session and repository: later messages find it saved (the session remembers what it wrote)."""
    tid = thread_id()
    repo, ref = cl.user_session.get("repo"), cl.user_session.get("ref")
    if cl.user_session.get("thread_saved") == (tid, repo, ref):
        return
    user = session_user()
    if ownership.thread_for(store, tid, user) is None:
        try:
            store.create_thread(user_id=persisted_user_id(), thread_id=tid)
        except IntegrityError:
            pass
    thread = ownership.thread_for(store, tid, user)  # created a moment ago by another request: whose?
    if thread is not None and repo and (thread.repo, thread.ref) != (repo, ref):
        store.update_thread(tid, repo=repo, ref=ref)
    cl.user_session.set("thread_saved", (tid, repo, ref))


SETTINGS_HINT = "the **settings** (the ⚙ button at the top right)"


def where_text(repo: str | None, ref: str | None) -> str:
    if not repo:
        return f"no repository yet — open {SETTINGS_HINT} and give a local path or a git URL"
    return f"`{repo}`" + (f" @ `{ref}`" if ref else "")


async def header_text(repo: str | None, ref: str | None, origin: str | None = None) -> str:
    info = await asyncio.to_thread(core.describe)
    lines = [f"**Repository:** {where_text(repo, ref)}" + (f" *({origin}; change it in {SETTINGS_HINT})*"
                                                          if origin and repo else ""),
             f"**Model:** `{info['model']}` · **Sandbox:** `{info['backend']}`"
             + (f" *({plain(info['backend_reason'])})*" if info.get("backend_reason") else "")]
    if info.get("notice"):
        lines.append(f"> ⚠ {info['notice']}")
    lines.append("Ask about the code, or ask for a change: it runs as a job in a sandbox. `/ask` forces an answer, "
                 "`/code` a job, `/jobs` lists them, `/steer` talks to a running job, `/review` reviews a branch, a patch or a "
                 "job's diff. Repository, ref and attempts are "
                 f"in {SETTINGS_HINT}.")
    return "\n\n".join(lines)


def stored_header_id(tid: str) -> str | None:
    return next((m.id for m in store.list_messages(tid)
                 if ((m.meta or {}).get("metadata") or {}).get("kind") == "header"), None)


async def show_header(repo: str | None, ref: str | None, origin: str | None = None) -> None:
    """The first message says where this conversation works; sent once, then kept current in place.
    A system message: it leaves the welcome screen (and its starters) up until the user writes."""
    header_id = cl.user_session.get("header_id") or await asyncio.to_thread(stored_header_id, thread_id())
    message = cl.Message(content=await header_text(repo, ref, origin), author="Assistant", type="system_message",
                         metadata={"kind": "header"}, **({"id": header_id} if header_id else {}))
    if header_id:
        await message.update()
    else:
        await message.send()
        cl.user_session.set("header_id", message.id)


async def notice(text: str, author: str = "Assistant") -> None:
    """The app speaking for itself, not the model: shown and stored, never fed back as conversation."""
    await cl.Message(content=text, author=author, metadata={"kind": "notice"}).send()


async def send_settings(repo: str | None, ref: str | None, attempts: int = 1) -> None:
    await cl.ChatSettings([
        TextInput(id="repo", label="Repository (local path or git URL)", initial=repo or "",
                  placeholder="/path/to/repo or https://host/org/repo.git"),
        TextInput(id="ref", label="Git ref (branch, tag or commit; empty: default branch)", initial=ref or ""),
        NumberInput(id="attempts", label="Attempts per job (best of N)", initial=attempts),
    ]).send()


def answer_links(tid: str, job_id: str | None, job_files: set[str]):
    """Log lines and the files a job kept point into the job; other files into the conversation's checkout."""
    def url_for(kind: str, target: str, start: int, end: int) -> str:
        if job_id and (kind == "chunk" or target.removeprefix("F:") in job_files):
            return cite_url(job_id, target, start, end)
        return f"/cite-thread/{tid}/{quote(target, safe=':')}?L={start}-{end}"
    return url_for


def how_routed(route: Route, default_reason: str) -> str:
    """"asks for a change; decided by the first-pass rules", or just "/code chosen" when the user decided."""
    reason = route.reason or default_reason
    return reason if route.decided_by == "command" else f"{reason}; decided {DECIDED_BY.get(route.decided_by, '')}"


def routed_text(route: Route) -> str:
    return f"Started as a job ({how_routed(route, 'asks for a change')}) — it runs in a sandbox."


# ---------------------------------------------------------------------- lifecycle
def last_repository() -> tuple[str, str | None] | None:
    """The repository (and ref) of the user's most recent conversation that had one: a new chat starts there."""
    user_id = persisted_user_id()
    if not user_id:
        return None
    thread = next((t for t in store.list_threads(user_id, limit=50) if t.repo), None)
    return (thread.repo, thread.ref) if thread else None


@cl.on_chat_start
@guarded
async def on_chat_start():
    repo, ref = core.settings.default_repo, core.settings.default_ref
    last = await asyncio.to_thread(last_repository)
    if last:
        repo, ref = last
    cl.user_session.set("repo", repo)
    cl.user_session.set("ref", ref)
    cl.user_session.set("attempts", 1)
    if repo:  # the first job's sandbox gets ready while the user types
        core.jobs.prewarm(repo, ref)
    await context.emitter.set_commands(COMMANDS)
    await send_settings(repo, ref)
    await show_header(repo, ref, "your last conversation's repository" if last else None)


@cl.on_chat_resume
@guarded
async def on_chat_resume(thread_dict):
    thread = await asyncio.to_thread(store.get_thread, thread_dict["id"])
    repo = (thread.repo if thread else None) or core.settings.default_repo
    ref = (thread.ref if thread else None) or core.settings.default_ref
    cl.user_session.set("repo", repo)
    cl.user_session.set("ref", ref)
    if repo:
        core.jobs.prewarm(repo, ref)
    await context.emitter.set_commands(COMMANDS)
    await send_settings(repo, ref, int(cl.user_session.get("attempts") or 1))
    session = context.session
    resumed = resume_emitted(context.emitter)

    async def refresh_cards():
        # The resume event reaches the browser after this hook returns; updates sent earlier are lost.
        try:
            await asyncio.wait_for(resumed.wait(), RESUME_EVENT_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("no resume event seen for thread %s; refreshing its cards anyway", thread_dict["id"])
        shown = {step["metadata"]["job_id"]: step.get("output") for step in thread_dict.get("steps") or []
                 if (step.get("metadata") or {}).get("job_id")}  # rendered by the data layer a moment ago
        cards = await asyncio.to_thread(ThreadJobsView, store, thread_dict["id"])  # all cards from one load
        for job in cards.jobs:
            if relay:
                await relay.refresh_in(session, job.id, cards, shown.get(job.id))
        for message in await asyncio.to_thread(store.list_messages, thread_dict["id"]):  # buttons are not stored
            metadata = (message.meta or {}).get("metadata") or {}
            if metadata.get("kind") == ANSWER_KIND and metadata.get("question"):
                await run_as_job_action(metadata["question"], metadata.get("about_job")).send(for_id=message.id)

    asyncio.ensure_future(refresh_cards())


def resume_emitted(emitter) -> asyncio.Event:
    """Set once Chainlit has emitted this connection's resume event (it does so right after on_chat_resume)."""
    emitted = asyncio.Event()
    emit = emitter.resume_thread

    async def resume_thread(thread):
        await emit(thread)
        emitted.set()

    emitter.resume_thread = resume_thread
    return emitted


@cl.on_chat_end
async def on_chat_end():
    # Fires on every socket drop; jobs belong to the thread and keep running.
    if relay:
        relay.forget_session(context.session.id)


@cl.on_settings_update
@guarded
async def on_settings_update(values: dict):
    repo = (values.get("repo") or "").strip() or None
    ref = (values.get("ref") or "").strip() or None
    try:
        attempts = max(1, min(int(values.get("attempts") or 1), 8))
    except (TypeError, ValueError):
        attempts = 1
    cl.user_session.set("attempts", attempts)
    old_repo, old_ref = cl.user_session.get("repo"), cl.user_session.get("ref")
    if repo and repo != old_repo:
        try:
            await asyncio.to_thread(check_repository, repo, core.conversation.policy)
        except (CheckoutError, RepoNotAllowed) as exc:
            await send_settings(old_repo, old_ref, attempts)
            await notice(f"⚠ The repository was not changed: {plain(str(exc))}.\n\n"
                         f"Still using {where_text(old_repo, old_ref)}.")
            return
    cl.user_session.set("repo", repo)
    cl.user_session.set("ref", ref)
    if repo and (repo, ref) != (old_repo, old_ref):
        core.jobs.prewarm(repo, ref)
    tid = thread_id()
    if await asyncio.to_thread(store.get_thread, tid) is not None:
        await asyncio.to_thread(store.update_thread, tid, repo=repo, ref=ref)
    await show_header(repo, ref)
    await notice(f"Repository set to {where_text(repo, ref)}; jobs run {attempts} attempt(s).")


# ---------------------------------------------------------------------- messages
@cl.on_message
@guarded
async def on_message(message: cl.Message):
    tid = thread_id()
    text, command = message.content.strip(), message.command
    typed = re.match(r"^/(ask|code|jobs|steer|review)\b\s*", text)
    if typed and not command:  # the command typed out rather than picked from the menu
        command, text = typed.group(1), text[typed.end():]
    if command == "jobs":
        await list_jobs()
        return
    try:
        attached = await asyncio.to_thread(attached_patch, message)
    except ValueError as exc:
        await notice(f"⚠ {plain(str(exc))}", author="Jobs")
        return
    if not text and not (command == "review" and attached):
        if command == "steer":
            await notice("⚠ Say what the job should do: /steer [job number] [now] your message.", author="Jobs")
        elif command == "review":
            await notice(f"⚠ Say what to review: {plain(REVIEW_HINT)}.", author="Jobs")
        return
    # The history an answer needs is read while the message is routed (often a model call), not after.
    history = asyncio.ensure_future(asyncio.to_thread(core.conversation.history, tid, message.id))
    try:
        route = await asyncio.to_thread(saved_and_routed, tid, text, command, attached)
    except (SteerCommandError, ReviewCommandError) as exc:
        await notice(f"⚠ {plain(str(exc))}.", author="Jobs")
        return
    finally:
        history.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, if unused
    if route.kind == STEER:
        await steer(text, route)
    elif route.kind == REVIEW:
        await start_review(route)
    elif route.is_job and route.steer_offer:
        await offer_steer(text, route)
    elif route.is_job:
        await delegate(text, route)
    else:
        await answer(text, route, message.id, await history)


def saved_and_routed(tid: str, text: str, command: str | None, attached: str | None = None) -> Route:
    """One trip to a worker thread for both."""
    ensure_thread()
    return core.conversation.route(tid, text, command, attached_patch=attached)


REVIEW_HINT = ("/review BRANCH, /review --base main BRANCH, /review job N, or \"review this patch\" with the patch "
               "pasted or a .patch/.diff file attached")
PATCH_SUFFIXES = (".patch", ".diff")
MAX_PATCH_BYTES = 2_000_000


def attached_patch(message: cl.Message) -> str | None:
    """The text of a .patch or .diff file sent with the message (the one thing uploads are for), or None.
    ValueError says what to send instead of another file."""
    files = [e for e in message.elements or [] if getattr(e, "path", None)]
    if not files:
        return None
    patches = [e for e in files if str(e.name or "").lower().endswith(PATCH_SUFFIXES)]
    if len(patches) != 1 or len(files) != 1:
        raise ValueError("attach one .patch or .diff file (made by `git diff` or `git format-patch`) to have it "
                         "reviewed; other files are not read")
    data = Path(patches[0].path).read_bytes()
    if len(data) > MAX_PATCH_BYTES:
        raise ValueError(f"{patches[0].name} is over {MAX_PATCH_BYTES // 1_000_000} MB; review a smaller change")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{patches[0].name} is not UTF-8 text; attach the output of `git diff`") from None


async def start_review(route: Route) -> None:
    """A review route: its job on this conversation's repository, its card like any job's. A ref that does not
    exist, an empty patch or a job without a diff is refused with what to do, and nothing is queued."""
    try:
        job = await asyncio.to_thread(core.conversation.review, thread_id(), persisted_user_id(), route.review)
    except (ReviewError, RepoError, RepoNotAllowed, CheckoutError, NotFound) as exc:
        await notice(f"⚠ Could not start the review: {plain(str(exc))}\n\nNothing was started, and your message "
                     f"stays above; try again with {plain(REVIEW_HINT)}.", author="Jobs")
        return
    await show_new_jobs([job], route, f"Started as a review ({how_routed(route, 'asks for a review')}) — it runs in "
                                      "a sandbox; findings are verified by proofs the product runs.")


async def delegate(text: str, route: Route, attempts: int | None = None) -> None:
    tid = thread_id()
    attempts = attempts or int(cl.user_session.get("attempts") or 1)
    try:
        jobs = await asyncio.to_thread(core.conversation.delegate, tid, persisted_user_id(), text, route, attempts)
    except Exception as exc:
        await notice(f"⚠ Could not start the job: {plain(str(exc))}", author="Jobs")
        return
    await show_new_jobs(jobs, route, routed_text(route))


async def steer(text: str, route: Route) -> None:
    """Words for a running job: stored and delivered at its agent's next step; the receipt follows on its card
    (the relay re-renders it on each Steer event). A job that has ended refuses, and a follow-up job is offered."""
    tid = thread_id()
    try:
        job, message = await asyncio.to_thread(core.conversation.steer, tid, persisted_user_id(), text, route)
    except SteerRefused as exc:
        job = await asyncio.to_thread(store.get_job, route.job_id)
        ended = job.state in states.TERMINAL
        content = f"⚠ {plain(str(exc)[:1].upper() + str(exc)[1:])}."
        actions = [run_as_job_action(text, job.id, f"Start a follow-up of job {job.number}")] if ended else []
        await cl.Message(content=content, author="Jobs", metadata={"kind": "notice"}, actions=actions).send()
        return
    if route.answer:
        await notice(f"→ Sent to job {job.number} as the answer. The receipt is on its card.", author="Jobs")
        return
    how = ("its command under way is stopped, and its agent reads this before its next step" if message.now
           else "its agent reads it before its next step")
    await notice(f"→ Sent to job {job.number}: {how}. The receipt is on its card.", author="Jobs")


STEER_OFFER_NAMES = ("steer_offer_send", "steer_offer_new")


async def offer_steer(text: str, route: Route) -> None:
    """A job was decided while another job of this conversation runs, by a decider that cannot tell a steer: the
    user picks. Nothing starts until they do."""
    job = await asyncio.to_thread(store.get_job, route.steer_offer)
    offer = str(uuid.uuid4())
    payload = {"text": text, "job_id": job.id, "now": route.now, "kind": route.kind, "offer": offer,
               "parent": route.job_id, "context": route.context_job_id}
    await cl.Message(
        content=f"Job {job.number} is still {job.state.replace('_', ' ')}. Is this for job {job.number}, or a new "
                "job?", author="Jobs", metadata={"kind": "notice", "steer_offer": payload},
        actions=[cl.Action(id=offer + ":send", name="steer_offer_send", payload=payload,
                           label=f"Send to job {job.number}", icon="send"),
                 cl.Action(id=offer + ":new", name="steer_offer_new", payload=payload, label="Start a new job",
                           icon="hammer")]).send()


async def close_offer(action: cl.Action) -> None:
    """Both buttons of the question go once one is picked: it is answered."""
    offer = action.payload.get("offer") or ""
    for name, suffix in zip(STEER_OFFER_NAMES, (":send", ":new")):
        await cl.Action(id=offer + suffix, name=name, payload={}, label="", forId=action.forId).remove()


@cl.action_callback("steer_offer_send")
@guarded
async def on_steer_offer_send(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    await close_offer(action)
    # "choice", not "command": the words are the message as typed, not /steer arguments
    await steer(action.payload["text"], Route(STEER, job.id, "you sent it to the job", "choice",
                                              now=bool(action.payload.get("now"))))


async def on_answer_choice(action: cl.Action):
    """A choice button of a waiting job's card: the choice is the answer (if the job still waits: else the steer
    is told to it as any message, or refused once it ended)."""
    job = await asyncio.to_thread(owned_job, action)
    answer = str((action.payload or {}).get("answer") or "")
    await steer(answer, Route(STEER, job.id, "you picked a choice", "choice", answer=job.state == states.WAITING))


for _name in ANSWER_CHOICE_NAMES:
    cl.action_callback(_name)(guarded(on_answer_choice))


@cl.action_callback("steer_offer_new")
@guarded
async def on_steer_offer_new(action: cl.Action):
    await asyncio.to_thread(owned_job, action)
    await close_offer(action)
    payload = action.payload
    kind = FOLLOWUP_JOB if payload.get("kind") == FOLLOWUP_JOB and payload.get("parent") else JOB
    await delegate(payload["text"], Route(kind, payload.get("parent") if kind == FOLLOWUP_JOB else None,
                                          "you asked for a new job", "command", context_job_id=payload.get("context")))


async def show_new_jobs(jobs, route: Route, routed: str) -> None:
    """A card per new job, saying how it came about (stored with the job, so a reopened thread says it too)."""
    tid = thread_id()
    for job in jobs:
        if route.decided_by != "command" and route.kind != REVIEW:
            answerable_jobs.add(job.id)
        await asyncio.to_thread(store.append_event, job.id, Routed(text=routed, decided_by=route.decided_by))
        content = await asyncio.to_thread(relay.render if relay else partial(web_card, store), job.id)
        card = cl.Message(id=card_message_id(job.id), content=content or "", author="Jobs",
                          metadata={"job_id": job.id, "route": route.kind, "route_reason": route.reason},
                          actions=[])
        await card.send()
        if relay:
            await relay.refresh(job.id, tid)


async def answer(text: str, route: Route, user_message_id: str | None, history: list | None = None) -> None:
    tid = thread_id()
    if history is None:
        history = await asyncio.to_thread(core.conversation.history, tid, user_message_id)
    if history and history[-1] == {"role": "user", "content": text}:
        history = history[:-1]  # answering a message already in the thread (Answer instead): it is the question
    reply = new_message(content="", author="Assistant",
                        metadata={"kind": ANSWER_KIND, "route": route.kind, "route_reason": route.reason})
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
    about, final_text, citations, job_id, job_files, problems = "", "", [], route.job_id, set(), []
    while (event := await queue.get()) is not None:
        if isinstance(event, Exception):
            problems.append(f"⚠ {plain(str(event))}")
        elif event.kind == "about":  # shown with the first token, so the lookups stay above the reply
            about = f"**About job {event.data['number']}** · {plain(event.data.get('title') or '')}\n\n"
        elif event.kind == "token":
            await reply.stream_token(event.text if reply.content else about + event.text)
        elif event.kind == "retract":  # the reply streamed so far is withdrawn (it went wrong); another follows
            reply.content = about
            await reply.update()
        elif event.kind == "tool":
            async with cl.Step(name=event.text, type="tool") as step:
                step.input = event.data.get("arguments")
                step.output = tool_output_block(event.text, event.data.get("arguments"), event.data.get("output", ""))
        elif event.kind == "done":
            final_text, citations = event.text, event.data.get("citations", [])
            job_id = event.data.get("job_id") or job_id
            job_files = set(event.data.get("job_files") or [])
        elif event.kind == "error":
            problems.append(f"⚠ {plain(event.text)}")
    await producer
    body = link_citations(final_text, citations, answer_links(tid, job_id, job_files)) if final_text \
        else reply.content.removeprefix(about)
    footer = (f"*Answered directly ({plain(how_routed(route, 'a question'))}) — "
              "for a job, use **Run as a job** or /code.*")
    reply.content = "\n\n".join(part for part in (about + body, *problems, footer) if part.strip())
    # Not "job_id": the data layer takes a message with one for that job's card.
    reply.metadata.update(answer_text=final_text, question=text, about_job=job_id)
    reply.actions = [run_as_job_action(text, job_id)]
    await reply.send()


def run_as_job_action(question: str, job_id: str | None, label: str = "Run as a job") -> cl.Action:
    return cl.Action(name="run_as_job", payload={"text": question, "job_id": job_id}, label=label, icon="hammer")


async def list_jobs() -> None:
    user_id = await asyncio.to_thread(persisted_user_id)
    jobs = await asyncio.to_thread(store.list_jobs, user_id=user_id, limit=1000)
    if not jobs:
        await notice("No jobs yet.", author="Jobs")
        return
    tid = thread_id()
    rows = ["| # | job | state |", "|---|---|---|"]
    for job in jobs[-30:]:
        elsewhere = "" if job.thread_id == tid else " *(another conversation)*"
        rows.append(f"| {job.number} | {plain(job.title or job.task[:80])}{elsewhere} | "
                    f"{STATE_BADGES.get(job.state, job.state)} |")
    await notice("\n".join(rows), author="Jobs")


# ---------------------------------------------------------------------- actions
def owned_job(action: cl.Action):
    """The job an action names, if the logged-in user owns it (ownership.owned_job) and it is of this conversation."""
    job = ownership.owned_job(store, (action.payload or {}).get("job_id"), session_user())
    if job.thread_id != thread_id():
        raise ownership.NotYours("that job belongs to another conversation")
    return job


@cl.action_callback("cancel_job")
@guarded
async def on_cancel(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    cancelled = await asyncio.to_thread(core.jobs.cancel, job.id)
    if not cancelled:
        await notice(f"Job {job.number} had already ended.", author="Jobs")


async def rerun(job, attempts: int, routed: str, include_uncommitted: bool | None = None) -> None:
    """Retry and best-of-N run the job as it was: its own repository, ref, setup and starting point (with the
    working copy's uncommitted changes when it had them, or when asked)."""
    try:
        jobs = await asyncio.to_thread(core.jobs.retry, job.id, attempts, include_uncommitted)
    except Exception as exc:
        await notice(f"⚠ Could not start the job: {plain(str(exc))}", author="Jobs")
        return
    await show_new_jobs(jobs, Route(FOLLOWUP_JOB if job.parent_job_id else JOB, job.parent_job_id, routed, "command"),
                        routed)


@cl.action_callback("retry_job")
@guarded
async def on_retry(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    await rerun(job, 1, f"Retry of job {job.number}, with its own repository, ref, setup and starting point.")


@cl.action_callback("retry_uncommitted_job")
@guarded
async def on_retry_uncommitted(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    await rerun(job, 1, f"Job {job.number} again, starting from your working copy's uncommitted changes.",
                include_uncommitted=True)


@cl.action_callback("attempts_job")
@guarded
async def on_attempts(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    n = max(2, min(int(action.payload.get("n") or 3), 8))
    await rerun(job, n, f"{n} attempts at job {job.number}, with its own repository, ref, setup and starting point.")


@cl.action_callback("run_as_job")
@guarded
async def on_run_as_job(action: cl.Action):
    await asyncio.to_thread(ensure_thread)
    job_id = action.payload.get("job_id")
    if job_id:
        await asyncio.to_thread(owned_job, action)  # a follow-up of a job of this user's conversation only
    await delegate(action.payload["text"], Route(FOLLOWUP_JOB if job_id else JOB, job_id,
                                                 "you asked to run it as a job", "command"))


@cl.action_callback("answer_instead")
@guarded
async def on_answer_instead(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    if job.state not in BEFORE_AGENT:
        await notice(f"Job {job.number} has already started working; cancel it if you do not want it.", author="Jobs")
        return
    answerable_jobs.discard(job.id)
    await asyncio.to_thread(core.jobs.cancel, job.id)
    route = Route(ANSWER, None, "you asked for an answer instead of job " + str(job.number), "command")
    question = await asyncio.to_thread(store.get_artifact, job.id, "request") or job.task  # the user's own words
    asyncio.ensure_future(answer(question, route, None))  # an action runs inside an HTTP request: stream apart


@cl.action_callback("toggle_steps")
@guarded
async def on_toggle_steps(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    if relay:
        relay.toggle_steps(job.id)
        await relay.refresh(job.id, job.thread_id)


@cl.action_callback("apply_job")
@guarded
async def on_apply(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    repo = await asyncio.to_thread(gitops.local_repo, job.repo)
    patch = await asyncio.to_thread(store.get_artifact, job.id, "patch")
    if repo is None or not patch:
        await notice("Nothing to apply: the repository is not a local working copy, or the job changed nothing.",
                     author="Jobs")
        return
    try:  # a follow-up whose parent is applied brings only its own change (assistant/jobs/apply.py)
        applied = await asyncio.to_thread(apply_job, store, job, repo)
    except ApplyError as exc:
        await notice(f"⚠ {plain(str(exc))}", author="Jobs")
        return
    stat = f"\n\n```text\n{applied.stat}\n```" if applied.stat else ""
    await notice(f"{plain(applied.message)}{stat}", author="Jobs")


@cl.action_callback("branch_job")
@guarded
async def on_branch(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    repo = await asyncio.to_thread(gitops.local_repo, job.repo)
    patch = await asyncio.to_thread(store.get_artifact, job.id, "patch")
    if repo is None or not patch or not job.base_commit:
        await notice("No branch: the repository is not a local working copy, or the job changed nothing.",
                     author="Jobs")
        return
    branch = gitops.branch_name_for(job.number, job.title or job.task)
    message = gitops.commit_message_for(job.title or job.task.splitlines()[0], job.summary)
    try:
        start = await asyncio.to_thread(store.get_artifact, job.id, START_PATCH)
        commit = await asyncio.to_thread(gitops.create_branch, repo, patch, base_commit=job.base_commit,
                                         branch=branch, message=message, before=start)
    except gitops.GitOpError as exc:
        await notice(f"⚠ Could not create the branch: {plain(str(exc))}", author="Jobs")
        return
    with_start = " (with the uncommitted changes the job started from)" if start else ""
    await notice(f"Created branch `{branch}` in `{repo}` with commit `{commit[:12]}`{with_start}.", author="Jobs")


# ---------------------------------------------------------------------- review buttons
async def start_fix(review_job, start, routed: str) -> None:
    """Fix this / Fix all blockers: the follow-up job of the review (jobs/review.py), its card below."""
    try:
        job = await asyncio.to_thread(start, core.jobs, review_job.id, persisted_user_id())
    except (ReviewError, KeyError) as exc:
        await notice(f"⚠ Could not start the fix: {plain(str(exc.args[0] if isinstance(exc, KeyError) else exc))}",
                     author="Jobs")
        return
    await show_new_jobs([job], Route(FOLLOWUP_JOB, review_job.id, routed, "command"), routed)


async def on_fix_finding(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    finding = str((action.payload or {}).get("finding") or "")
    await start_fix(job, lambda manager, review_id, user: fix_finding(manager, review_id, finding, user_id=user),
                    f"Fix this: finding {finding} of review job {job.number}; it starts from the change and its proof "
                    "tests.")


for _name in FIX_BUTTON_NAMES:
    cl.action_callback(_name)(guarded(on_fix_finding))


@cl.action_callback("fix_blockers")
@guarded
async def on_fix_blockers(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    await start_fix(job, lambda manager, review_id, user: fix_blockers(manager, review_id, user_id=user),
                    f"Fix all blockers of review job {job.number}; it starts from the change and its proof tests.")


@cl.action_callback("apply_proofs")
@guarded
async def on_apply_proofs(action: cl.Action):
    job = await asyncio.to_thread(owned_job, action)
    repo = await asyncio.to_thread(gitops.local_repo, job.repo)
    if repo is None:
        await notice("Nothing to apply: the repository is not a local working copy; download the proof tests from "
                     "the card instead.", author="Jobs")
        return
    try:
        applied = await asyncio.to_thread(apply_proof_tests, store, job, repo)
    except ApplyError as exc:
        await notice(f"⚠ {plain(str(exc))}", author="Jobs")
        return
    await notice(plain(applied.message), author="Jobs")
