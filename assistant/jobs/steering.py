"""Steering a running job: the user's messages to it, kept in the store, read by its run at every step.

`tell` checks and stores a message (JobManager.tell and `assistant jobs tell` both use it), so it reaches the job
wherever it runs: the run (a thread here or a queue worker elsewhere) reads its job's queued messages from the
store through a `StoreInbox` at each step boundary (agent/steering.py), and a `SteerWatch` polls the store every
second for messages sent with `now`, to stop the command running at that moment (RunControl.interrupt). Every
receipt (queued, delivered at step N, acknowledged with the agent's next turn quoted) is a typed event published
through the job's recorder, and the message's row says the same for `assistant jobs show`.
"""
from __future__ import annotations

import logging
import threading

from ..agent.steering import SteerNote
from ..domain import states
from ..domain.events import SteerAcknowledged, SteerDelivered, SteerQueued
from ..store import Job, SteerMessage, Store
from .pipeline import RunControl
from .recorder import JobRecorder

log = logging.getLogger(__name__)

MAX_STEER_CHARS = 4000
WATCH_EVERY_S = 1.0   # how often a run looks for messages sent with `now`


class SteerRefused(ValueError):
    """A message the job cannot take (it ended, or the message is empty): the text says what to do instead."""


def _name(job: Job) -> str:
    return f"job {job.number}" if job.thread_id else f"job {job.id}"


def _ended(job: Job) -> SteerRefused:
    return SteerRefused(f"{_name(job)} already ended ({job.state}), so its agent can no longer read a message; "
                        "ask for a follow-up instead (a new message in its conversation starts a job from its "
                        "result), or retry it with the new instructions")


def tell(store: Store, job: Job, text: str, *, now: bool = False, user_id: str | None = None) -> SteerMessage:
    """Store a message for a job that has not ended (its SteerQueued event is the caller's to publish)."""
    text = (text or "").strip()
    if not text:
        raise SteerRefused("the message is empty: say what the job should do differently")
    if len(text) > MAX_STEER_CHARS:
        raise SteerRefused(f"the message has {len(text):,} characters; keep it under {MAX_STEER_CHARS:,} (put long "
                           "material in the repository or a follow-up job)")
    if job.state in states.TERMINAL:
        raise _ended(job)
    message = store.add_steer_message(job.id, text, now=now, user_id=user_id)
    current = store.get_job(job.id)
    if current.state in states.TERMINAL:  # it ended between the check and the write: nobody will read it
        store.drop_steer_messages(job.id)
        raise _ended(current)
    return message


def queued_event(message: SteerMessage) -> SteerQueued:
    return SteerQueued(message.id, message.text, message.now)


def receipt_line(message: SteerMessage) -> str:
    """One message and its receipt, for `assistant jobs show`."""
    flag = " [now]" if message.now else ""
    head = f"{message.created_at:%H:%M:%S}{flag} \u201c{_clip(message.text, 120)}\u201d"
    if message.state == "queued":
        return f"{head}: queued, not read yet"
    if message.state == "dropped":
        return f"{head}: dropped, the job ended before its agent read it"
    how = {"guidance": "as extra guidance of the guided harness",
           "answer": "as the answer to its question"}.get(message.delivered_how, "as a user turn")
    line = f"{head}: delivered at step {message.delivered_step} {how}"
    if message.stopped:
        line += f", stopping `{_clip(message.stopped, 80)}`"
    if message.state == "acknowledged":
        line += f"; acknowledged: \u201c{message.ack_excerpt}\u201d"
    return line


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


class StoreInbox:
    """The agent's SteerInbox for one run: its job's queued messages read from the store, receipts written back
    (through the run's recorder: fenced, and published as typed events)."""

    def __init__(self, recorder: JobRecorder):
        self.recorder = recorder

    @property
    def job_id(self) -> str:
        return self.recorder.job.id

    def take(self) -> list[SteerNote]:
        rows = self.recorder.write(self.recorder.store.queued_steer_messages, self.job_id)
        return [SteerNote(row.id, row.text, row.now) for row in rows]

    def delivered(self, notes: list[SteerNote], step: int, how: str, stopped: str | None = None) -> None:
        self.recorder.write(self.recorder.store.mark_steer_delivered, [n.id for n in notes], step=step, how=how,
                            stopped=stopped)
        for note in notes:
            self.recorder.publish_event(SteerDelivered(note.id, step, how, stopped if note.now else None))

    def acknowledged(self, notes: list[SteerNote], excerpt: str) -> None:
        self.recorder.write(self.recorder.store.mark_steer_acknowledged, [n.id for n in notes], excerpt)
        for note in notes:
            self.recorder.publish_event(SteerAcknowledged(note.id, excerpt))


class SteerWatch:
    """For one run: every second (or at once when woken by a `tell` in this process), the job's queued messages
    sent with `now`; while one waits, the agent's command under way is stopped (once per message)."""

    def __init__(self, store: Store, job_id: str, control: RunControl, every_s: float = WATCH_EVERY_S):
        self.store = store
        self.job_id = job_id
        self.control = control
        self.every_s = every_s
        self._wake = threading.Event()
        self._done = threading.Event()
        self._handled: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=f"steer-watch-{job_id}", daemon=True)

    def start(self) -> "SteerWatch":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._done.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._done.is_set() and not self.control.cancelled.is_set():
            self._wake.wait(self.every_s)
            self._wake.clear()
            if self._done.is_set():
                return
            try:
                self.check()
            except Exception:
                log.exception("looking for steering messages of %s", self.job_id)

    def check(self) -> str | None:
        """Stop the command under way if a `now` message waits that has stopped none yet: the command, or None."""
        urgent = [m.id for m in self.store.queued_steer_messages(self.job_id) if m.now and m.id not in self._handled]
        if not urgent:
            return None
        stopped = self.control.interrupt()
        if stopped is not None:
            self._handled.update(urgent)
        return stopped
