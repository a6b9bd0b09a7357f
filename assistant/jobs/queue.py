"""The durable job queue of a PostgreSQL deployment, on procrastinate.

procrastinate keeps the queue in the same database as everything else: a job is deferred in the transaction
that creates it, workers claim entries with SELECT … FOR UPDATE SKIP LOCKED, learn of new ones and of abort
requests through LISTEN/NOTIFY, and write a heartbeat; a worker silent past ASSISTANT_WORKER_LOST_AFTER_S is
taken for dead and its running entries are found with `get_stalled_jobs`. Hour-long jobs are never redelivered
while their worker's heartbeat goes on, because nothing here expires by time.

One queue entry is one *run* of a job: its arguments are the job id and the run's fence (jobs.fence). A lost run
is retried (once) as a new entry with the next fence, and the old run's writes are refused by the fence.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from importlib.metadata import version

import psycopg
from sqlalchemy.exc import DBAPIError, OperationalError
from procrastinate import App, PsycopgConnector, SyncPsycopgConnector, exceptions
from procrastinate.schema import SchemaManager

from ..config import Settings
from ..domain import states
from ..domain.events import JobUpdate, Notice, StateChanged
from ..store import Job, Store
from .feed import DatabaseFeed
from .recorder import EndHook, JobRecorder

log = logging.getLogger(__name__)

TASK_NAME = "assistant.run_job"
MAX_RUNS = 2                       # a job is retried automatically once after its run is lost
OUTAGE_TOLERANCE_S = 300.0         # how long queue and store operations wait out a database that went away
QUEUE_SCHEMA_LOCK = 0x61737371     # advisory lock key for creating the queue's tables
RETRIED_NOTICE = ("run {run} was lost ({reason}); the job starts again from the beginning in a new sandbox, "
                  "on whichever worker takes it (run {next} of {max})")


def conninfo(url: str) -> str:
    """A libpq URL from an SQLAlchemy one (postgresql+psycopg://… → postgresql://…)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def connection_lost(exc: BaseException) -> bool:
    """Whether an error (or one of its causes) is the database being unreachable rather than a bad query."""
    seen = exc
    while seen is not None:
        if isinstance(seen, psycopg.OperationalError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class OutageTolerantConnector(PsycopgConnector):
    """procrastinate's asyncio connector, waiting out a lost database (a restart, a failover) for up to
    OUTAGE_TOLERANCE_S instead of stopping the worker, whose running jobs would go with it."""

    last_outage: float = 0.0

    async def _retrying(self, call):
        deadline = time.monotonic() + OUTAGE_TOLERANCE_S
        delay = 0.2
        while True:
            try:
                return await call()
            except exceptions.ConnectorException as exc:
                if not connection_lost(exc) or time.monotonic() > deadline:
                    raise
                self.last_outage = time.monotonic()
                log.warning("the database is unreachable; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def execute_query_async(self, query, **arguments):
        return await self._retrying(lambda: PsycopgConnector.execute_query_async(self, query, **arguments))

    async def execute_query_one_async(self, query, **arguments):
        return await self._retrying(lambda: PsycopgConnector.execute_query_one_async(self, query, **arguments))

    async def execute_query_all_async(self, query, **arguments):
        return await self._retrying(lambda: PsycopgConnector.execute_query_all_async(self, query, **arguments))

    async def listen_notify(self, on_notification, channels) -> None:
        while True:
            try:
                await PsycopgConnector.listen_notify(self, on_notification, channels)
            except exceptions.ConnectorException as exc:
                if not connection_lost(exc):
                    raise
                self.last_outage = time.monotonic()
                await asyncio.sleep(1.0)


class PatientStore:
    """A store whose every call waits out a lost PostgreSQL connection (a restart, a failover) for up to
    OUTAGE_TOLERANCE_S, so a worker's running jobs outlive a database restart. Fenced views are patient too."""

    def __init__(self, store: Store):
        self._store = store

    def __getattr__(self, name: str):
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute
        if name == "fenced":
            return lambda *args, **kwargs: PatientStore(attribute(*args, **kwargs))

        def patiently(*args, **kwargs):
            deadline = time.monotonic() + OUTAGE_TOLERANCE_S
            delay = 0.2
            while True:
                try:
                    return attribute(*args, **kwargs)
                except (OperationalError, DBAPIError) as exc:
                    if not (exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError)) \
                            or time.monotonic() > deadline:
                        raise
                    log.warning("the database is unreachable (%s); %s retried in %.1f s", type(exc.orig).__name__,
                                name, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
        return patiently


def queue_app(url: str, *, worker: bool) -> App:
    """The procrastinate app: asyncio (pooled, outage-tolerant) in workers; elsewhere a synchronous one that is
    never opened and only ever runs on a connection it is given (the store's own transaction)."""
    connector = (OutageTolerantConnector(conninfo=conninfo(url), min_size=1, max_size=4) if worker
                 else SyncPsycopgConnector(conninfo=conninfo(url)))
    app = App(connector=connector)
    app.task(name=TASK_NAME, pass_context=True)(_not_here)
    return app


def _not_here(context, job_id: str, fence: int) -> None:
    raise RuntimeError("this process runs no jobs: start `assistant worker`")


_schema_checked: set[str] = set()


def ensure_queue_schema(url: str) -> None:
    """Create procrastinate's tables once per database (under an advisory lock, so processes starting together
    do not race), and refuse a database whose queue tables come from another procrastinate release."""
    if url in _schema_checked:
        return
    installed = version("procrastinate")
    with psycopg.connect(conninfo(url)) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (QUEUE_SCHEMA_LOCK,))
        if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
            conn.execute(SchemaManager.get_schema())
            conn.execute("INSERT INTO meta (key, value) VALUES ('queue_schema', %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (installed,))
        recorded = conn.execute("SELECT value FROM meta WHERE key = 'queue_schema'").fetchone()
        if recorded and recorded[0].split(".")[:2] != installed.split(".")[:2]:
            raise RuntimeError(
                f"the queue tables were made by procrastinate {recorded[0]}, this release runs {installed}: apply "
                "procrastinate's SQL migrations between the two (procrastinate/sql/migrations/) and update the "
                "meta row 'queue_schema', or use the release that made them")
        # Cancel looks a run up by our job id.
        conn.execute("CREATE INDEX IF NOT EXISTS assistant_queue_job_id ON procrastinate_jobs ((args->>'job_id'))")
        conn.commit()
    _schema_checked.add(url)


def enqueue(app: App, connection, job: Job) -> None:
    """Defer the job's current run on `connection`, inside the caller's transaction."""
    app.tasks[TASK_NAME].configure(connection=connection).defer(job_id=job.id, fence=job.fence)


def request_abort(app: App, store: Store, job_id: str) -> int:
    """Cancel the job's queued run, or ask its worker to stop it (NOTIFY, and the worker's 1 s poll)."""
    raw = store.engine.raw_connection()
    try:
        connection = raw.driver_connection
        rows = connection.execute(
            "SELECT id FROM procrastinate_jobs WHERE task_name = %s AND args->>'job_id' = %s "
            "AND status IN ('todo', 'doing')", (TASK_NAME, job_id)).fetchall()
        for (queue_id,) in rows:
            app.job_manager.cancel_job_by_id(queue_id, abort=True, connection=connection)
        connection.commit()
        return len(rows)
    finally:
        raw.close()


def announce_lost_run(store: Store, job: Job, run: int, reason: str, publish, on_end: EndHook | None = None) -> None:
    """The events of a lost run: interrupted, then either queued again (retried) or finished (told to `on_end`)."""
    recorder = JobRecorder(store, job, publish, on_end=on_end)
    recorder.publish_event(StateChanged(states.INTERRUPTED, reason))
    if job.state == states.QUEUED:
        recorder.publish_event(Notice(RETRIED_NOTICE.format(run=run, reason=reason, next=run + 1, max=MAX_RUNS),
                                      "warning"))
        recorder.publish_event(StateChanged(states.QUEUED, f"retrying: {reason}"))
    else:
        recorder.assess(states.INTERRUPTED, reason)
        recorder.announce_end(states.INTERRUPTED, reason)


def hand_back(app: App, store: Store, job_id: str, fence: int, reason: str, publish,
              on_end: EndHook | None = None) -> Job | None:
    """Give a run back to the queue (its worker lost it, or is stopping): retry it, once, as a new run; a job
    that used its runs ends interrupted (told to `on_end`)."""
    job = store.requeue_lost(job_id, fence, reason, max_runs=MAX_RUNS,
                             in_transaction=lambda connection, row: enqueue(app, connection, row))
    if job is not None:
        announce_lost_run(store, job, fence, reason, publish, on_end)
    return job


class QueueExecution:
    """The execution of a PostgreSQL deployment (see manager.Execution): jobs go to the durable queue in the
    transaction that creates them and run in worker processes (`assistant worker`, or the one `assistant serve`
    starts); updates of every job, wherever it runs, arrive through the database feed."""

    warm = None  # sandboxes are readied where jobs run, not here

    def __init__(self, settings: Settings, store: Store, deliver: Callable[[JobUpdate], None]):
        url = settings.resolved_database_url
        ensure_queue_schema(url)
        self.store = store
        self.queue = queue_app(url, worker=False)
        self.feed = DatabaseFeed(url, store)
        self._deliver = deliver
        self._lock = threading.Lock()
        self._finished: dict[str, threading.Event] = {}
        self.feed.start(self._dispatch)

    def admit(self, fields: dict) -> Job:
        return self.store.create_job(**fields, in_transaction=lambda conn, row: enqueue(self.queue, conn, row))

    def start(self, job: Job) -> None:
        """Nothing to do: its queue entry was written with it, and a worker claims it."""

    def stop(self, job_id: str) -> bool:
        return request_abort(self.queue, self.store, job_id) > 0

    def publish(self, update: JobUpdate) -> None:
        self.feed.publish(update)

    def wait(self, job_id: str, timeout: float | None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            finished = self._finished.setdefault(job_id, threading.Event())
        while True:
            job = self.store.get_job(job_id)
            if job.state in states.TERMINAL:
                return job
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return job
            finished.wait(left)  # set by the feed; the 1 s poll covers a notification lost to an outage

    def shutdown(self, cancel_running: bool, wait_s: float | None) -> None:
        """Queued jobs, and running ones, belong to the workers: they go on without this process."""
        self.feed.close()

    def _dispatch(self, update: JobUpdate) -> None:
        self._deliver(update)
        if update.kind == "finished":
            with self._lock:
                finished = self._finished.get(update.job_id)
            if finished:
                finished.set()
