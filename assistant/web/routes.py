"""HTTP routes beside Chainlit's: cited lines of a job's logs or files, a job's patch as a download, the states of
the user's jobs for the page's browser notifications, and the login page's words.

Each checks through ownership.py that the logged-in user owns the thread the job belongs to; a thread or
job of someone else's gets the same 404 as a missing one.
"""
from __future__ import annotations

import asyncio
import html
import json
import re
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .. import ownership
from ..agent.citations import CITATION_RE
from ..domain.states import TERMINAL, WAITING
from ..access import RepoNotAllowed, RepoPolicy
from ..conversation.checkout import existing_checkout
from ..conversation.repo_tools import ReadOnlyRepo
from ..jobs.asking import pending_question
from ..store import Job, Store
from .review_card import proof_patch_of
from .viewer import identify_token

CONTEXT_LINES = 5
SIGNAL_WINDOW_S = 600  # a job that ended longer ago than this is old news to a page that polls every few seconds
SIGNAL_TEXT_CHARS = 180
NOTIFY_STATES = TERMINAL + (WAITING,)  # a job waiting for the user's answer counts too


def job_signal(job: Job, question: str | None = None) -> dict:
    """One job as the page's notifications need it: which, where its card is, its state and a line about it (for a
    job waiting for the user, `question`: what its agent asks)."""
    from .relay import card_message_id

    outcome = job.outcome or {}
    about = (question if job.state == WAITING and question else None) or job.summary or job.reason or ""
    about = " ".join(unlinked_text(about).split())
    return {"id": job.id, "number": job.number, "title": job.title or next(iter((job.task or "").strip().splitlines()), "")[:80],
            "state": job.state, "thread": job.thread_id, "card": card_message_id(job.id),
            "kind": outcome.get("kind") if job.state in TERMINAL else None,
            "notify": job.state in NOTIFY_STATES,
            "text": about if len(about) <= SIGNAL_TEXT_CHARS else about[:SIGNAL_TEXT_CHARS - 1] + "\u2026"}


def waiting_questions(store: Store, jobs: list[Job]) -> dict[str, str]:
    """What the agent of each waiting job asks, from its stored events (only waiting jobs' events are read)."""
    found = {}
    for job in jobs:
        if job.state == WAITING:
            pending = pending_question(store.read_events(job.id))
            if pending is not None and pending.question:
                found[job.id] = pending.question
    return found


def unlinked_text(text: str) -> str:
    """A summary as plain words: citations and Markdown marks out (a notification shows no Markdown)."""
    text = CITATION_RE.sub("", text or "")
    return re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"[*_`#>\[\]]", "", text))


def _viewer(request: Request) -> str:
    from chainlit.auth.cookie import get_token_from_cookies

    token = get_token_from_cookies(dict(request.cookies))
    auth = request.headers.get("authorization", "")
    if not token and auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    viewer = identify_token(token)
    if not viewer:
        raise HTTPException(status_code=401, detail="log in first")
    return viewer


def _owned_thread(store: Store, thread_id: str | None, viewer: str):
    try:
        return ownership.owned_thread(store, thread_id, viewer)
    except ownership.NotYours:
        raise HTTPException(status_code=404, detail="not found") from None  # the same answer as for a missing one


def _owned_job(store: Store, job_id: str, viewer: str) -> Job:
    try:
        return ownership.owned_job(store, job_id, viewer)
    except ownership.NotYours:
        raise HTTPException(status_code=404, detail="not found") from None


def _line_range(spec: str | None, line_count: int) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:-L?(\d+))?", (spec or "1").strip().removeprefix("L"))
    if not match:
        raise HTTPException(status_code=400, detail="L must look like 10-20")
    start = int(match.group(1))
    end = int(match.group(2) or start)
    return max(1, start), min(max(end, start), max(line_count, 1))


def _page(title: str, subtitle: str, text: str, start: int, end: int) -> HTMLResponse:
    lines = text.splitlines() or [""]
    first = max(1, start - CONTEXT_LINES)
    last = min(len(lines), end + CONTEXT_LINES)
    rows = []
    for number in range(first, last + 1):
        cited = start <= number <= end
        rows.append(f'<tr class="{"cited" if cited else ""}" id="L{number}"><td class="n">{number}</td>'
                    f"<td><pre>{html.escape(lines[number - 1])}</pre></td></tr>")
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;background:#111;color:#ddd}}
h1{{font-size:1.1rem}} .sub{{color:#999;font-size:.9rem;margin-bottom:1rem}}
table{{border-collapse:collapse;width:100%}} td{{padding:0 .5rem;vertical-align:top}}
td.n{{color:#777;text-align:right;user-select:none;width:3rem}} pre{{margin:0;white-space:pre-wrap;font-size:.85rem}}
tr.cited{{background:#3a3413}} tr.cited td.n{{color:#fc6}}</style></head>
<body><h1>{html.escape(title)}</h1><div class="sub">{html.escape(subtitle)}</div>
<table>{''.join(rows)}</table></body></html>"""
    return HTMLResponse(body)


def make_router(store_of, policy: RepoPolicy) -> APIRouter:
    """store_of: a callable returning the Store, so the router can exist before the Assistant starts;
    policy: which repositories may be read (checked again here: the thread's setting may predate it)."""
    router = APIRouter()

    @router.get("/cite/{job_id}/{target:path}")
    async def cited_lines(job_id: str, target: str, request: Request, L: str | None = None):
        store: Store = store_of()
        job = _owned_job(store, job_id, _viewer(request))
        if target.startswith("F:"):
            path = target[2:]
            files = json.loads(store.get_artifact(job.id, "cited_files") or "{}")
            if path not in files:
                raise HTTPException(status_code=404, detail="this file was not cited by the job")
            text = files[path]
            start, end = _line_range(L, len(text.splitlines()))
            return _page(f"{path} L{start}-{end}", f"job {job.number} · {job.title} · final workspace", text, start, end)
        chunk = store.get_chunk(target)
        if chunk is None or chunk.job_id not in store.lineage(job):
            raise HTTPException(status_code=404, detail="no such log in this job")
        start, end = _line_range(L, chunk.line_count)
        exit_text = f"exit {chunk.exit_code}" if chunk.exit_code is not None else "no exit code"
        return _page(f"$ {chunk.command}", f"log {chunk.id} · {chunk.phase} · {exit_text} · {chunk.duration_s:.1f} s"
                     f"{' · truncated' if chunk.truncated else ''}", chunk.text, start, end)

    @router.get("/cite-thread/{thread_id}/{path:path}")
    async def cited_repo_lines(thread_id: str, path: str, request: Request, L: str | None = None):
        """File citations of quick answers point into the conversation's local checkout."""
        store: Store = store_of()
        thread = _owned_thread(store, thread_id, _viewer(request))
        try:
            root = existing_checkout(thread.repo or "", thread.ref, policy.data_dir, policy) if thread.repo else None
        except RepoNotAllowed as exc:
            raise HTTPException(status_code=403, detail=str(exc)) from None
        if root is None:
            raise HTTPException(status_code=404, detail="this conversation's repository is not checked out here")
        try:
            text = ReadOnlyRepo(root, policy).text_of(path.removeprefix("F:"))
        except (OSError, RuntimeError, ValueError, UnicodeError):  # a symlink loop, an unreadable or odd path
            text = None
        if text is None:
            raise HTTPException(status_code=404, detail="no such file in the repository")
        start, end = _line_range(L, len(text.splitlines()))
        return _page(f"{path.removeprefix('F:')} L{start}-{end}", f"{thread.repo}", text, start, end)

    @router.get("/jobs/signals")
    async def job_signals(request: Request):
        """The states of the logged-in user's jobs that run or ended lately, in every conversation of theirs:
        public/composer.js polls it and notifies when one ends or waits for the user (a socket only reaches the
        sessions that show a job's own conversation)."""
        viewer = _viewer(request)
        store: Store = store_of()
        user = await asyncio.to_thread(store.get_user, viewer)
        jobs = [] if user is None else await asyncio.to_thread(
            store.recent_jobs, user.id, datetime.now(timezone.utc) - timedelta(seconds=SIGNAL_WINDOW_S))
        questions = await asyncio.to_thread(waiting_questions, store, jobs)
        return JSONResponse({"jobs": [job_signal(job, questions.get(job.id)) for job in jobs]},
                            headers={"Cache-Control": "no-store"})

    @router.get("/jobs/{job_id}/patch")
    async def download_patch(job_id: str, request: Request):
        store: Store = store_of()
        job = _owned_job(store, job_id, _viewer(request))
        patch = store.get_artifact(job.id, "patch")
        if not patch:
            raise HTTPException(status_code=404, detail="this job has no patch")
        return Response(patch, media_type="text/x-diff",
                        headers={"Content-Disposition": f'attachment; filename="job-{job.number}-{job.id}.patch"'})

    @router.get("/jobs/{job_id}/proofs")
    async def download_proofs(job_id: str, request: Request, finding: str | None = None):
        """A review job's proof tests as one patch (`?finding=f1`: that finding's alone)."""
        from ..jobs.review import load_review

        store: Store = store_of()
        job = _owned_job(store, job_id, _viewer(request))
        result = await asyncio.to_thread(load_review, store, job.id)
        if result is None:
            raise HTTPException(status_code=404, detail="this job is not a finished review")
        try:
            patch = proof_patch_of(result, finding)
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        if not patch:
            raise HTTPException(status_code=404, detail="no proof test" + (f" for {finding}" if finding else "s"))
        name = f"review-{job.number}-{finding + '-' if finding else ''}proofs.patch"
        return Response(patch, media_type="text/x-diff", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return router


def _serves_catch_all(route) -> bool:
    if getattr(route, "path", None) == "/{full_path:path}":
        return True
    inner = getattr(route, "original_router", None) or getattr(route, "router", None)
    return any(_serves_catch_all(r) for r in getattr(inner, "routes", []) or [])


def install_routes(app, router: APIRouter, first: bool = False) -> None:
    """Chainlit ends its routes with a catch-all that serves the UI; ours must come before it (`first`: before
    all of Chainlit's, to answer a path Chainlit also serves)."""
    before = list(app.router.routes)
    app.include_router(router)
    ours = [r for r in app.router.routes if not any(r is b for b in before)]
    rest = before
    position = 0 if first else next((i for i, r in enumerate(rest) if _serves_catch_all(r)), len(rest))
    app.router.routes[:] = rest[:position] + ours + rest[position:]


def translations_router(passwords) -> APIRouter:
    """Chainlit's translations with the login page's words: what the user name is and where the generated admin
    password lives. (Why a login was refused is put on the page by public/composer.js, in the server's words.)"""
    from chainlit.config import config

    router = APIRouter()

    @router.get("/project/translations")
    async def project_translations(language: str = "en-US"):
        if not re.fullmatch(r"[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8}){0,3}", language):
            raise HTTPException(status_code=422, detail="language must look like en-US")
        translation = json.loads(json.dumps(config.load_translation(config.ui.language or language)))
        login = translation.setdefault("auth", {}).setdefault("login", {})
        login["title"] = passwords.login_hint()
        if not passwords.settings.users:
            login.setdefault("form", {}).setdefault("email", {})["placeholder"] = "admin"
        return JSONResponse(content={"translation": translation})

    return router
