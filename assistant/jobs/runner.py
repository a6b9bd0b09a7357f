"""One run of one job, wherever it runs: read the job, place and prepare its sandbox, run the pipeline, record
what it left and end it.

The in-process manager (a thread per job) and the queue worker (a process claiming runs from PostgreSQL) both
hand a claimed run to `JobRunner.run`, so a job is run, recorded and ended the same way in both; they differ only
in how runs reach them and in what they do with a run that was lost (the worker gives it back to the queue).
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Settings
from ..domain import states
from ..domain.events import Notice
from ..llm.client import ModelClient
from ..sandbox import SandboxConfig, prepare
from ..sandbox.engine import EngineSpec
from ..sandbox.pool import EnginePool
from ..sandbox.warm import WarmPool
from ..store import Job, StaleRun, Store
from .apply import START_PATCH
from .asking import StoreAsker, WaitHook
from .pipeline import JobLimits, JobSpec, ParentResult, RunControl, RunLost, run_job
from .review import REVIEW_REQUEST, ReviewRequest
from .recorder import EndHook, JobRecorder, Publish, model_summariser
from .steering import SteerWatch, StoreInbox
from .uncommitted import UNCOMMITTED

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "the server shut down while this job was active; retry it"


@dataclass
class RunEnd:
    """How a run ended: recorded (the job has its end in the store), or lost (nothing was recorded: another run
    owns the job, or the run should be given back; `lost` says why)."""
    lost: str | None = None
    engine: EngineSpec | None = None


class JobRunner:
    """`stopping` says the process is going away: a summary is then left to the log digest (no model call), and
    a run cancelled by that ends interrupted (retryable), not cancelled. `warm` readies the next sandbox for the
    repository as soon as this one is prepared. `engine_loss_is_lost`: a failed run whose engine stopped answering
    is lost, not failed (a queue can give it to another engine). `on_end` is every recorder's end hook: the
    webhook notifier (assistant/notify), wherever the job ends; `on_wait` hears of a job whose agent asks the user
    something (the notifier's waiting webhook)."""

    def __init__(self, settings: Settings, store: Store, model: ModelClient, config: SandboxConfig, *,
                 pool: EnginePool | None, stopping: Callable[[], bool], warm: WarmPool | None = None,
                 after_prepare: Callable[[Job], None] | None = None, engine_loss_is_lost: bool = False,
                 on_end: EndHook | None = None, on_wait: WaitHook | None = None):
        self.settings = settings
        self.store = store
        self.model = model
        self.config = config
        self.pool = pool
        self.warm = warm
        self.stopping = stopping
        self.after_prepare = after_prepare
        self.engine_loss_is_lost = engine_loss_is_lost
        self.on_end = on_end
        self.on_wait = on_wait
        self._watches: dict[str, SteerWatch] = {}   # the steering watch of each run under way here
        self._askers: dict[str, StoreAsker] = {}    # … and whom its agent asks (woken by a message told here)
        self._watch_lock = threading.Lock()

    def nudge(self, job_id: str, now: bool = True) -> bool:
        """A message was stored for this job: if its run is here, look at once (not within the second) — for an
        answer when its agent waits for one, and with `now` for a command to stop. False when the job does not
        run in this process (its run's own watch and asker find it)."""
        with self._watch_lock:
            watch = self._watches.get(job_id)
            asker = self._askers.get(job_id)
        if asker is not None:
            asker.wake()
        if watch is not None and now:
            watch.wake()
        return watch is not None

    def recorder(self, job: Job, publish: Publish, control: RunControl | None = None,
                 store: Store | None = None) -> JobRecorder:
        """Records a job's events and end; a running job's (with its control) may ask the summary model for a
        summary it lacks, unless the process is stopping (it has seconds, not a model call's length)."""
        summarise = model_summariser(self.model, job.id, self.stopping) if control else None
        return JobRecorder(store or self.store, job, publish, control, summarise=summarise,
                           price_table=self.settings.price_table, currency=self.settings.price_currency,
                           on_end=self.on_end)

    def finish(self, recorder: JobRecorder, state: str, reason: str) -> bool:
        """End the job (see JobRecorder.finish); a cancel that only the process's stop caused is an interruption."""
        if state == states.CANCELLED and self.stopping():
            state, reason = states.INTERRUPTED, SHUTDOWN_REASON
        return recorder.finish(state, reason)

    def run(self, job: Job, control: RunControl, publish: Publish, *, store: Store | None = None,
            on_placed: Callable[[EngineSpec | None], None] | None = None) -> RunEnd:
        """Run a claimed job (in state queued) to its end. `store` is where this run writes (a fenced view for a
        queue run); `on_placed` hears which engine of the pool the run went to."""
        recorder = self.recorder(job, publish, control, store)
        end = RunEnd()
        watch = SteerWatch(store or self.store, job.id, control).start()
        asker = StoreAsker(recorder, control, self.settings.ask_timeout_s, on_wait=self.on_wait)
        with self._watch_lock:
            self._watches[job.id] = watch
            self._askers[job.id] = asker
        try:
            return self._run(job, control, recorder, end, on_placed, asker)
        finally:
            watch.stop()
            with self._watch_lock:
                if self._watches.get(job.id) is watch:
                    del self._watches[job.id]
                if self._askers.get(job.id) is asker:
                    del self._askers[job.id]

    def _run(self, job: Job, control: RunControl, recorder: JobRecorder, end: RunEnd,
             on_placed: Callable[[EngineSpec | None], None] | None, asker: StoreAsker) -> RunEnd:
        def prepare_placed(request, **callbacks):
            if self.pool is not None:
                end.engine = self.pool.place(job.id, job.fence, control.cancelled,
                                             on_wait=lambda text: recorder.emit(Notice(text)))
                if on_placed is not None:
                    on_placed(end.engine)
            prepared = prepare(request, self.config, engine=end.engine, warm=self.warm, **callbacks)
            if self.after_prepare is not None:
                self.after_prepare(job)  # the next job on this repository finds a sandbox ready, even straight after
            return prepared
        try:
            outcome = run_job(job_spec(self.store, job), prepare=prepare_placed, config=self.config,
                              model=self.model, limits=JobLimits.from_settings(self.settings), job_log=recorder,
                              emit=recorder.emit, control=control, steering=StoreInbox(recorder), asker=asker)
            if outcome.state == states.FAILED and self.engine_loss_is_lost:
                end.lost = self._engine_lost(end.engine)  # not the job's failure: it goes to another engine
                if end.lost:
                    return end
            recorder.record_outcome(outcome)
            self.finish(recorder, outcome.state, outcome.reason)
        except (RunLost, StaleRun) as lost:
            end.lost = control.lost or str(lost)
        except Exception as exc:  # whatever happens, the job ends in a defined state with the reason
            if control.lost:
                end.lost = control.lost
            else:
                if not control.cancelled.is_set():
                    log.exception("job %s crashed", job.id)
                self._end_quietly(recorder, control, exc)
        return end

    def _end_quietly(self, recorder: JobRecorder, control: RunControl, exc: Exception) -> None:
        try:
            if control.cancelled.is_set():
                self.finish(recorder, states.CANCELLED, "cancelled by the user")
            else:
                self.finish(recorder, states.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        except Exception:
            log.exception("recording the end of job %s", recorder.job.id)

    def _engine_lost(self, engine: EngineSpec | None) -> str | None:
        """Why the run's engine is gone (then it is marked down), or None if it answers."""
        if self.pool is None or engine is None:
            return None
        reason = self.pool.answers(engine)
        if reason is None:
            return None
        self.pool.mark_down(engine, reason)
        return f"{ENGINE_DOWN}{engine.name} stopped answering ({reason})"


ENGINE_DOWN = "the sandbox engine "   # a lost run's reason that starts so is handed back to the queue


def job_spec(store: Store, job: Job) -> JobSpec:
    """What the pipeline needs to know of a job, read from the store: its parent's result, its ancestors."""
    parent = None
    if job.parent_job_id:
        row = store.get_job(job.parent_job_id)
        parent = ParentResult(row.number, row.title, row.summary, store.get_artifact(row.id, "patch") or "")
    internet = store.get_artifact(job.id, "agent_internet")
    # With the working copy's uncommitted changes: from the commit they were taken against, whatever came since.
    start_patch = store.get_artifact(job.id, START_PATCH) or None
    started_at = (json.loads(store.get_artifact(job.id, UNCOMMITTED) or "{}").get("commit") if start_patch
                  else None)
    review = store.get_artifact(job.id, REVIEW_REQUEST)
    return JobSpec(job_id=job.id, task=job.task, repo=job.repo, ref=started_at or job.ref, setup=job.setup,
                   parent=parent, citable_jobs=frozenset(store.lineage(job)), run=job.fence,
                   agent_internet=json.loads(internet) if internet else None, start_patch=start_patch,
                   review=ReviewRequest.from_json(review) if review else None)
