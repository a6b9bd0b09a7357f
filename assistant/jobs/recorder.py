"""Recording what a job's pipeline says: every event to the store first, to listeners second.

A JobRecorder is the pipeline's `emit` and JobLog for one run of one job. State changes move the job along
the state machine, SandboxReady fills in the job's facts, the outcome becomes artifacts and fields, and the
end of the job ranks its best-of-N group. The in-process job manager and the queue workers both use it, so a
job is recorded the same way wherever it ran.

Given the run's RunControl, the recorder also turns what the store says back into what the run must do: a
write refused by the job's fence (another run owns the job now) loses the run; a state change the job can no
longer make (it was cancelled elsewhere) cancels it.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from ..store import Job, StaleRun, Store
from ..domain import states
from ..domain.outcome import KINDS, NO_RESULT, Outcome, kind_rank
from ..domain.events import (DiffComputed, Finished, GroupRanked, JobEventRecord, JobUpdate, SandboxPlaced, SandboxReady,
                     StateChanged, StepFinished, StepStopped, SummaryWritten, ToolStarted)
from .pipeline import JobOutcome, RunControl
from .results import Summarise, assess_job

log = logging.getLogger(__name__)

Publish = Callable[[JobUpdate], None]
EndHook = Callable[[Job, str, str], None]  # (the ended job as stored, its state, its reason)


class JobRecorder:
    """`summarise` lets the summary model write the summary of a job that ended without one (else a digest of
    its log does); `price_table`/`currency` price its tokens (settings.price_table); `on_end` hears of the job's
    end once it is announced (the webhook notifier, assistant/notify)."""

    def __init__(self, store: Store, job: Job, publish: Publish, control: RunControl | None = None, *,
                 summarise: Summarise | None = None, price_table: str | None = None, currency: str = "USD",
                 on_end: EndHook | None = None):
        self.store = store
        self.job = job
        self.publish = publish
        self.control = control
        self.summarise = summarise
        self.price_table = price_table
        self.currency = currency
        self.on_end = on_end
        self._recorded_run = False  # this run recorded what its agent left (then the end re-assesses it)
        self._open_step: ToolStarted | None = None  # a tool call that has started and not finished
        self._stopped: int | None = None  # the step recorded as stopped by a cancel
        self._step_lock = threading.Lock()
        if control is not None:
            control.on_cancel(self._on_cancel)

    def write(self, write, *args, **kwargs):
        """One store call of the run (steering's inbox reads and writes this way): see _write."""
        return self._write(write, *args, **kwargs)

    def _write(self, write, *args, **kwargs):
        """One store write; a write refused by the job's fence loses the run."""
        try:
            return write(*args, **kwargs)
        except StaleRun as exc:
            if self.control is not None:
                self.control.lose(str(exc))
            raise

    # ------------------------------------------------------------------ the pipeline's emit
    def emit(self, event: JobEventRecord) -> None:
        with self._step_lock:
            if isinstance(event, ToolStarted):
                self._open_step = event
            elif isinstance(event, StepFinished):
                self._open_step = None
                if self._stopped is not None and event.step == self._stopped:
                    return  # the command the cancel killed: its stop is already on the record
        if isinstance(event, StateChanged) and event.state != self.job.state and event.state != states.QUEUED:
            try:
                self.job = self._write(self.store.transition, self.job.id, event.state, event.reason)
            except states.IllegalTransition:  # it ended elsewhere (cancelled by the user): stop this run
                if self.control is None:
                    raise
                self.control.cancel()
                return
        elif isinstance(event, SandboxPlaced):
            self.job = self._write(self.store.update_job, self.job.id, engine=event.engine, container=event.container)
        elif isinstance(event, SandboxReady):
            self.job = self._write(self.store.update_job, self.job.id, backend=event.backend,
                                   base_commit=event.base_commit, setup_network=event.setup_network,
                                   agent_network=event.agent_network, cache_hit=event.cache_hit)
        self.publish_event(event)

    def publish_event(self, event: JobEventRecord) -> None:
        row = self._write(self.store.append_event, self.job.id, event) if event.stored else None
        self.publish(JobUpdate(self.job.id, self.job.thread_id, event, row.seq if row else None,
                               row.created_at if row else None))

    # ------------------------------------------------------------------ the pipeline's JobLog
    def add_chunk(self, **fields):
        return self._write(self.store.add_chunk, **fields)

    def chunk_owner(self, chunk_id: str) -> tuple[int, str] | None:
        chunk = self._write(self.store.get_chunk, chunk_id)
        return None if chunk is None or chunk.job_id is None else (chunk.line_count, chunk.job_id)

    # ------------------------------------------------------------------ the end
    def record_outcome(self, outcome: JobOutcome) -> None:
        """What the job left, before it ends: artifacts, tokens, summary and citations, then their events."""
        job_id = self.job.id
        if outcome.diff is not None:
            self._write(self.store.put_artifact, job_id, "diff", outcome.diff)
        if outcome.patch is not None:
            self._write(self.store.put_artifact, job_id, "patch", outcome.patch)
        if outcome.cited_files:
            self._write(self.store.put_artifact, job_id, "cited_files", json.dumps(outcome.cited_files))
        for kind, content in outcome.artifacts.items():
            self._write(self.store.put_artifact, job_id, kind, content)
        if not outcome.agent_ran:
            return
        self._recorded_run = True
        self._write(self.store.add_job_tokens, job_id, outcome.prompt_tokens, outcome.completion_tokens,
                    outcome.steps)
        self.job = self._write(self.store.update_job, job_id, summary=outcome.summary, citations=outcome.citations,
                               outcome=outcome.outcome.to_dict())
        if outcome.summary:
            self.publish_event(SummaryWritten(outcome.summary, outcome.citations))
        self.publish_event(DiffComputed(outcome.outcome.files, outcome.outcome.diff_lines or 0,
                                        outcome.outcome.diff_notes))

    def finish(self, state: str, reason: str) -> bool:
        """Assess the result, then end the job (unless it already ended); rank its group when it was the last
        one. True if it ended here."""
        current = self._write(self.store.get_job, self.job.id)
        self._record_stopped_step(current.state if current.state in states.TERMINAL else state)
        if current.state in states.TERMINAL:
            self.job = current
            self._write(self.store.drop_steer_messages, current.id)
            # Ended from outside (a cancel, `jobs cancel`): still owed its assessment, or a new one now that
            # this run has recorded what the agent left.
            if self._recorded_run or not Outcome.from_dict(current.outcome).assessed:
                self.assess(current.state, current.reason or reason)
            return False
        self.assess(state, reason)
        try:
            self.job = self._write(self.store.transition, current.id, state, reason)
        except states.IllegalTransition:  # it ended elsewhere between the read and the write
            return False
        self._write(self.store.drop_steer_messages, current.id)  # messages its agent never read: the receipt says so
        self.publish_event(StateChanged(state, reason))
        self.announce_end(state, reason)
        return True

    def _on_cancel(self) -> None:
        """The job was cancelled (its end is recorded before its run is told): the step under way goes on the
        record now. The run itself ends only once its sandbox is torn down, which a busy engine can take tens of
        seconds over, and until then the card would show a cancelled job without the step it was on."""
        try:
            current = self.store.get_job(self.job.id)
            if current.state in states.TERMINAL:
                self._record_stopped_step(current.state)
        except Exception:
            log.warning("recording the stopped step of %s", self.job.id, exc_info=True)

    def _record_stopped_step(self, state: str) -> None:
        """The step the run was on when the job ended (a cancel kills its command mid-way) stays on the record."""
        with self._step_lock:
            started, self._open_step = self._open_step, None
            if started is None or state == states.SUCCEEDED:
                return
            self._stopped = started.step
        command = started.arguments.get("command") if isinstance(started.arguments, dict) else None
        self.publish_event(StepStopped(started.step, started.tool, f"$ {command}" if command else started.tool, state))

    def assess(self, state: str, reason: str) -> None:
        """Before the job ends: a summary if it has none, the kind of result, checked claims, review flags
        (jobs/results.py). A failure here costs the assessment, never the end of the job."""
        try:
            job = self._write(self.store.get_job, self.job.id)
            assessment = self._write(assess_job, self.store, job, state=state, reason=reason,
                                     summarise=self.summarise, price_table=self.price_table, currency=self.currency)
        except StaleRun:
            raise
        except Exception:
            log.exception("assessing the result of %s", self.job.id)
            return
        if assessment.summary_written:
            self.publish_event(SummaryWritten(assessment.summary, assessment.citations))

    def announce_end(self, state: str, reason: str) -> None:
        """The job has ended in the store: rank its group if it was the last one, say it is finished, and tell
        the end hook (it only records; a failure there costs the notification, never the end)."""
        if self.job.group_id:
            rank_group_if_complete(self.store, self.job.group_id, self.publish)
        self.publish_event(Finished(state, reason))
        if self.on_end is not None:
            try:
                self.on_end(self._write(self.store.get_job, self.job.id), state, reason)
            except StaleRun:
                raise
            except Exception:
                log.exception("the end hook of %s failed", self.job.id)


def model_summariser(model, job_id: str, stopping: Callable[[], bool]) -> Summarise:
    """The summary model writes the summary of a job that ended without one, unless its runner is stopping (it
    has seconds then, not a model call's length: the log digest stands in)."""
    def summarise(messages: list[dict]) -> str:
        if stopping():
            return ""
        return model.complete("summary", messages, job_id=job_id, max_tokens=700).content or ""
    return summarise


def rank_group_if_complete(store: Store, group_id: str, publish: Publish) -> None:
    """Rank a best-of-N group once its last attempt has ended, and recommend the best one: an attempt that
    succeeded with a result (fix, draft or findings). Attempts with no result rank below every attempt with
    one; when no attempt produced a result, none is recommended and the group's message says so."""
    jobs = store.list_jobs(group_id=group_id)
    if any(j.state not in states.TERMINAL for j in jobs):
        return
    ranked = sorted(jobs, key=rank_key)
    best = ranked[0]
    pick = best if recommendable(best) else None
    for position, job in enumerate(ranked, start=1):
        outcome = Outcome.from_dict(job.outcome).replace(rank=position, recommended=job is pick)
        store.update_job(job.id, outcome=outcome.to_dict())
    JobRecorder(store, best, publish).publish_event(
        GroupRanked(group_id, [j.id for j in ranked], pick.id if pick else None, group_note(ranked, pick)))


def recommendable(job: Job) -> bool:
    """An attempt worth recommending: it succeeded and left a result (not "no result", nor an unknown kind)."""
    kind = Outcome.from_dict(job.outcome).kind
    return job.state == states.SUCCEEDED and kind in KINDS and kind != NO_RESULT


def group_note(ranked: list[Job], pick: Job | None) -> str:
    """The group's verdict in one sentence, for the card of its best attempt."""
    count = len(ranked)
    if pick is not None:
        kind = Outcome.from_dict(pick.outcome).kind
        return f"Attempt {pick.attempt} of {count} is recommended ({kind})."
    if all(Outcome.from_dict(j.outcome).kind in (NO_RESULT, None) for j in ranked):
        return f"No attempt produced a change: none of the {count} attempts is recommended."
    best = ranked[0]
    return (f"The best-ranked attempt ({best.attempt}) {best.state}: none of the {count} attempts is recommended; "
            "review them before using one.")


def rank_key(job: Job) -> tuple:
    """The kind of result first (fix, draft, findings, no result); then succeeded before anything else; then
    fewer review flags, a passing last test run, any test run at all; then the smaller diff."""
    outcome = Outcome.from_dict(job.outcome)
    passed = outcome.tests_passed
    return (kind_rank(outcome.kind), job.state != states.SUCCEEDED, len(outcome.flags),
            passed is not True, passed is None, outcome.size)
