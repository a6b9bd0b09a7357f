"""The job manager: what the conversation, the CLI and the web app ask of jobs (submit, cancel, retry, wait,
subscribe), over an execution that runs them: threads of this process (`ThreadExecution`, here) or the durable
queue and its workers (`QueueExecution`, jobs/queue.py).

Either way a run is carried out by the one runner (runner.JobRunner) and recorded by the recorder
(recorder.JobRecorder). Jobs are keyed by id and thread id, never by a browser session; every update is written
to the store before subscribers hear of it, so a reopened conversation rebuilds from the store alone.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

from ..access import RepoNotAllowed, RepoPolicy
from ..config import Settings
from ..domain import states
from ..domain.events import JobEventRecord, JobUpdate, StateChanged
from ..llm.client import ModelClient
from ..notify import Notifier
from ..sandbox import SandboxConfig
from ..sandbox.pool import EnginePool
from ..sandbox.warm import CLOSE_WAIT_S, WarmPool
from ..store import Job, SteerMessage, Store
from .pipeline import RunControl
from .apply import START_PATCH
from .recorder import JobRecorder
from .runner import SHUTDOWN_REASON, JobRunner
from .steering import queued_event, tell
from .uncommitted import UNCOMMITTED
from .uncommitted import inspect as inspect_working_copy

log = logging.getLogger(__name__)


@dataclass
class JobRequest:
    task: str
    repo: str
    ref: str | None = None
    setup: list[str] | None = None
    attempts: int = 1
    thread_id: str | None = None
    user_id: str | None = None
    parent_job_id: str | None = None
    title: str | None = None
    agent_internet: dict | str | None = None  # this job's agent-internet layer over the settings and the repo's
    request: str | None = None  # the user's own words when `task` adds context to them (a follow-up's)
    include_uncommitted: bool = False  # a local working copy's uncommitted changes go into the job (uncommitted.py)
    review: str | None = None          # a review job: what it reviews (jobs/review.py ReviewRequest as JSON)
    inherited: dict[str, str] | None = None  # a reviewed job's uncommitted-changes artifacts, which the review starts from


Subscriber = Callable[[JobUpdate], None]


def cancel_reason(state: str) -> str:
    """What a user's cancel says, by how far the job had come."""
    if state == states.QUEUED:
        return "cancelled by the user before it started"
    if state in (states.PREPARING, states.SETTING_UP):
        return "cancelled by the user before the agent started"
    return "cancelled by the user"


class Execution(Protocol):
    """Where jobs run. The manager records; an execution only starts, stops and waits for runs, and carries
    updates to this process's subscribers (directly, or through the database feed from any worker)."""

    warm: WarmPool | None

    def admit(self, fields: dict) -> Job:
        """Create the job's row (with whatever must be written in the same transaction)."""

    def start(self, job: Job) -> None:
        """The job is announced queued: let it run."""

    def stop(self, job_id: str) -> bool:
        """Stop the job's run wherever it runs (its end is already recorded). True if a run was told to stop."""

    def publish(self, update: JobUpdate) -> None: ...

    def wait(self, job_id: str, timeout: float | None) -> Job: ...

    def shutdown(self, cancel_running: bool, wait_s: float | None) -> None: ...


class JobManager:
    """`execution` makes one for the settings when not given: threads of this process, or with PostgreSQL the
    durable queue (workers run the jobs). `notifier` sends the webhook notifications of the jobs that end here
    (one for the settings when not given)."""

    def __init__(self, settings: Settings, store: Store, model: ModelClient, execution: Execution | None = None,
                 notifier: Notifier | None = None):
        self.settings = settings
        self.store = store
        self.sandbox_config = SandboxConfig.from_settings(settings)
        self.pool = EnginePool.from_settings(settings, store)  # ASSISTANT_DOCKER_HOSTS: placement on a pool
        if self.pool is not None:
            self.sandbox_config = replace(self.sandbox_config, deployment=store.deployment_id())
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        self._stopping = False
        self.notifier = notifier or Notifier(settings, store)
        self.runner = JobRunner(settings, store, model, self.sandbox_config, pool=self.pool,
                                stopping=lambda: self._stopping, after_prepare=self._rewarm,
                                on_end=self.notifier.job_ended, on_wait=self.notifier.job_waiting)
        if execution is None:
            if settings.uses_queue:
                from .queue import QueueExecution
                execution = QueueExecution(settings, store, self._deliver)
            else:
                execution = ThreadExecution(self)
        self.execution = execution
        self.runner.warm = execution.warm

    @property
    def model(self) -> ModelClient:
        return self.runner.model

    @model.setter
    def model(self, model: ModelClient) -> None:  # the embedded model's client, once its server is up
        self.runner.model = model

    @property
    def warm(self) -> WarmPool | None:
        return self.execution.warm

    @property
    def feed(self):
        """The database feed of a queue deployment (a worker in this process publishes through it)."""
        return getattr(self.execution, "feed", None)

    # ------------------------------------------------------------------ public API
    def _new_jobs(self, req: JobRequest) -> list[dict]:
        """The rows a request makes (one per attempt of a best-of-N group), as create_job's arguments."""
        if not req.task.strip():
            raise ValueError("a job needs a task")
        RepoPolicy.from_settings(self.settings).check(req.repo)  # RepoNotAllowed says why and what to do
        # The request's agent internet is kept with the job (written with it), so a retry asks for the same.
        artifacts = {} if req.agent_internet is None else {"agent_internet": json.dumps(req.agent_internet)}
        if req.request is not None:
            artifacts["request"] = req.request
        if req.review is not None:
            from .review import REVIEW_REQUEST
            artifacts[REVIEW_REQUEST] = req.review
        artifacts.update(req.inherited if req.inherited is not None else self._working_copy(req))
        attempts = max(1, min(int(req.attempts), 8))
        group = secrets.token_hex(4) if attempts > 1 else None
        title = req.title or req.task.strip().splitlines()[0][:80]
        return [dict(task=req.task, repo=req.repo, ref=req.ref, setup=req.setup, thread_id=req.thread_id,
                     user_id=req.user_id, parent_job_id=req.parent_job_id, title=title, group_id=group,
                     attempt=attempt, attempts=attempts, model=self.model.model_for("agent"), artifacts=artifacts)
                for attempt in range(1, attempts + 1)]

    def submit(self, req: JobRequest) -> list[Job]:
        jobs = []
        for fields in self._new_jobs(req):
            job = self.execution.admit(fields)
            self._emit(job, StateChanged(states.QUEUED, attempt=job.attempt, attempts=job.attempts))
            jobs.append(job)
        for job in jobs:
            self.execution.start(job)
        return jobs

    def prewarm(self, repo: str, ref: str | None = None, setup: list[str] | None = None,
                agent_internet: dict | str | None = None) -> bool:
        """Ready a sandbox for the next job on this repository in the background (the web app asks when a chat
        has a repository; a finished job asks for the next one). False when there is no pool (none configured,
        an engine pool, or jobs run in worker processes), the server is stopping or the repository is not
        allowed; never blocks and never fails the caller."""
        if self.warm is None or self._stopping:
            return False
        try:
            RepoPolicy.from_settings(self.settings).check(repo)
        except RepoNotAllowed:
            return False
        return self.warm.request(repo, ref, setup, agent_internet)

    def cancel(self, job_id: str, reason: str | None = None) -> bool:
        """The one way a job is cancelled: its end is recorded now (so a queued job never starts and every
        process sees it at once), then its run is stopped wherever it runs (closing its sandbox kills whatever
        command runs). A run that was already told records what its agent left when it stops."""
        job = self.store.get_job(job_id)
        ended = job.state not in states.TERMINAL and self._finish(job, states.CANCELLED,
                                                                 reason or cancel_reason(job.state))
        stopped = self.execution.stop(job_id)
        return ended or stopped

    def tell(self, job_id: str, text: str, *, now: bool = False, user_id: str | None = None) -> SteerMessage:
        """Steer a running (or queued) job: the message is stored, so its run reads it wherever it runs, at the
        agent's next step (before its next model call); with `now` the command running at that moment is stopped
        too. A job whose agent waits for an answer (state waiting) takes the message as the answer and resumes. SteerRefused (a ValueError saying what to do instead) for a job that has ended or an empty message.
        The receipt follows as events: SteerQueued now, SteerDelivered(step) and SteerAcknowledged(excerpt)."""
        job = self.store.get_job(job_id)
        message = tell(self.store, job, text, now=now, user_id=user_id)
        self._emit(job, queued_event(message))
        self.runner.nudge(job.id, now)   # a waiting agent reads it as its answer at once
        return message

    def retry(self, job_id: str, attempts: int = 1, include_uncommitted: bool | None = None) -> list[Job]:
        """The job again; with the working copy's uncommitted changes (taken anew) if it had them or when asked."""
        job = self.store.get_job(job_id)
        internet = self.store.get_artifact(job.id, "agent_internet")
        from .review import REVIEW_REQUEST
        review = self.store.get_artifact(job.id, REVIEW_REQUEST)
        if review is not None:  # a review again: the same change, from the same start
            inherited = {kind: self.store.get_artifact(job.id, kind) or "" for kind in (START_PATCH, UNCOMMITTED)
                         if self.store.has_artifact(job.id, kind)}
            return self.submit(JobRequest(task=job.task, repo=job.repo, ref=job.ref, setup=job.setup,
                                          attempts=attempts, thread_id=job.thread_id, user_id=job.user_id,
                                          title=job.title, review=review, inherited=inherited))
        if include_uncommitted is None:
            include_uncommitted = self.store.has_artifact(job.id, START_PATCH)
        return self.submit(JobRequest(task=job.task, repo=job.repo, ref=job.ref, setup=job.setup, attempts=attempts,
                                      thread_id=job.thread_id, user_id=job.user_id,
                                      parent_job_id=job.parent_job_id, title=job.title,
                                      agent_internet=json.loads(internet) if internet else None,
                                      request=self.store.get_artifact(job.id, "request"),
                                      include_uncommitted=include_uncommitted))

    def _working_copy(self, req: JobRequest) -> dict[str, str]:
        """The artifacts of a local working copy's uncommitted changes (uncommitted.py). A follow-up whose parent
        started from them starts from the same ones (its parent's patch is taken against them)."""
        if req.parent_job_id:
            inherited = self.store.get_artifact(req.parent_job_id, START_PATCH)
            if inherited:
                return {START_PATCH: inherited, UNCOMMITTED: self.store.get_artifact(req.parent_job_id, UNCOMMITTED)
                        or "{}"}
        changes = inspect_working_copy(req.repo, req.ref, include=req.include_uncommitted)
        if changes is None:
            return {}
        return changes.artifacts()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        return self.execution.wait(job_id, timeout)

    def shutdown(self, cancel_running: bool = True, wait_s: float | None = None) -> None:
        """Stop taking work; with cancel_running, end every job running here as interrupted (retryable).
        wait_s bounds the wait for the runs (a server being stopped has seconds, not a job's length)."""
        self._stopping = True
        started = time.monotonic()
        self.execution.shutdown(cancel_running, wait_s)
        # Attempts under way may finish within what is left; notifications not yet sent wait for the next start.
        left = None if wait_s is None else max(0.0, wait_s - (time.monotonic() - started))
        self.notifier.close(None if left is None else min(left, self.notifier.timeout_s))

    # ------------------------------------------------------------------ events
    def _deliver(self, update: JobUpdate) -> None:
        """An update reaches this process's subscribers."""
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(update)
            except Exception:  # a broken subscriber must not break the job
                log.exception("job subscriber failed")

    def _publish(self, update: JobUpdate) -> None:
        self.execution.publish(update)

    def _recorder(self, job: Job, control: RunControl | None = None) -> JobRecorder:
        return self.runner.recorder(job, self._publish, control)

    def _emit(self, job: Job, event: JobEventRecord) -> None:
        self._recorder(job).publish_event(event)

    def _finish(self, job: Job, state: str, reason: str) -> bool:
        return self.runner.finish(self._recorder(job), state, reason)

    def _rewarm(self, job: Job) -> None:
        """The next job on this repository most likely asks for the same sandbox: ready one now."""
        if self.warm is None or self._stopping:
            return
        try:
            internet = self.store.get_artifact(job.id, "agent_internet")
            self.prewarm(job.repo, job.ref, job.setup, json.loads(internet) if internet else None)
        except Exception:
            log.exception("re-warming after %s", job.id)


def cancel_from_command_line(settings: Settings, store: Store, job_id: str) -> bool:
    """`assistant jobs cancel` with the queue: the manager's one cancel path (record the end, then ask the run's
    worker to stop, which reaches it within about a second)."""
    from .queue import QueueExecution

    execution = QueueExecution(settings, store, lambda _update: None)
    try:  # the end's notifications are recorded here and sent by a running server or worker
        return JobManager(settings, store, None, execution, Notifier(settings, store, deliver=False)).cancel(
            job_id, "cancelled from the command line")
    finally:
        execution.shutdown(False, None)


def cancel_here(settings: Settings, store: Store, job_id: str, reason: str = "cancelled from the command line") -> bool:
    """`assistant jobs cancel` without the queue: the job's end is recorded through its recorder, so it is assessed
    and its webhook notification goes out (a server running the job sees the cancel in the store within a second and
    stops the run, which records what its agent left). The notification is tried before the command returns."""
    notifier = Notifier(settings, store)
    try:
        job = store.get_job(job_id)
        ended = JobRecorder(store, job, lambda _update: None, on_end=notifier.job_ended).finish(states.CANCELLED,
                                                                                               reason)
        if ended:
            notifier.flush(job_id, 2 * notifier.timeout_s)
        return ended
    finally:
        notifier.close(notifier.timeout_s)


def interrupt_orphans(settings: Settings, store: Store, reason: str | None = None,
                      notifier: Notifier | None = None) -> list[str]:
    """Active jobs whose process died are interrupted, assessed (the log digest: no model here) and notified as
    ended: recorded, and sent by `notifier` when it delivers (a server's), else by the next server or worker."""
    from .results import assess_interrupted

    interrupted = store.interrupt_orphaned_jobs(reason) if reason else store.interrupt_orphaned_jobs()
    if interrupted:
        assess_interrupted(store, interrupted)
        (notifier or Notifier(settings, store, deliver=False)).jobs_interrupted(interrupted)
    return interrupted


def tell_from_command_line(settings: Settings, store: Store, job_id: str, text: str, *, now: bool = False) -> SteerMessage:
    """`assistant jobs tell`: the message goes to the store (the job's run reads it there, in whichever process);
    with the queue its SteerQueued event also reaches the web replicas through the database feed."""
    message = tell(store, store.get_job(job_id), text, now=now)
    execution = None
    if settings.uses_queue:
        from .queue import QueueExecution
        execution = QueueExecution(settings, store, lambda _update: None)
    try:
        JobRecorder(store, store.get_job(job_id), execution.publish if execution else (lambda _update: None)
                    ).publish_event(queued_event(message))
    finally:
        if execution is not None:
            execution.shutdown(False, None)
    return message


class ThreadExecution:
    """Jobs run in this process: a thread pool as wide as ASSISTANT_MAX_CONCURRENT_JOBS, a watch for cancels
    written by other processes (`assistant jobs cancel`), and (on the environment's engine) the warm pool."""

    def __init__(self, manager: JobManager):
        self.manager = manager
        settings = manager.settings
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_jobs, thread_name_prefix="job")
        self._lock = threading.Lock()
        self._controls: dict[str, RunControl] = {}
        self._started: set[str] = set()
        self._done: dict[str, threading.Event] = {}
        self._closed = threading.Event()
        self.warm: WarmPool | None = None
        if settings.warm_pool and manager.pool is None:
            self.warm = WarmPool(manager.sandbox_config, capacity=settings.warm_pool_size,
                                 idle_s=settings.warm_pool_idle_s)
        threading.Thread(target=self._watch_external_cancels, name="job-cancel-watch", daemon=True).start()

    def admit(self, fields: dict) -> Job:
        job = self.manager.store.create_job(**fields)
        with self._lock:
            self._controls[job.id] = RunControl()
            self._done[job.id] = threading.Event()
        return job

    def start(self, job: Job) -> None:
        self._pool.submit(self._run, job.id)

    def stop(self, job_id: str) -> bool:
        with self._lock:
            control = self._controls.get(job_id)
            done = self._done.get(job_id)
            waiting = job_id not in self._started
        if control is None:
            return False
        control.cancel()
        if waiting and done is not None:  # its run, should it still start, returns at once: nobody waits for it
            done.set()
        return True

    def publish(self, update: JobUpdate) -> None:
        self.manager._deliver(update)

    def wait(self, job_id: str, timeout: float | None) -> Job:
        done = self._done.get(job_id)
        if done is not None:
            done.wait(timeout)
        return self.manager.store.get_job(job_id)

    def _run(self, job_id: str) -> None:
        manager = self.manager
        with self._lock:
            self._started.add(job_id)
            control = self._controls.get(job_id)
        job = manager.store.get_job(job_id)
        try:
            if job.state == states.QUEUED and control is not None and not control.cancelled.is_set():
                manager.runner.run(job, control, self.publish)
        finally:
            with self._lock:
                self._controls.pop(job_id, None)
                self._started.discard(job_id)
                done = self._done.get(job_id)
            if done:
                done.set()
            manager._rewarm(job)

    def shutdown(self, cancel_running: bool, wait_s: float | None) -> None:
        deadline = None if wait_s is None else time.monotonic() + wait_s  # one budget for the whole stop
        self._closed.set()
        with self._lock:
            active = list(self._controls)
        if cancel_running:
            for job_id in active:
                try:
                    self.manager.cancel(job_id)
                except Exception:
                    log.exception("cancelling %s at shutdown", job_id)
        self._pool.shutdown(wait=wait_s is None, cancel_futures=True)
        if self.warm is not None:
            self.warm.close(CLOSE_WAIT_S if deadline is None else min(max(0.0, deadline - time.monotonic()), CLOSE_WAIT_S))
        if deadline is not None and cancel_running:
            self._interrupt_stragglers(active, deadline)

    def _interrupt_stragglers(self, job_ids: list[str], deadline: float) -> None:
        """A job whose run has not finished by the deadline is recorded as interrupted without it."""
        for job_id in job_ids:
            done = self._done.get(job_id)
            if done is not None and done.wait(max(0.0, deadline - time.monotonic())):
                continue
            try:
                recorder = self.manager._recorder(self.manager.store.get_job(job_id))
                recorder.finish(states.INTERRUPTED, SHUTDOWN_REASON)
            except Exception:
                log.exception("interrupting %s at shutdown", job_id)

    def _watch_external_cancels(self) -> None:
        """`assistant jobs cancel` from another process only writes the store; notice it and stop the work."""
        store = self.manager.store
        while not self._closed.wait(1.0):
            with self._lock:
                mine = [job_id for job_id, control in self._controls.items() if not control.cancelled.is_set()]
            try:
                cancelled = store.job_ids_in_state(mine, states.CANCELLED)
            except Exception:
                log.exception("checking %d jobs for an external cancel", len(mine))
                continue
            for job_id in cancelled:
                try:
                    self.manager.cancel(job_id)
                except Exception:
                    log.exception("cancelling %s after an external cancel", job_id)
