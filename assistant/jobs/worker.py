"""A job worker of a PostgreSQL deployment: procrastinate's worker claims runs from the durable queue and this
module hands each to the job runner (runner.JobRunner), in a thread of its own, as long as the run owns its job.

`assistant worker` runs one (until SIGTERM or SIGINT); `assistant serve` runs one inside the web process unless
told not to. Besides the claiming, a worker sweeps for runs whose worker went silent: procrastinate's stalled
jobs (no heartbeat for ASSISTANT_WORKER_LOST_AFTER_S). Each such run is marked interrupted and its job queued
again with the next fence (once); the old run, should its worker come back, can write nothing more.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

from procrastinate import JobContext
from procrastinate.job_context import AbortReason
from procrastinate.jobs import Status
from procrastinate.worker import Worker

from ..config import Settings
from ..domain import states
from ..domain.events import JobUpdate
from ..llm.client import ModelClient
from ..notify import Notifier
from ..sandbox import SandboxConfig
from ..sandbox.engine import EngineSpec
from ..sandbox.pool import EnginePool
from ..store import StaleRun, Store
from .feed import DatabaseFeed
from .pipeline import RunControl
from .queue import TASK_NAME, PatientStore, ensure_queue_schema, hand_back, queue_app
from .runner import ENGINE_DOWN, JobRunner

log = logging.getLogger(__name__)

ABORT_POLL_S = 0.2        # how often a running job looks at its abort flag (set by NOTIFY or procrastinate's poll)
QUEUE_ABORT_POLL_S = 1.0  # procrastinate's own poll for abort requests, in case a notification was missed


STOPPING = "the worker is stopping"
SWEEP_EVERY = 10                      # sweep the engines for orphaned containers every this many health checks
ORPHAN_GRACE_S = 60.0                 # a younger container may still be on its way to being recorded on its job


def container_orphaned(store: Store, job_id: str, run: str, container_id: str, age_s: float) -> bool:
    """A sandbox container belongs to the current run of an active job, or to nobody (then it goes)."""
    try:
        job = store.get_job(job_id)
    except LookupError:
        return age_s > ORPHAN_GRACE_S
    if job.state not in states.ACTIVE or str(job.fence) != run:
        return True
    return job.container not in (None, container_id) and age_s > ORPHAN_GRACE_S


@dataclass
class Run:
    """A run in progress on this worker, and the engine it was placed on."""
    control: RunControl
    engine: EngineSpec | None = None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class QueueWorker:
    def __init__(self, settings: Settings, store: Store, model: ModelClient, *, name: str | None = None,
                 concurrency: int | None = None, feed: DatabaseFeed | None = None, notifier: Notifier | None = None):
        self.settings = settings
        self.store = PatientStore(store)
        self.model = model
        self.name = name or worker_name()
        self.concurrency = concurrency or settings.max_concurrent_jobs
        url = settings.resolved_database_url
        ensure_queue_schema(url)
        self.app = queue_app(url, worker=True)
        self.app.tasks[TASK_NAME].func = self._run_task
        self.queue = queue_app(url, worker=False)  # enqueues retries inside the store's transactions
        self.feed = feed or DatabaseFeed(url, store)
        self.sandbox_config = replace(SandboxConfig.from_settings(settings), deployment=store.deployment_id())
        self.pool = EnginePool.from_settings(settings, self.store)
        # The jobs that end on this worker are notified from here (a notifier of the process's own, or this one's).
        self._own_notifier = notifier is None
        self.notifier = notifier or Notifier(settings, self.store)
        self.runner = JobRunner(settings, self.store, model, self.sandbox_config, pool=self.pool,
                                stopping=lambda: self._stopping.is_set(), engine_loss_is_lost=True,
                                on_end=self.notifier.job_ended, on_wait=self.notifier.job_waiting)
        self.running: dict[str, Run] = {}
        self._worker: Worker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = threading.Event()

    # ------------------------------------------------------------------ life cycle
    def run(self, *, handle_signals: bool = False) -> None:
        """Claim and run jobs until stop() (or, with handle_signals, SIGTERM/SIGINT)."""
        asyncio.run(self._main(handle_signals))

    def stop(self) -> None:
        """Stop claiming; hand running jobs back to the queue (another worker retries them) and return."""
        self._stopping.set()

    def start_in_thread(self) -> None:
        """Run in a thread of this process (the web app's own worker, unless --no-workers) until stop()."""
        self._thread = threading.Thread(target=self.run, name="queue-worker", daemon=True)
        self._thread.start()
        self.started.wait(30)

    def stop_and_wait(self, wait_s: float | None = None) -> None:
        """stop(), then wait (up to wait_s, else 60 s) for the thread to have handed its runs back."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=60 if wait_s is None else wait_s)

    async def _main(self, handle_signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        # procrastinate runs each synchronous task in the loop's default executor: one thread per job.
        self._loop.set_default_executor(ThreadPoolExecutor(self.concurrency + 4, thread_name_prefix="queue-job"))
        async with self.app.open_async():
            self._worker = Worker(
                self.app, name=self.name, concurrency=self.concurrency, install_signal_handlers=handle_signals,
                update_heartbeat_interval=self.settings.worker_heartbeat_s,
                stalled_worker_timeout=self.settings.worker_lost_after_s,
                abort_job_polling_interval=QUEUE_ABORT_POLL_S,
                fetch_job_polling_interval=max(self.settings.worker_heartbeat_s, 1.0),
                shutdown_graceful_timeout=0, delete_jobs="successful", listen_notify=True)
            side = [asyncio.create_task(self._sweep_lost_runs(), name="sweep-lost-runs"),
                    asyncio.create_task(self._stop_when_asked(), name="stop-when-asked")]
            self.started.set()
            self.notifier.start()  # notifications left pending by a stopped process go out too
            try:
                await self._worker.run()
            finally:
                for task in side:
                    task.cancel()
                self._stopping.set()
                if self._own_notifier:
                    await asyncio.to_thread(self.notifier.close)

    async def _stop_when_asked(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(0.2)
        self._worker.stop()

    # ------------------------------------------------------------------ one run
    def _run_task(self, context: JobContext, job_id: str, fence: int) -> None:
        """The procrastinate task: run the job's run `fence`, if it is still the job's current one."""
        job = self.store.get_job(job_id)
        if job.fence != fence or job.state != states.QUEUED:
            log.info("skipping run %s of job %s: the job is on run %s, %s", fence, job_id, job.fence, job.state)
            return
        fenced = self.store.fenced(job_id, fence)
        try:
            job = fenced.update_job(job_id, runner=self.name)  # the claim: refused if another run owns the job now
        except StaleRun:
            return
        run = self.running[job_id] = Run(RunControl())
        control = run.control
        threading.Thread(target=self._watch_abort, args=(context, control), daemon=True,
                         name=f"abort-watch-{job_id}").start()
        try:
            end = self.runner.run(job, control, self.publish, store=fenced,
                                  on_placed=lambda engine: setattr(run, "engine", engine))
            if end.lost:
                self._after_lost_run(job_id, fence, end.lost)
        finally:
            self.running.pop(job_id, None)
            control.cancelled.set()  # ends the watcher

    def _after_lost_run(self, job_id: str, fence: int, reason: str) -> None:
        if reason == STOPPING:  # this worker is going away: give the run back, another worker retries it
            hand_back(self.queue, self.store, job_id, fence, f"the worker {self.name} stopped", self.publish,
                      self.runner.on_end)
        elif reason.startswith(ENGINE_DOWN):
            hand_back(self.queue, self.store, job_id, fence, reason, self.publish, self.runner.on_end)
        else:
            log.warning("run %s of job %s lost: %s", fence, job_id, reason)

    def _watch_abort(self, context: JobContext, control: RunControl) -> None:
        while not control.cancelled.wait(ABORT_POLL_S):
            reason = context.abort_reason()
            if reason == AbortReason.SHUTDOWN or self._stopping.is_set():
                control.lose(STOPPING)
            elif reason is not None:
                control.cancel()

    def publish(self, update: JobUpdate) -> None:
        self.feed.publish(update)

    # ------------------------------------------------------------------ lost runs, engines, orphans
    async def _sweep_lost_runs(self) -> None:
        lost_after = self.settings.worker_lost_after_s
        checks = 0
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_s)
            if self.pool is not None:
                try:
                    await asyncio.to_thread(self._check_engines, checks % SWEEP_EVERY == 0)
                except Exception:
                    log.exception("checking the sandbox engines")
                checks += 1
            connector = self.app.connector
            if time.monotonic() - getattr(connector, "last_outage", 0.0) < lost_after:
                continue  # right after an outage every heartbeat is old: judge nobody until they could renew it
            try:
                stalled = await self.app.job_manager.get_stalled_jobs(seconds_since_heartbeat=lost_after,
                                                                      task_name=TASK_NAME)
                for entry in stalled:
                    await asyncio.to_thread(self._recover, entry.task_kwargs, lost_after)
                    await self._close_entry(entry.id)
            except Exception:
                log.exception("sweeping lost runs")

    def _check_engines(self, sweep_all: bool) -> None:
        """Mark engines down or up; runs here on an engine that is down go back to the queue; sweep orphans."""
        _went_down, came_back = self.pool.check()
        down = {name: row.reason for name, row in self.store.engine_states().items() if row.state == "down"}
        for run in list(self.running.values()):
            if run.engine is not None and run.engine.name in down and not run.control.lost:
                run.control.lose(f"{ENGINE_DOWN}{run.engine.name} stopped answering ({down[run.engine.name]})")
        if sweep_all or came_back:
            removed = self.pool.sweep(self.sandbox_config.deployment, partial(container_orphaned, self.store),
                                      None if sweep_all else came_back)
            if removed:
                log.warning("removed %d sandbox containers no current run owns", removed)

    def _recover(self, kwargs: dict, lost_after: float) -> None:
        job_id, fence = kwargs["job_id"], int(kwargs["fence"])
        try:
            job = self.store.get_job(job_id)
        except LookupError:
            return
        if self.pool is not None and job.fence == fence:  # the dead worker's container goes with its run
            self.pool.remove_container(job.engine, job.container)
        reason = f"its worker stopped answering (no heartbeat for {lost_after:.0f} s)"
        hand_back(self.queue, self.store, job_id, fence, reason, self.publish, self.runner.on_end)

    async def _close_entry(self, queue_id: int) -> None:
        """The dead worker's queue entry ends failed, so no sweep finds it again (the retry is a new entry)."""
        try:
            await self.app.job_manager.finish_job_by_id_async(queue_id, status=Status.FAILED, delete_job=False)
        except Exception as exc:  # another worker's sweep closed it first
            log.debug("queue entry %s already closed: %s", queue_id, exc)
