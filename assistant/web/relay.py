"""Job updates to whichever browser sessions have the job's thread open right now.

Jobs are keyed by thread, not by socket session: one process-wide subscriber hears every update
(on worker threads), hops onto the event loop, and re-renders the job's card in each live session of
its thread. With no session open nothing is lost: the card is rendered from the store on resume.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable

from .. import ownership
from ..jobs import states
from ..jobs.events import Finished, OutputDelta, SetupCommandRan, StateChanged, StepFinished, ToolStarted
from ..store import Store, models
from .cards import job_diff_view, render_job_card

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 0.5
FINAL_RETRY_S = (1.0, 3.0, 10.0)  # a finished job's card that could not be fully shown is tried again after these
DIFF_ELEMENT = "DiffView"  # public/elements/DiffView.jsx
TAIL_LINES = 40
_NAMESPACE = uuid.UUID("6b0f3c52-2f7e-4d2a-9a57-3d0f1c7e9b11")


def card_message_id(job_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"card:{job_id}"))


def diff_element_id(job_id: str) -> str:
    """One id per job's diff: a re-sent element replaces the one the browser has instead of adding another."""
    return str(uuid.uuid5(_NAMESPACE, f"diff:{job_id}"))


def _digest(props: dict) -> str:
    return hashlib.sha256(json.dumps(props, sort_keys=True).encode()).hexdigest()


def web_card(store: Store, job_id: str, tail: str | None = None, current: str | None = None,
             all_steps: bool = False) -> str | None:
    """The card as the web app shows it: the diff itself is the DiffView element under the text."""
    return render_job_card(store, job_id, tail, current, diff_inline=False, all_steps=all_steps)


def action_id(job_id: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"action:{job_id}:{name}"))


def sessions_of(thread_id: str | None, owner: str | None) -> list:
    """The live sessions showing this thread that belong to its owner, with a login that still stands: a
    session can name any thread id, so the id alone says nothing about who is watching."""
    from chainlit.session import ws_sessions_id

    from .gate import GATE

    if not thread_id or not owner:
        return []
    return [s for s in list(ws_sessions_id.values())
            if s.thread_id == thread_id and s.user is not None and s.user.identifier == owner
            and GATE.token_valid(getattr(s, "token", None))]


class JobRelay:
    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop,
                 actions_for: Callable[[object, Store], list], action_names: tuple[str, ...] = ()):
        self.store = store
        self.loop = loop
        self.actions_for = actions_for  # (job row, store or ThreadJobsView) -> [cl.Action]
        # Every button a card can have: a finished card clears them all, whatever this process remembers sending.
        self.action_names = tuple(action_names)
        self._tails: dict[str, deque] = {}
        self._current: dict[str, str] = {}  # job id -> the tool call under way (not stored: it is about now)
        self._last_refresh: dict[str, float] = {}
        self._pending: dict[str, asyncio.TimerHandle] = {}  # job id -> its scheduled refresh
        self._locks: dict[str, list] = {}  # job id -> [its lock, how many refreshes hold or wait for it]
        self._final: set[tuple[str, str]] = set()  # (session, job) shown complete in its final state
        self._retries: dict[str, int] = {}  # job id -> final renders tried again so far
        self._names_seen: set[str] = set()  # every button name a card has had in this process
        self._forgetting: set[str] = set()  # sessions whose socket dropped: forgotten once Chainlit drops them
        self._sent_actions: dict[tuple[str, str], dict[str, object]] = {}
        self._sent_diffs: dict[tuple[str, str], str] = {}  # (session, job) -> digest of the props it has
        self._shown: set[tuple[str, str]] = set()  # (session, job) whose card this process has put in the browser
        self._on_new_job: list[Callable[[str], None]] = []
        self.all_steps: set[str] = set()
        self._owners: dict[str, str] = {}  # jobs whose card lists every step (the user unfolded them)

    # ------------------------------------------------------------------ from worker threads
    def on_update(self, update) -> None:
        event = update.event
        if isinstance(event, ToolStarted):
            self._current[update.job_id] = event.describe()
        elif isinstance(event, (StepFinished, Finished)):
            self._current.pop(update.job_id, None)
        if isinstance(event, OutputDelta):
            tail = self._tails.setdefault(update.job_id, deque(maxlen=TAIL_LINES))
            for line in event.text.splitlines():
                tail.append(line[:300])
        elif isinstance(event, (StepFinished, SetupCommandRan)) or (
                isinstance(event, StateChanged) and event.state == states.RUNNING):
            self._tails.pop(update.job_id, None)  # the next command's output starts a fresh tail
        urgent = not isinstance(event, OutputDelta)
        self.loop.call_soon_threadsafe(self._schedule, update.job_id, update.thread_id, urgent)

    def owner_of(self, thread_id: str | None) -> str | None:
        """Who owns a thread (remembered: an owner never changes)."""
        if not thread_id:
            return None
        if thread_id not in self._owners:
            owner = ownership.owner_of(self.store, self.store.get_thread(thread_id))
            if owner is None:
                return None
            if len(self._owners) > 4096:
                self._owners.clear()
            self._owners[thread_id] = owner
        return self._owners[thread_id]

    def tail(self, job_id: str) -> str | None:
        lines = self._tails.get(job_id)
        return "\n".join(lines) if lines else None

    def current(self, job_id: str) -> str | None:
        return self._current.get(job_id)

    def render(self, job_id: str, source: Store | None = None) -> str | None:
        """The card's text now: stored facts (from `source`, a ThreadJobsView when rendering a whole thread)
        plus what only this process knows (live tail, folding)."""
        return web_card(source or self.store, job_id, self.tail(job_id), self.current(job_id), job_id in self.all_steps)

    def toggle_steps(self, job_id: str) -> None:
        self.all_steps.symmetric_difference_update({job_id})

    # ------------------------------------------------------------------ on the loop
    def _schedule(self, job_id: str, thread_id: str | None, urgent: bool) -> None:
        pending = self._pending.get(job_id)
        if pending is not None:
            if not urgent or pending.when() <= self.loop.time():
                return
            pending.cancel()  # a step or a state change does not wait for the throttled live-output refresh
        wait = 0.0 if urgent else max(0.0, REFRESH_INTERVAL_S - (time.monotonic() - self._last_refresh.get(job_id, 0)))
        self._pending[job_id] = self.loop.call_later(
            wait, lambda: asyncio.ensure_future(self._refresh(job_id, thread_id)))

    @contextlib.asynccontextmanager
    async def _job_lock(self, job_id: str):
        """One card write per job at a time, across every refresh path. The lock is dropped only when nobody
        holds or waits for it: dropping it under a waiter let two renders of one card interleave (a stale
        "running" render after the final one, two button syncs reading the same record)."""
        entry = self._locks.get(job_id)
        if entry is None:
            entry = self._locks[job_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._locks.get(job_id) is entry:
                del self._locks[job_id]

    async def _refresh(self, job_id: str, thread_id: str | None) -> None:
        # One refresh per job at a time: an older render finishing after a newer one would leave a stale card.
        async with self._job_lock(job_id):
            try:
                await self._refresh_now(job_id, thread_id)
            except Exception:  # the store was busy, say: a finished card must still end up complete
                log.warning("refreshing the card of %s failed", job_id, exc_info=True)
                self._retry_final(job_id, thread_id)

    def _retry_final(self, job_id: str, thread_id: str | None) -> None:
        """Render a card again a little later; no event may come after a job's last one to do it."""
        tries = self._retries.get(job_id, 0)
        if tries >= len(FINAL_RETRY_S):
            log.warning("giving up on the card of %s after %d tries; a reload shows it", job_id, tries)
            return
        self._retries[job_id] = tries + 1
        self.loop.call_later(FINAL_RETRY_S[tries], lambda: asyncio.ensure_future(self._refresh(job_id, thread_id)))

    async def _refresh_now(self, job_id: str, thread_id: str | None) -> None:
        self._pending.pop(job_id, None)
        self._last_refresh[job_id] = time.monotonic()
        try:
            job = await asyncio.to_thread(self.store.get_job, job_id)
            content = await asyncio.to_thread(self.render, job_id)
        except LookupError:
            return
        diff_props = None
        if job.state in states.TERMINAL:
            self._tails.pop(job_id, None)
            await asyncio.to_thread(self._persist_card, job_id, thread_id)
            diff_props = await asyncio.to_thread(job_diff_view, self.store, job_id)
            await asyncio.to_thread(self._persist_diff, job, diff_props)
        tid = thread_id or job.thread_id
        owner = self._owners.get(tid) if tid else None
        if owner is None:
            owner = await asyncio.to_thread(self.owner_of, tid)
        complete = True
        for session in sessions_of(tid, owner):
            complete = await self.show_card(session, job, content, diff_props) and complete
        if job.state in states.TERMINAL:
            if complete:
                self._retries.pop(job_id, None)
            else:
                self._retry_final(job_id, thread_id)

    async def refresh(self, job_id: str, thread_id: str | None) -> None:
        """Re-render a job's card in every live session of its thread now."""
        await self._refresh(job_id, thread_id)

    async def refresh_in(self, session, job_id: str, source: Store | None = None, content: str | None = None) -> None:
        """Re-render a job's card in one session (a reopened thread), in turn with the job's other refreshes;
        `source` is a ThreadJobsView of the thread when all its cards are refreshed, `content` the card's
        text when it was rendered a moment ago (the resumed thread carries it)."""
        source = source or self.store
        async with self._job_lock(job_id):
            job, diff_props, carried = await asyncio.to_thread(self._resumed_card, source, job_id)
            if job.state not in states.TERMINAL:
                content = None  # an active job's card moves on: render it now
            if carried:
                # The resumed thread already carried this element from the store; sending it again would
                # re-mount it and fold back whatever the user has opened since.
                self._sent_diffs[(session.id, job_id)] = _digest(diff_props)
            await self.show_card(session, job, content, diff_props, source)

    def _resumed_card(self, source: Store, job_id: str) -> tuple[object, dict | None, bool]:
        job = source.get_job(job_id)
        diff_props = job_diff_view(source, job_id)
        return job, diff_props, self._persist_diff(job, diff_props, source)

    def _persist_card(self, job_id: str, thread_id: str | None) -> None:
        """Keep the stored card text current too, for readers other than our data layer (diff included)."""
        message_id = card_message_id(job_id)
        if thread_id and self.store.get_message(message_id) is not None:
            self.store.upsert_message(message_id, thread_id, output=render_job_card(self.store, job_id) or "")

    def _persist_diff(self, job, props: dict | None, source: Store | None = None) -> bool:
        """Store the DiffView element of a finished job's card, so a resumed thread shows it; True if it was already there."""
        if props is None or not job.thread_id:
            return False
        element_id = diff_element_id(job.id)
        existing = (source or self.store).get_element(element_id)
        if existing is not None and existing.props == props:
            return True
        self.store.upsert_element(models.Element(
            id=element_id, thread_id=job.thread_id, for_id=card_message_id(job.id), type="custom",
            name=DIFF_ELEMENT, display="inline", mime="application/json", props=props))
        return False

    async def show_card(self, session, job, content: str | None = None, diff_props: dict | None = None,
                        source: Store | None = None) -> bool:
        """Create or update a job's card in one session, with its diff and the buttons that fit its state; True
        when every part reached the session (or it is gone, so there is nothing left to do).

        Each part is sent apart: text, diff element and buttons are separate things in Chainlit 2.x, and one
        that fails must not leave the others stale (a finished card with a Cancel button and no diff). The
        caller's Chainlit context is left as it was: a handler that refreshes a card goes on in its own session.

        The card is a top-level message of the thread in every session. Chainlit nests a message under the step
        open in the current context (`local_steps`: the `on_message` run of whoever started the job, carried
        into every refresh made from that handler or from a worker thread it started); that step exists only in
        the starter's browser, and every other browser drops a message whose parent it lacks, so a job started
        in one tab would never show in another.
        """
        from chainlit.context import ChainlitContext, context, context_var, local_steps
        from chainlit.session import WebsocketSession

        from .nosleep import new_message

        token = context_var.set(ChainlitContext(session))
        steps_token = local_steps.set([])
        complete, final = True, job.state in states.TERMINAL
        try:
            if content is None:
                content = await asyncio.to_thread(self.render, job.id, source)
            message = new_message(id=card_message_id(job.id), content=content or "", author="Jobs",
                                  metadata={"job_id": job.id})
            parts = [("text", lambda: self._sync_text(session, job, message, context))]
            if diff_props is not None:
                parts.append(("diff", lambda: self._sync_diff(session, job, message.id, diff_props)))
            parts.append(("buttons", lambda: self._sync_actions(session, job, message.id, source)))
            for name, part in parts:
                try:
                    await part()
                except Exception:
                    if WebsocketSession.get_by_id(session.id) is None:
                        return True  # the session went away mid-update; the store has the truth
                    complete = False
                    log.warning("could not send the %s of the card of %s to session %s", name, job.id, session.id,
                                exc_info=True)
            if final and complete:
                self._final.add((session.id, job.id))
            return complete
        finally:
            local_steps.reset(steps_token)
            context_var.reset(token)

    async def _sync_text(self, session, job, message, context) -> None:
        await message.update()
        if (session.id, job.id) not in self._shown:
            # The card of a job started elsewhere (another tab, another web replica) is not in this browser
            # yet, and an update of a message it lacks is dropped: add it (an add of one it has updates it).
            await context.emitter.send_step(message.to_dict())
            self._shown.add((session.id, job.id))

    async def _sync_diff(self, session, job, for_id: str, props: dict) -> None:
        import chainlit as cl

        key, digest = (session.id, job.id), _digest(props)
        if self._sent_diffs.get(key) == digest:
            return
        element = cl.CustomElement(id=diff_element_id(job.id), name=DIFF_ELEMENT, props=props, display="inline",
                                   for_id=for_id)
        # The row is the relay's to write (see _persist_diff): it must exist even when no browser is open.
        await element.send(for_id=for_id, persist=False)
        self._sent_diffs[key] = digest

    async def _sync_actions(self, session, job, for_id: str, source: Store | None = None) -> None:
        """The card's buttons as its state wants them. While a job runs, only what changed is sent. The first
        render of a finished card in a session clears every button a card can have, by its fixed id, before
        sending the final ones: whatever this process remembers (it forgets on a restart, and a browser keeps
        its buttons across a socket blip), no Cancel outlives the job."""
        from chainlit.context import context

        wanted = {a.name: a for a in await asyncio.to_thread(self.actions_for, job, source or self.store)}
        self._names_seen.update(wanted)
        key = (session.id, job.id)
        sent = self._sent_actions.get(key, {})
        if job.state in states.TERMINAL and key not in self._final:
            stale = set(self.action_names) | self._names_seen | set(sent)
            for name in sorted(stale):
                await context.emitter.emit("remove_action", {"id": action_id(job.id, name), "forId": for_id,
                                                             "name": name, "payload": {}, "label": ""})
            sent = {}
            self._sent_actions[key] = {}
        for name, action in sent.items():
            if name not in wanted or wanted[name].label != action.label:
                await context.emitter.emit("remove_action", action.to_dict())
        fresh = {}
        for name, action in wanted.items():
            previous = sent.get(name)
            if previous is not None and previous.label == action.label:
                fresh[name] = previous
                continue
            action.id = action_id(job.id, name)
            await action.send(for_id=for_id)
            fresh[name] = action
        self._sent_actions[key] = fresh

    def forget_session(self, session_id: str) -> None:
        """Called on every socket drop. Chainlit keeps the session for a while and a reconnecting browser gets it
        back, buttons and all: what was sent there is forgotten only once the session itself is gone."""
        from chainlit.config import config

        if session_id in self._forgetting:
            return
        self._forgetting.add(session_id)
        wait = float(getattr(config.project, "session_timeout", 300) or 300) + 5.0
        self.loop.call_later(wait, self._forget_if_gone, session_id, wait)

    def _forget_if_gone(self, session_id: str, wait: float) -> None:
        from chainlit.session import WebsocketSession

        if WebsocketSession.get_by_id(session_id) is not None:  # back, or not yet cleared: look again later
            self.loop.call_later(wait, self._forget_if_gone, session_id, wait)
            return
        self._forgetting.discard(session_id)
        self.forget_now(session_id)

    def forget_now(self, session_id: str) -> None:
        self._shown = {key for key in self._shown if key[0] != session_id}
        self._final = {key for key in self._final if key[0] != session_id}
        for key in [k for k in self._sent_actions if k[0] == session_id]:
            del self._sent_actions[key]
        for key in [k for k in self._sent_diffs if k[0] == session_id]:
            del self._sent_diffs[key]
