"""The job manager: a queue with a concurrency limit, one worker thread per running job, cancel,
retry, best-of-N groups, and an event feed that any number of subscribers (web app, CLI) follow.

The work itself is the pipeline's (pipeline.run_job); the manager only queues, cancels and records
(recorder.JobRecorder). Jobs are keyed by id and thread id, never by a browser session; every update is
written to the store before subscribers hear of it, so a reopened conversation rebuilds from the store alone.
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

from ..access import RepoNotAllowed, RepoPolicy
from ..config import Settings
from ..egress import spec_from_settings
from ..llm.client import ModelClient
from ..sandbox import SandboxConfig, prepare
from ..sandbox.pool import EnginePool
from ..sandbox.warm import CLOSE_WAIT_S, WarmPool
from ..store import Job, Store
from . import states
from .events import JobEventRecord, JobUpdate, Notice, StateChanged
from .pipeline import JobLimits, JobSpec, ParentResult, RunControl, run_job
from .recorder import JobRecorder, model_summariser

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


Subscriber = Callable[[JobUpdate], None]


def sandbox_config(settings: Settings) -> SandboxConfig:
    return SandboxConfig(
        data_dir=settings.data_dir, backend=settings.sandbox_backend, image=settings.sandbox_image,
        memory_mb=settings.sandbox_memory_mb, cpus=settings.sandbox_cpus, pids_limit=settings.sandbox_pids,
        job_wall_clock_s=settings.job_max_seconds, ca_bundle=settings.sandbox_ca_bundle,
        cache_enabled=settings.setup_cache, cache_max_entries=settings.setup_cache_size,
        maintenance_command=settings.maintenance_command, allow_setup_failure=settings.allow_setup_failure,
        allow_weaker_fallback=settings.allow_weaker_fallback, setup_secrets=settings.setup_secret_values(),
        diff_file_cap_bytes=int(settings.diff_file_cap_mb * 1e6), diff_patch_cap_bytes=int(settings.diff_patch_cap_mb * 1e6),
        egress_settings=spec_from_settings(settings), egress_image=settings.egress_image,
        toolchain_images=settings.sandbox_toolchain_images, allowed_images=settings.allowed_sandbox_images)


class JobManager:
    def __init__(self, settings: Settings, store: Store, model: ModelClient):
        self.settings = settings
        self.store = store
        self.model = model
        self.sandbox_config = sandbox_config(settings)
        self.pool = EnginePool.from_settings(settings, store)  # ASSISTANT_DOCKER_HOSTS: placement on a pool
        if self.pool is not None:
            self.sandbox_config = replace(self.sandbox_config, deployment=store.deployment_id())
        self._lock = threading.Lock()
        self._controls: dict[str, RunControl] = {}
        self._finished: dict[str, threading.Event] = {}
        self._subscribers: list[Subscriber] = []
        self._closed = threading.Event()
        self._stopping = False
        self.warm: WarmPool | None = None
        self._start_local_execution()

    def _start_local_execution(self) -> None:
        """Jobs run in this process: a thread pool, a watch for cancels written by other processes, and (on the
        environment's engine) the warm pool."""
        self._pool = ThreadPoolExecutor(max_workers=self.settings.max_concurrent_jobs, thread_name_prefix="job")
        if self.settings.warm_pool and self.pool is None:
            self.warm = WarmPool(self.sandbox_config, capacity=self.settings.warm_pool_size,
                                 idle_s=self.settings.warm_pool_idle_s)
        threading.Thread(target=self._watch_external_cancels, name="job-cancel-watch", daemon=True).start()

    # ------------------------------------------------------------------ public API
    def _new_jobs(self, req: JobRequest) -> list[dict]:
        """The rows a request makes (one per attempt of a best-of-N group), as create_job's arguments."""
        if not req.task.strip():
            raise ValueError("a job needs a task")
        RepoPolicy.from_settings(self.settings).check(req.repo)  # RepoNotAllowed says why and what to do
        # The request's agent internet is kept with the job (written with it), so a retry asks for the same.
        artifacts = {} if req.agent_internet is None else {"agent_internet": json.dumps(req.agent_internet)}
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
            job = self.store.create_job(**fields)
            with self._lock:
                self._controls[job.id] = RunControl()
                self._finished[job.id] = threading.Event()
            self._emit(job, StateChanged(states.QUEUED, attempt=job.attempt, attempts=job.attempts))
            jobs.append(job)
        for job in jobs:
            self._pool.submit(self._run_guarded, job.id)
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

    def cancel(self, job_id: str) -> bool:
        job = self.store.get_job(job_id)
        with self._lock:
            control = self._controls.get(job_id)
        if job.state in states.TERMINAL and not (job.state == states.CANCELLED and control is not None):
            return False
        if control is None:  # not ours (another process, or before a restart): just record it
            self._finish(job, states.CANCELLED, "cancelled by the user")
            return True
        if job.state == states.QUEUED:
            self._finish(job, states.CANCELLED, "cancelled by the user before it started")
        elif job.state in (states.PREPARING, states.SETTING_UP):  # say so now; the run stops as its sandbox closes
            self._finish(job, states.CANCELLED, "cancelled by the user before the agent started")
        control.cancel()  # closing the sandbox kills whatever command runs; the pipeline then sees the flag
        return True

    def retry(self, job_id: str, attempts: int = 1) -> list[Job]:
        job = self.store.get_job(job_id)
        internet = self.store.get_artifact(job.id, "agent_internet")
        return self.submit(JobRequest(task=job.task, repo=job.repo, ref=job.ref, setup=job.setup, attempts=attempts,
                                      thread_id=job.thread_id, user_id=job.user_id,
                                      parent_job_id=job.parent_job_id, title=job.title,
                                      agent_internet=json.loads(internet) if internet else None))

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        event = self._finished.get(job_id)
        if event is not None:
            event.wait(timeout)
        return self.store.get_job(job_id)

    def shutdown(self, cancel_running: bool = True, wait_s: float | None = None) -> None:
        """Stop taking work; with cancel_running, end every active job as interrupted (retryable).
        wait_s bounds the wait for the workers (a server being stopped has seconds, not a job's length):
        a job whose worker has not finished by then is recorded as interrupted without it."""
        self._closed.set()
        self._stopping = True
        active = list(self._controls)
        if cancel_running:
            for job_id in active:
                try:
                    self.cancel(job_id)
                except Exception:
                    log.exception("cancelling %s at shutdown", job_id)
        self._pool.shutdown(wait=wait_s is None, cancel_futures=True)
        if self.warm is not None:
            self.warm.close(CLOSE_WAIT_S if wait_s is None else min(wait_s, CLOSE_WAIT_S))
        if wait_s is not None and cancel_running:
            self._interrupt_stragglers(active, time.monotonic() + wait_s)

    def _interrupt_stragglers(self, job_ids: list[str], deadline: float) -> None:
        for job_id in job_ids:
            done = self._finished.get(job_id)
            if done is not None and done.wait(max(0.0, deadline - time.monotonic())):
                continue
            try:
                self._finish(self.store.get_job(job_id), states.INTERRUPTED,
                             "the server shut down while this job was active; retry it")
            except Exception:
                log.exception("interrupting %s at shutdown", job_id)

    def _watch_external_cancels(self) -> None:
        """`assistant jobs cancel` from another process only writes the store; notice it and stop the work."""
        while not self._closed.wait(1.0):
            with self._lock:
                mine = [job_id for job_id, control in self._controls.items() if not control.cancelled.is_set()]
            try:
                cancelled = self.store.job_ids_in_state(mine, states.CANCELLED)
            except Exception:
                log.exception("checking %d jobs for an external cancel", len(mine))
                continue
            for job_id in cancelled:
                try:
                    self.cancel(job_id)
                except Exception:
                    log.exception("cancelling %s after an external cancel", job_id)

    # ------------------------------------------------------------------ events
    def _publish(self, update: JobUpdate) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(update)
            except Exception:  # a broken subscriber must not break the job
                log.exception("job subscriber failed")

    def _recorder(self, job: Job, control: RunControl | None = None) -> JobRecorder:
        """Records a job's events and end; a running job's (with its control) may ask the summary model for
        a summary it lacks, unless the server is stopping (it has seconds, not a model call's length)."""
        summarise = model_summariser(self.model, job.id, lambda: self._stopping) if control else None
        return JobRecorder(self.store, job, self._publish, control, summarise=summarise,
                           price_table=self.settings.price_table, currency=self.settings.price_currency)

    def _emit(self, job: Job, event: JobEventRecord) -> None:
        self._recorder(job).publish_event(event)

    def _finish(self, job: Job, state: str, reason: str, recorder: JobRecorder | None = None) -> None:
        if state == states.CANCELLED and self._stopping:  # nobody cancelled it: the server is going away
            state, reason = states.INTERRUPTED, "the server shut down while this job was active; retry it"
        (recorder or self._recorder(job)).finish(state, reason)
        with self._lock:
            done = self._finished.get(job.id)
        if done:
            done.set()

    # ------------------------------------------------------------------ the work
    def _run_guarded(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        control = self._controls.get(job_id)
        try:
            if job.state != states.QUEUED or control is None or control.cancelled.is_set():
                return
            recorder = self._recorder(job, control)

            def prepare_placed(request, **callbacks):
                engine = None if self.pool is None else self.pool.place(
                    job.id, job.fence, control.cancelled, on_wait=lambda text: recorder.emit(Notice(text)))
                prepared = prepare(request, self.sandbox_config, engine=engine, warm=self.warm, **callbacks)
                self._rewarm(job)  # the next job on this repository finds one ready, even straight after this one
                return prepared
            outcome = run_job(job_spec(self.store, job), prepare=prepare_placed, config=self.sandbox_config,
                              model=self.model, limits=JobLimits.from_settings(self.settings), job_log=recorder,
                              emit=recorder.emit, control=control)
            recorder.record_outcome(outcome)
            self._finish(recorder.job, outcome.state, outcome.reason, recorder)
        except Exception as exc:  # whatever happens, the job ends in a defined state with the reason
            if control is not None and control.cancelled.is_set():
                self._finish(job, states.CANCELLED, "cancelled by the user")
            else:
                log.exception("job %s crashed", job_id)
                self._finish(job, states.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._controls.pop(job_id, None)
                done = self._finished.get(job_id)
            if done:
                done.set()
            self._rewarm(job)

    def _rewarm(self, job: Job) -> None:
        """The next job on this repository most likely asks for the same sandbox: ready one now."""
        if self.warm is None or self._stopping:
            return
        try:
            internet = self.store.get_artifact(job.id, "agent_internet")
            self.prewarm(job.repo, job.ref, job.setup, json.loads(internet) if internet else None)
        except Exception:
            log.exception("re-warming after %s", job.id)


def job_spec(store: Store, job: Job) -> JobSpec:
    """What the pipeline needs to know of a job, read from the store: its parent's result, its ancestors."""
    parent = None
    ancestors: set[str] = set()
    if job.parent_job_id:
        row = store.get_job(job.parent_job_id)
        parent = ParentResult(row.number, row.title, row.summary, store.get_artifact(row.id, "patch") or "")
        parent_id = job.parent_job_id
        while parent_id and parent_id not in ancestors and parent_id != job.id:
            ancestors.add(parent_id)
            parent_id = store.get_job(parent_id).parent_job_id
    internet = store.get_artifact(job.id, "agent_internet")
    return JobSpec(job_id=job.id, task=job.task, repo=job.repo, ref=job.ref, setup=job.setup, parent=parent,
                   citable_jobs=frozenset(ancestors), run=job.fence,
                   agent_internet=json.loads(internet) if internet else None)
