"""The agent asks, the user answers: the job side of the agent's ask_user tool (agent/asking.py).

A question moves the job to state `waiting` (QuestionAsked, and the waiting webhook through `on_wait`), then waits
for the answer on the steering path: any message told to the job (`JobManager.tell`, `assistant jobs tell`) is
stored in steer_message, and the first ones to arrive answer the question — they
are marked delivered "as the answer" (their receipt says so) and come back to the agent as the tool's result; the
job is `running` again. The run looks in the store every second (or at once when a `tell` in this process wakes
it), so the answer may come from any process. No answer within ASSISTANT_ASK_TIMEOUT_S, or a cancel, ends the wait
without one (QuestionTimedOut): the agent stops and the job ends with a reason that says so.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..agent.asking import Question, Reply
from ..domain import states
from ..domain.events import QuestionAnswered, QuestionAsked, QuestionTimedOut, StateChanged, SteerDelivered
from ..store import Job
from .pipeline import RunControl
from .recorder import JobRecorder

log = logging.getLogger(__name__)

POLL_S = 1.0   # how often a waiting run looks for the answer in the store

WaitHook = Callable[[Job, Question], None]   # the job (as stored, now waiting) and its question: the webhook


class StoreAsker:
    """The agent's Asker for one run: the question goes out through the run's recorder (fenced, published as
    typed events), the answer comes from the job's steering messages in the store."""

    def __init__(self, recorder: JobRecorder, control: RunControl, timeout_s: float, *,
                 on_wait: WaitHook | None = None, poll_s: float = POLL_S):
        self.recorder = recorder
        self.control = control
        self.timeout_s = timeout_s
        self.on_wait = on_wait
        self.poll_s = poll_s
        self._wake = threading.Event()

    def wake(self) -> None:
        """A message was told to the job in this process: look now, not within the second."""
        self._wake.set()

    def ask(self, question: Question) -> Reply:
        started = time.monotonic()
        if self.control.cancelled.is_set():
            return self._end(started, "cancelled")
        # The question is on the record before the state says waiting: whoever reads a waiting job (its card, the
        # signals route, `jobs show`) finds what it waits for. Every reader looks at the question only while the
        # job waits, so a question recorded for a job cancelled before it could wait is never shown.
        self.recorder.publish_event(QuestionAsked(question.text, list(question.choices), question.step,
                                                  self.timeout_s))
        self.recorder.emit(StateChanged(states.WAITING))
        if self.control.cancelled.is_set():  # it ended elsewhere meanwhile
            return self._end(started, "cancelled")
        self._announce(question)
        deadline = started + self.timeout_s
        while not self.control.cancelled.is_set():
            rows = self.recorder.write(self.recorder.store.queued_steer_messages, self.recorder.job.id)
            if rows:
                return self._answered(question, rows, started)
            left = deadline - time.monotonic()
            if left <= 0:
                waited = time.monotonic() - started
                self.recorder.publish_event(QuestionTimedOut(question.text, round(waited, 1)))
                return Reply(None, waited, "timeout", self.timeout_s)
            self._wake.wait(min(self.poll_s, left))
            self._wake.clear()
        return self._end(started, "cancelled")

    def _answered(self, question: Question, rows, started: float) -> Reply:
        ids = [row.id for row in rows]
        answer = "\n\n".join(row.text.strip() for row in rows)
        waited = time.monotonic() - started
        self.recorder.write(self.recorder.store.mark_steer_delivered, ids, step=question.step, how="answer",
                            stopped=None)
        for row in rows:
            self.recorder.publish_event(SteerDelivered(row.id, question.step, "answer", None))
        self.recorder.publish_event(QuestionAnswered(answer, round(waited, 1), ids))
        self.recorder.emit(StateChanged(states.RUNNING))  # cancelled elsewhere meanwhile: the run is told to stop
        return Reply(answer, waited, timeout_s=self.timeout_s, message_ids=ids)

    def _end(self, started: float, why: str) -> Reply:
        return Reply(None, time.monotonic() - started, why, self.timeout_s)

    def _announce(self, question: Question) -> None:
        """The waiting webhook (it only records; a failure costs the notification, never the job)."""
        if self.on_wait is None:
            return
        try:
            self.on_wait(self.recorder.job, question)
        except Exception:
            log.exception("the waiting hook of %s failed", self.recorder.job.id)


def pending_question(events) -> QuestionAsked | None:
    """The question a job's agent asked and that is not answered (nor timed out) yet, from its stored events."""
    pending = None
    for event in events:
        if isinstance(event, QuestionAsked):
            pending = event
        elif isinstance(event, (QuestionAnswered, QuestionTimedOut)):
            pending = None
    return pending
