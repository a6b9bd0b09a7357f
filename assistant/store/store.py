"""The one gateway to storage. Every method opens its own short session, so it is safe from any thread."""
from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, event, func, or_, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..domain.events import JobEventRecord, decode, encode
from ..domain.states import ACTIVE, INTERRUPTED, WAITING, check_transition
from ..procs import process_tag, tag_alive
from .db import init_schema, make_engine
from .models import (Artifact, Element, Feedback, Job, JobEvent, LogChunk, Message, Meta, Notification,
                     SandboxEngine, SteerMessage, Thread, TokenUsage, User, utcnow)


PLACEMENT_LOCK_KEY = 0x61737370  # advisory lock: one placement at a time across processes


class NotFound(LookupError):
    pass


class StaleRun(RuntimeError):
    """A write from a run of a job that no longer owns it (its fence was bumped when the job was retried)."""


# A review job's artifacts a card reads (jobs/review.py), and a coding job's self-review (jobs/self_review.py).
REVIEW_KINDS = ("review_request", "review", "self_review")


@dataclass
class ThreadJobs:
    """A thread's jobs with what their cards show: events, diffs, which have a patch (Store.thread_jobs)."""
    jobs: list[Job]
    events: dict[str, list[JobEvent]]   # job id -> its events in seq order (absent: none)
    diffs: dict[str, str]               # job id -> its diff artifact (absent: none stored)
    patched: set[str]                   # jobs whose patch artifact is not empty
    uncommitted: dict[str, str] = field(default_factory=dict)  # job id -> its 'uncommitted' artifact (jobs/uncommitted.py)
    reviews: dict[tuple[str, str], str] = field(default_factory=dict)  # (job id, kind) -> a review job's request
                                                                        # and result artifacts (jobs/review.py)


def this_runner() -> str:
    return process_tag()


def runner_alive(runner: str | None) -> bool:
    """A job tagged with this very process belongs to an earlier Store of it, never to live work."""
    return bool(runner) and runner != this_runner() and tag_alive(runner)


class Store:
    def __init__(self, url_or_engine: str | Engine):
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.schema_version = init_schema(self.engine)
        self._seq_lock = threading.Lock()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def fenced(self, job_id: str, fence: int) -> "Store":
        """This store as one run of one job sees it: every transaction that commits first checks, holding a
        share lock on the job's row, that the job's fence is still `fence`, else raises StaleRun and writes
        nothing. Retrying the job (requeue_lost) bumps the fence under a row lock, so no write of the old
        run can land after it."""
        view = object.__new__(FencedStore)
        view.__dict__.update(self.__dict__)
        view.fence_of = (job_id, fence)
        return view

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ users
    def get_or_create_user(self, identifier: str, meta: dict | None = None) -> User:
        with self.session() as s:
            user = s.exec(select(User).where(User.identifier == identifier)).first()
            if user:
                return user
            user = User(identifier=identifier, meta=meta or {})
            s.add(user)
            try:
                s.commit()
            except IntegrityError:  # created concurrently by another request
                s.rollback()
                return s.exec(select(User).where(User.identifier == identifier)).one()
            return user

    def get_user(self, identifier: str) -> User | None:
        with self.session() as s:
            return s.exec(select(User).where(User.identifier == identifier)).first()

    def revoke_user(self, identifier: str) -> int:
        """End every session of the user made so far (their login tokens name an older count); the new count."""
        self.get_or_create_user(identifier)
        with self.session() as s:
            s.execute(update(User).where(User.identifier == identifier).values(revoked=User.revoked + 1))
            s.commit()
            return s.exec(select(User.revoked).where(User.identifier == identifier)).one()

    def user_revocations(self, identifier: str) -> int:
        """How often the user's sessions were revoked (0 for a user never seen)."""
        with self.session() as s:
            return s.exec(select(User.revoked).where(User.identifier == identifier)).first() or 0

    # ------------------------------------------------------------------ threads
    def create_thread(self, *, user_id: str | None, thread_id: str | None = None, name: str | None = None,
                      repo: str | None = None, ref: str | None = None) -> Thread:
        thread = Thread(id=thread_id or str(uuid.uuid4()), user_id=user_id, name=name, repo=repo, ref=ref)
        with self.session() as s:
            s.add(thread)
            s.commit()
        return thread

    def get_thread(self, thread_id: str) -> Thread | None:
        with self.session() as s:
            return s.get(Thread, thread_id)

    def update_thread(self, thread_id: str, **fields: Any) -> Thread:
        with self.session() as s:
            thread = s.get(Thread, thread_id)
            if thread is None:
                raise NotFound(f"no thread {thread_id}")
            for key, value in fields.items():
                setattr(thread, key, value)
            thread.updated_at = utcnow()
            s.add(thread)
            s.commit()
            return thread

    def list_threads(self, user_id: str | None, *, search: str | None = None, limit: int = 50,
                     before: datetime | None = None) -> list[Thread]:
        with self.session() as s:
            q = select(Thread).where(Thread.user_id == user_id)
            if search:
                q = q.where(col(Thread.name).ilike(f"%{search}%"))
            if before is not None:
                q = q.where(Thread.updated_at < before)
            return list(s.exec(q.order_by(col(Thread.updated_at).desc()).limit(limit)))

    def delete_thread(self, thread_id: str) -> None:
        with self.session() as s:
            for model in (Message, Element):
                for row in s.exec(select(model).where(model.thread_id == thread_id)):
                    s.delete(row)
            thread = s.get(Thread, thread_id)
            if thread:
                s.delete(thread)
            s.commit()

    # ------------------------------------------------------------------ messages (Chainlit steps)
    def upsert_message(self, message_id: str, thread_id: str, **fields: Any) -> None:
        """Create or update a message (fields that are None are left as they are, except output) and touch
        its thread. Two statements and a commit, no rows loaded: the web app writes a step this way for
        every update of every job card."""
        values = {key: value for key, value in fields.items() if value is not None or key == "output"}
        try:
            self._upsert_message(message_id, thread_id, values)
        except IntegrityError:  # a concurrent write created the row between our update and insert
            self._upsert_message(message_id, thread_id, values)

    def _upsert_message(self, message_id: str, thread_id: str, values: dict[str, Any]) -> None:
        with self.session() as s:
            found = s.exec(update(Message).where(col(Message.id) == message_id)
                           .values(**(values or {"id": message_id}))).rowcount
            if not found:
                s.add(Message(id=message_id, thread_id=thread_id, **values))
            s.exec(update(Thread).where(col(Thread.id) == thread_id).values(updated_at=utcnow()))
            s.commit()

    def get_message(self, message_id: str) -> Message | None:
        with self.session() as s:
            return s.get(Message, message_id)

    def list_messages(self, thread_id: str) -> list[Message]:
        with self.session() as s:
            q = select(Message).where(Message.thread_id == thread_id).order_by(col(Message.created_at))
            return list(s.exec(q))

    def delete_message(self, message_id: str) -> None:
        with self.session() as s:
            msg = s.get(Message, message_id)
            if msg:
                s.delete(msg)
                s.commit()

    # ------------------------------------------------------------------ elements and feedback
    def upsert_element(self, element: Element) -> None:
        with self.session() as s:
            s.merge(element)
            s.commit()

    def get_element(self, element_id: str) -> Element | None:
        with self.session() as s:
            return s.get(Element, element_id)

    def list_elements(self, thread_id: str) -> list[Element]:
        with self.session() as s:
            return list(s.exec(select(Element).where(Element.thread_id == thread_id)))

    def delete_element(self, element_id: str) -> None:
        with self.session() as s:
            row = s.get(Element, element_id)
            if row:
                s.delete(row)
                s.commit()

    def upsert_feedback(self, feedback: Feedback) -> str:
        with self.session() as s:
            s.merge(feedback)
            s.commit()
        return feedback.id

    def delete_feedback(self, feedback_id: str) -> bool:
        with self.session() as s:
            row = s.get(Feedback, feedback_id)
            if row is None:
                return False
            s.delete(row)
            s.commit()
            return True

    def feedback_for(self, step_ids: Iterable[str]) -> dict[str, Feedback]:
        ids = list(step_ids)
        if not ids:
            return {}
        with self.session() as s:
            return {f.for_id: f for f in s.exec(select(Feedback).where(col(Feedback.for_id).in_(ids)))}

    # ------------------------------------------------------------------ jobs
    def create_job(self, *, task: str, repo: str, thread_id: str | None = None,
                   in_transaction: Callable[[Any, Job], None] | None = None, artifacts: dict[str, str] | None = None,
                   **fields: Any) -> Job:
        """A new job, with its first `artifacts` (kind -> content); `in_transaction(dbapi_connection, job)` runs
        in the same transaction before it commits (the durable queue enqueues the job there, so a job exists
        exactly when its queue entry does, and a worker that claims it finds its artifacts)."""
        with self._seq_lock, self.session() as s:
            number = 1
            if thread_id:
                number = (s.exec(select(func.max(Job.number)).where(Job.thread_id == thread_id)).one() or 0) + 1
            job = Job(id=fields.pop("id", None) or secrets.token_hex(4), task=task, repo=repo, thread_id=thread_id,
                      number=number, queued_at=utcnow(), runner=fields.pop("runner", None) or this_runner(), **fields)
            s.add(job)
            for kind, content in (artifacts or {}).items():
                s.add(Artifact(job_id=job.id, kind=kind, content=content, created_at=utcnow()))
            if in_transaction is not None:
                s.flush()
                in_transaction(s.connection().connection.driver_connection, job)
            s.commit()
            return job

    def get_job(self, job_id: str) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            return job

    def lineage(self, job: Job) -> set[str]:
        """The job and every job it follows (a follow-up's parent, that one's parent, …): the jobs whose logs and
        results are part of its story. Stops at a loop or a missing row."""
        ids = {job.id}
        parent = job.parent_job_id
        with self.session() as s:
            while parent and parent not in ids:
                ids.add(parent)
                row = s.get(Job, parent)
                parent = row.parent_job_id if row is not None else None
        return ids

    def find_jobs(self, ref: str, *, thread_id: str | None = None, limit: int = 20) -> list[Job]:
        """The jobs `ref` may name, oldest first: the job whose full id it is; else every job whose id starts with it
        and, when it is a number, every job of a conversation numbered so there (the web app's "Job 2"). Only the
        jobs of `thread_id` when given. The caller refuses more than one."""
        ref = ref.strip()
        if not ref:
            return []
        with self.session() as s:
            exact = s.get(Job, ref)
            if exact is not None and (thread_id is None or exact.thread_id == thread_id):
                return [exact]
            named = col(Job.id).startswith(ref)
            if ref.isdigit():
                named = or_(named, (Job.number == int(ref)) & col(Job.thread_id).is_not(None))
            q = select(Job).where(named)
            if thread_id is not None:
                q = q.where(Job.thread_id == thread_id)
            return list(s.exec(q.order_by(col(Job.created_at)).limit(limit)))

    def find_threads(self, ref: str, *, limit: int = 20) -> list[Thread]:
        """The conversations `ref` may name: the one whose full id it is; else those whose id starts with it or whose
        name it is (any case). The caller refuses more than one."""
        ref = ref.strip()
        if not ref:
            return []
        with self.session() as s:
            exact = s.get(Thread, ref)
            if exact is not None:
                return [exact]
            q = select(Thread).where(or_(col(Thread.id).startswith(ref), func.lower(Thread.name) == ref.lower()))
            return list(s.exec(q.order_by(col(Thread.created_at)).limit(limit)))

    def list_jobs(self, *, thread_id: str | None = None, user_id: str | None = None,
                  states: Iterable[str] | None = None, group_id: str | None = None, limit: int = 200) -> list[Job]:
        with self.session() as s:
            q = select(Job)
            if thread_id is not None:
                q = q.where(Job.thread_id == thread_id)
            if user_id is not None:
                q = q.where(Job.user_id == user_id)
            if group_id is not None:
                q = q.where(Job.group_id == group_id)
            if states is not None:
                q = q.where(col(Job.state).in_(list(states)))
            return list(s.exec(q.order_by(col(Job.created_at)).limit(limit)))

    def recent_jobs(self, user_id: str, since: datetime, limit: int = 100) -> list[Job]:
        """The user's conversation jobs that have not ended or ended after `since`, newest first (what a page polls
        for its job notifications)."""
        from ..domain import states as job_states
        with self.session() as s:
            q = select(Job).where(Job.user_id == user_id, col(Job.thread_id).is_not(None)).where(
                col(Job.state).not_in(list(job_states.TERMINAL)) | (col(Job.finished_at) >= since))
            return list(s.exec(q.order_by(col(Job.created_at).desc()).limit(limit)))

    def thread_jobs(self, thread_id: str) -> ThreadJobs:
        """All jobs of a thread with their events, diffs, uncommitted-changes notes, review artifacts and whether they have a patch, in three queries
        whatever the number of jobs: a reopened thread renders every job card from it."""
        in_thread = select(Job.id).where(Job.thread_id == thread_id)
        with self.session() as s:
            jobs = list(s.exec(select(Job).where(Job.thread_id == thread_id).order_by(col(Job.created_at))))
            events: dict[str, list[JobEvent]] = {}
            for ev in s.exec(select(JobEvent).where(col(JobEvent.job_id).in_(in_thread))
                             .order_by(col(JobEvent.job_id), col(JobEvent.seq))):
                events.setdefault(ev.job_id, []).append(ev)
            diffs: dict[str, str] = {}
            patched: set[str] = set()
            seen: set[tuple[str, str]] = set()
            # The diff's text, but only the patch's presence (a patch can be large and the card links to it).
            uncommitted: dict[str, str] = {}
            reviews: dict[tuple[str, str], str] = {}
            rows = s.exec(select(Artifact.job_id, Artifact.kind,
                                 case((col(Artifact.kind).in_(["diff", "uncommitted", *REVIEW_KINDS]), Artifact.content),
                                      else_=None),
                                 func.length(Artifact.content) > 0)
                          .where(col(Artifact.job_id).in_(in_thread),
                                 col(Artifact.kind).in_(["diff", "patch", "uncommitted", *REVIEW_KINDS]))
                          .order_by(col(Artifact.id)))
            for job_id, kind, content, non_empty in rows:
                if (job_id, kind) in seen:  # get_artifact reads the first row of a kind
                    continue
                seen.add((job_id, kind))
                if kind == "diff":
                    diffs[job_id] = content or ""
                elif kind == "uncommitted":
                    uncommitted[job_id] = content or ""
                elif kind in REVIEW_KINDS:
                    reviews[(job_id, kind)] = content or ""
                elif non_empty:
                    patched.add(job_id)
        return ThreadJobs(jobs, events, diffs, patched, uncommitted, reviews)

    def job_ids_in_state(self, job_ids: Iterable[str], state: str) -> set[str]:
        """Which of these jobs are in `state`: one query for a watcher that polls many jobs at once."""
        ids = list(job_ids)
        if not ids:
            return set()
        with self.session() as s:
            return set(s.exec(select(Job.id).where(col(Job.id).in_(ids), Job.state == state)))

    def update_job(self, job_id: str, **fields: Any) -> Job:
        if "state" in fields:
            raise ValueError("change a job's state with transition()")
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            for key, value in fields.items():
                setattr(job, key, value)
            s.add(job)
            s.commit()
            return job

    def add_job_tokens(self, job_id: str, prompt: int, completion: int, steps: int = 0) -> None:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job:
                job.prompt_tokens += prompt
                job.completion_tokens += completion
                job.steps += steps
                s.add(job)
                s.commit()

    def transition(self, job_id: str, state: str, reason: str | None = None) -> Job:
        """Move a job along the state machine; an illegal move raises IllegalTransition and changes nothing."""
        with self._seq_lock, self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            check_transition(job_id, job.state, state)
            job.state = state
            now = utcnow()
            stamp = f"{state}_at"
            if hasattr(job, stamp) and getattr(job, stamp) is None:  # running again after waiting: still the first
                setattr(job, stamp, now)
            if state in ("succeeded", "failed", "cancelled", "interrupted"):
                job.finished_at = now
            if reason is not None:
                job.reason = reason
            s.add(job)
            s.commit()
            return job

    def requeue_lost(self, job_id: str, fence: int, reason: str, *, max_runs: int,
                     in_transaction: Callable[[Any, Job], None] | None = None) -> Job | None:
        """A run of an active job was lost (its worker or engine died). If `fence` is still the job's, move it back
        to queued with the next fence (once per job: up to `max_runs` runs), or end it interrupted when its runs are
        used up; `in_transaction(dbapi_connection, job)` enqueues the new run in the same transaction. Returns the
        job as it now is, or None when the run was not the job's current one (someone else handled it)."""
        with self._seq_lock, self.session() as s:
            job = s.exec(select(Job).where(Job.id == job_id).with_for_update()).first()
            if job is None or job.fence != fence or job.state not in ACTIVE:
                return None
            now = utcnow()
            job.reason = reason
            if fence < max_runs:
                job.fence, job.state, job.queued_at = fence + 1, "queued", now
                job.preparing_at = job.setting_up_at = job.running_at = None
                job.runner = job.engine = job.container = None
            else:
                job.fence, job.state, job.finished_at = fence + 1, INTERRUPTED, now
            s.add(job)
            if in_transaction is not None and job.state == "queued":
                s.flush()
                in_transaction(s.connection().connection.driver_connection, job)
            s.commit()
            return job

    def place_job(self, job_id: str, fence: int, choose: Callable[[dict[str, int]], str | None]) -> str | None:
        """Record on the job the sandbox engine `choose` picks from the number of active jobs on each engine;
        counting and recording are one transaction, serialised across processes, so capacity holds."""
        with self._seq_lock, self.session() as s:
            if self.engine.dialect.name == "postgresql":
                s.exec(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=PLACEMENT_LOCK_KEY))
            job = s.exec(select(Job).where(Job.id == job_id).with_for_update()).first()
            if job is None or job.fence != fence:
                raise StaleRun(f"job {job_id} is no longer on run {fence}")
            counted = s.exec(select(Job.engine, func.count()).where(
                col(Job.state).in_(list(ACTIVE)), col(Job.engine).is_not(None), Job.id != job_id).group_by(Job.engine))
            loads = {engine: count for engine, count in counted.all()}
            chosen = choose(loads)
            if chosen is not None:
                job.engine, job.container = chosen, None
                s.add(job)
                s.commit()
            return chosen

    def deployment_id(self) -> str:
        """This database's id, made once: labelled on sandboxes so sweeps never touch another deployment's."""
        with self.session() as s:
            row = s.get(Meta, "deployment_id")
            if row is None:
                s.add(Meta(key="deployment_id", value=secrets.token_hex(6)))
                try:
                    s.commit()
                except IntegrityError:  # another process made it first
                    s.rollback()
                row = s.get(Meta, "deployment_id")
            return row.value

    def engine_states(self) -> dict[str, SandboxEngine]:
        with self.session() as s:
            return {row.name: row for row in s.exec(select(SandboxEngine))}

    def set_engine_state(self, name: str, state: str, reason: str | None = None) -> bool:
        """Record an engine's state; True when it changed."""
        with self.session() as s:
            existing = s.get(SandboxEngine, name)
            changed = existing is None or existing.state != state
            row = existing or SandboxEngine(name=name)
            row.state, row.reason, row.checked_at = state, reason, utcnow()
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # another worker recorded it at the same moment
                s.rollback()
                return False
            return changed

    def interrupt_orphaned_jobs(self, reason: str = "the server stopped while this job was active; retry it") -> list[str]:
        """At start-up: active jobs whose runner process is gone (or unknown) are interrupted.
        Jobs of a live process on this host (a server beside a CLI run) are left alone."""
        orphans = [j for j in self.list_jobs(states=ACTIVE, limit=100_000) if not runner_alive(j.runner)]
        for job in orphans:
            said = reason
            if job.state == WAITING:  # its question goes unanswered: the retry asks it again
                said = (f"{reason} (it was waiting for your answer to its agent's question; a retry starts over "
                        "and may ask again)")
            self.transition(job.id, INTERRUPTED, said)
        return [j.id for j in orphans]

    # ------------------------------------------------------------------ events
    def add_event(self, job_id: str, kind: str, data: dict[str, Any] | None = None) -> JobEvent:
        for _ in range(20):  # another process may take the same next seq; the unique (job, seq) makes us retry
            with self._seq_lock, self.session() as s:
                last = s.exec(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id)).one()
                ev = JobEvent(job_id=job_id, seq=(last or 0) + 1, kind=kind, data=data or {})
                s.add(ev)
                try:
                    s.commit()
                    return ev
                except IntegrityError:
                    s.rollback()
        raise RuntimeError(f"could not number an event of job {job_id}")

    def list_events(self, job_id: str, after_seq: int = 0) -> list[JobEvent]:
        with self.session() as s:
            q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
            return list(s.exec(q.order_by(col(JobEvent.seq))))

    def append_event(self, job_id: str, event: JobEventRecord) -> JobEvent:
        """Store a typed job event in its one encoding (assistant/domain/events.py)."""
        kind, data = encode(event)
        return self.add_event(job_id, kind, data)

    def read_events(self, job_id: str, after_seq: int = 0) -> list[JobEventRecord]:
        """A job's stored events, decoded (rows of any earlier release included)."""
        return [decode(row.kind, row.data) for row in self.list_events(job_id, after_seq)]

    # ------------------------------------------------------------------ log chunks
    def add_chunk(self, *, job_id: str | None, command: str, text: str, exit_code: int | None,
                  phase: str = "agent", duration_s: float = 0.0, truncated: bool = False,
                  timed_out: bool = False) -> LogChunk:
        lines = text.splitlines()
        for _ in range(20):
            chunk = LogChunk(id=secrets.token_hex(3), job_id=job_id, phase=phase, command=command,
                             exit_code=exit_code, timed_out=timed_out, duration_s=duration_s, text=text,
                             line_count=len(lines), truncated=truncated)
            with self.session() as s:
                s.add(chunk)
                try:
                    s.commit()
                    return chunk
                except IntegrityError:  # 6 hex digits collide now and then
                    s.rollback()
        raise RuntimeError("could not allocate a log chunk id")

    def get_chunk(self, chunk_id: str) -> LogChunk | None:
        with self.session() as s:
            return s.get(LogChunk, chunk_id)

    def list_chunks(self, job_id: str) -> list[LogChunk]:
        with self.session() as s:
            q = select(LogChunk).where(LogChunk.job_id == job_id).order_by(col(LogChunk.created_at))
            return list(s.exec(q))

    # ------------------------------------------------------------------ artifacts
    def put_artifact(self, job_id: str, kind: str, content: str) -> None:
        with self.session() as s:
            row = s.exec(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind)).first()
            row = row or Artifact(job_id=job_id, kind=kind)
            row.content = content
            row.created_at = utcnow()
            s.add(row)
            s.commit()

    def has_artifact(self, job_id: str, kind: str) -> bool:
        """Whether the job has a non-empty artifact of this kind, without reading it."""
        with self.session() as s:
            q = select(Artifact.id).where(Artifact.job_id == job_id, Artifact.kind == kind,
                                          func.length(Artifact.content) > 0)
            return s.exec(q.limit(1)).first() is not None

    def get_artifact(self, job_id: str, kind: str) -> str | None:
        with self.session() as s:
            row = s.exec(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind)).first()
            return row.content if row else None

    # ------------------------------------------------------------------ token usage
    def record_usage(self, *, role: str, model: str, prompt_tokens: int, completion_tokens: int,
                     job_id: str | None = None, thread_id: str | None = None) -> None:
        with self.session() as s:
            s.add(TokenUsage(job_id=job_id, thread_id=thread_id, role=role, model=model,
                             prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
            s.commit()

    def usage_totals(self, *, job_id: str | None = None, thread_id: str | None = None) -> tuple[int, int]:
        with self.session() as s:
            q = select(func.coalesce(func.sum(TokenUsage.prompt_tokens), 0),
                       func.coalesce(func.sum(TokenUsage.completion_tokens), 0))
            if job_id is not None:
                q = q.where(TokenUsage.job_id == job_id)
            if thread_id is not None:
                q = q.where(TokenUsage.thread_id == thread_id)
            prompt, completion = s.exec(q).one()
            return int(prompt), int(completion)

    def usage_by_model(self, *, job_ids: Iterable[str] = (), thread_id: str | None = None) -> list[tuple[str, str, int, int]]:
        """(role, model, prompt tokens, completion tokens) summed per role and model over the given jobs'
        requests and, with ``thread_id``, the thread's own (routing, answers): one conversation's usage."""
        conditions = []
        ids = list(job_ids)
        if ids:
            conditions.append(col(TokenUsage.job_id).in_(ids))
        if thread_id is not None:
            conditions.append(TokenUsage.thread_id == thread_id)
        if not conditions:
            return []
        with self.session() as s:
            q = (select(TokenUsage.role, TokenUsage.model, func.sum(TokenUsage.prompt_tokens),
                        func.sum(TokenUsage.completion_tokens))
                 .where(or_(*conditions)).group_by(TokenUsage.role, TokenUsage.model)
                 .order_by(TokenUsage.role, TokenUsage.model))
            return [(role, model, int(p or 0), int(c or 0)) for role, model, p, c in s.exec(q)]

    # ------------------------------------------------------------------ notifications (assistant/notify)
    def add_notifications(self, job_id: str, event: str, urls: Iterable[str], payload: dict[str, Any]) -> list[str]:
        """Record a pending notification of a job's event for each URL; one already recorded for the same
        (job, event, url), by this process or any other, is left as it is. The ids of the new ones."""
        made = []
        for url in urls:
            row = Notification(job_id=job_id, event=event, url=url, payload=payload)
            with self.session() as s:
                s.add(row)
                try:
                    s.commit()
                except IntegrityError:  # recorded before: at most one delivery per (job, event, url)
                    s.rollback()
                    continue
            made.append(row.id)
        return made

    def list_notifications(self, job_id: str) -> list[Notification]:
        with self.session() as s:
            return list(s.exec(select(Notification).where(Notification.job_id == job_id)
                               .order_by(col(Notification.created_at), col(Notification.url))))

    def due_notifications(self, now: datetime, limit: int = 20) -> list[Notification]:
        """Pending notifications whose time has come, oldest first."""
        with self.session() as s:
            return list(s.exec(select(Notification).where(Notification.state == "pending",
                                                          col(Notification.next_at) <= now)
                               .order_by(col(Notification.next_at)).limit(limit)))

    def next_notification_due(self) -> datetime | None:
        with self.session() as s:
            return s.exec(select(func.min(Notification.next_at)).where(Notification.state == "pending")).one()

    def claim_notification(self, notification_id: str, by: str, now: datetime) -> Notification | None:
        """Take a pending notification for one attempt (counted now); None if another process took it first."""
        with self.session() as s:
            taken = s.execute(update(Notification)
                              .where(Notification.id == notification_id, Notification.state == "pending")
                              .values(state="sending", attempts=Notification.attempts + 1, claimed_by=by,
                                      claimed_at=now)).rowcount
            s.commit()
            return s.get(Notification, notification_id) if taken == 1 else None

    def end_notification_attempt(self, notification_id: str, *, state: str, now: datetime,
                                 status: int | None = None, error: str | None = None,
                                 next_at: datetime | None = None) -> None:
        """How the attempt went: delivered, failed (no more tries) or pending again (tried again at next_at)."""
        values: dict[str, Any] = dict(state=state, last_status=status, last_error=error, claimed_by=None)
        if state == "delivered":
            values["delivered_at"] = now
        if next_at is not None:
            values["next_at"] = next_at
        with self.session() as s:
            s.execute(update(Notification).where(Notification.id == notification_id,
                                                 Notification.state == "sending").values(**values))
            s.commit()

    def abandon_notifications(self, claimed_before: datetime, error: str) -> int:
        """Attempts under way since before `claimed_before` belong to a process that stopped during them: they
        end failed, never sent again (the receiver may have had it; a delivery is made at most once)."""
        with self.session() as s:
            count = s.execute(update(Notification)
                              .where(Notification.state == "sending", col(Notification.claimed_at) < claimed_before)
                              .values(state="failed", last_error=error, claimed_by=None)).rowcount
            s.commit()
            return count

    # ------------------------------------------------------------------ steering messages (jobs/steering.py)
    def add_steer_message(self, job_id: str, text: str, *, now: bool = False, user_id: str | None = None) -> SteerMessage:
        row = SteerMessage(job_id=job_id, text=text, now=now, user_id=user_id)
        with self.session() as s:
            s.add(row)
            s.commit()
        return row

    def queued_steer_messages(self, job_id: str) -> list[SteerMessage]:
        """The job's messages its agent has not read yet, oldest first: one query on the (job, state) index, made
        by the run at every step."""
        with self.session() as s:
            return list(s.exec(select(SteerMessage).where(SteerMessage.job_id == job_id, SteerMessage.state == "queued")
                               .order_by(col(SteerMessage.created_at))))

    def list_steer_messages(self, job_id: str) -> list[SteerMessage]:
        with self.session() as s:
            return list(s.exec(select(SteerMessage).where(SteerMessage.job_id == job_id)
                               .order_by(col(SteerMessage.created_at))))

    def mark_steer_delivered(self, message_ids: Iterable[str], *, step: int | None, how: str,
                             stopped: str | None = None) -> int:
        """Queued messages reached the agent at `step`; how many were still queued (a message is delivered once)."""
        ids = list(message_ids)
        if not ids:
            return 0
        with self.session() as s:
            count = s.execute(update(SteerMessage)
                              .where(col(SteerMessage.id).in_(ids), SteerMessage.state == "queued")
                              .values(state="delivered", delivered_at=utcnow(), delivered_step=step, delivered_how=how,
                                      stopped=stopped)).rowcount
            s.commit()
            return count

    def mark_steer_acknowledged(self, message_ids: Iterable[str], excerpt: str) -> int:
        ids = list(message_ids)
        if not ids:
            return 0
        with self.session() as s:
            count = s.execute(update(SteerMessage)
                              .where(col(SteerMessage.id).in_(ids), SteerMessage.state == "delivered")
                              .values(state="acknowledged", acknowledged_at=utcnow(), ack_excerpt=excerpt)).rowcount
            s.commit()
            return count

    def drop_steer_messages(self, job_id: str) -> int:
        """The job ended: messages its agent never read are dropped (the receipt says so)."""
        with self.session() as s:
            count = s.execute(update(SteerMessage)
                              .where(SteerMessage.job_id == job_id, SteerMessage.state == "queued")
                              .values(state="dropped")).rowcount
            s.commit()
            return count


class FencedStore(Store):
    """See Store.fenced."""

    fence_of: tuple[str, int]

    def session(self) -> Session:
        session = super().session()
        event.listen(session, "before_commit", self._check_fence)
        return session

    def _check_fence(self, session: Session) -> None:
        job_id, fence = self.fence_of
        current = session.exec(select(Job.fence).where(Job.id == job_id).with_for_update(read=True)).first()
        if current != fence:
            raise StaleRun(f"job {job_id} is now on run {current}; this run ({fence}) may no longer write")
