"""The job manager: a queue with a concurrency limit, one worker thread per running job, cancel,
retry, best-of-N groups, and an event feed that any number of subscribers (web app, CLI) follow.

Jobs are keyed by id and thread id, never by a browser session; every update is written to the
store before subscribers hear of it, so a reopened conversation rebuilds from the store alone.
"""
from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..agent.agents_md import commands_in, discover_agents_md
from ..agent.citations import check_citations, find_citations
from ..agent.loop import Agent, AgentBudgets, AgentResult
from ..agent.tools import ToolEnv
from ..config import Settings
from ..llm.client import ModelClient
from ..sandbox import PrepareRequest, SandboxConfig, SandboxError, SetupFailed, prepare
from ..sandbox.diff import workspace_diff
from ..store import Job, Store
from . import states
from .events import (DiffComputed, Finished, GroupRanked, JobEventRecord, JobUpdate, Notice, OutputDelta,
                     SetupCommandRan, StateChanged, SummaryWritten, decode)

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


Subscriber = Callable[[JobUpdate], None]


def sandbox_config(settings: Settings) -> SandboxConfig:
    return SandboxConfig(
        data_dir=settings.data_dir, backend=settings.sandbox_backend, image=settings.sandbox_image,
        memory_mb=settings.sandbox_memory_mb, cpus=settings.sandbox_cpus, pids_limit=settings.sandbox_pids,
        job_wall_clock_s=settings.job_max_seconds, ca_bundle=settings.sandbox_ca_bundle,
        cache_enabled=settings.setup_cache, cache_max_entries=settings.setup_cache_size,
        maintenance_command=settings.maintenance_command, allow_setup_failure=settings.allow_setup_failure,
        allow_weaker_fallback=settings.allow_weaker_fallback, setup_secrets=settings.setup_secret_values(),
        diff_file_cap_bytes=int(settings.diff_file_cap_mb * 1e6), diff_patch_cap_bytes=int(settings.diff_patch_cap_mb * 1e6))


class JobManager:
    def __init__(self, settings: Settings, store: Store, model: ModelClient):
        self.settings = settings
        self.store = store
        self.model = model
        self.sandbox_config = sandbox_config(settings)
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_jobs, thread_name_prefix="job")
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}
        self._finished: dict[str, threading.Event] = {}
        self._sandboxes: dict[str, Any] = {}
        self._subscribers: list[Subscriber] = []
        self._closed = threading.Event()
        self._stopping = False
        threading.Thread(target=self._watch_external_cancels, name="job-cancel-watch", daemon=True).start()

    # ------------------------------------------------------------------ public API
    def submit(self, req: JobRequest) -> list[Job]:
        if not req.task.strip():
            raise ValueError("a job needs a task")
        attempts = max(1, min(int(req.attempts), 8))
        group = secrets.token_hex(4) if attempts > 1 else None
        title = req.title or req.task.strip().splitlines()[0][:80]
        jobs = []
        for attempt in range(1, attempts + 1):
            job = self.store.create_job(
                task=req.task, repo=req.repo, ref=req.ref, setup=req.setup, thread_id=req.thread_id,
                user_id=req.user_id, parent_job_id=req.parent_job_id, title=title, group_id=group,
                attempt=attempt, attempts=attempts, model=self.model.model_for("agent"))
            with self._lock:
                self._cancel[job.id] = threading.Event()
                self._finished[job.id] = threading.Event()
            self._emit(job, StateChanged(states.QUEUED, attempt=attempt, attempts=attempts))
            jobs.append(job)
        for job in jobs:
            self._pool.submit(self._run_guarded, job.id)
        return jobs

    def cancel(self, job_id: str) -> bool:
        job = self.store.get_job(job_id)
        with self._lock:
            event = self._cancel.get(job_id)
            sandbox = self._sandboxes.get(job_id)
        if job.state in states.TERMINAL and not (job.state == states.CANCELLED and event is not None):
            return False
        if event is None:  # not ours (another process, or before a restart): just record it
            self._finish(job, states.CANCELLED, "cancelled by the user")
            return True
        event.set()
        if job.state == states.QUEUED:
            self._finish(job, states.CANCELLED, "cancelled by the user before it started")
        elif sandbox is not None:
            try:  # kills whatever command is running; the worker then sees the cancel flag
                sandbox.close()
            except Exception:
                log.exception("closing the sandbox of %s", job_id)
        return True

    def retry(self, job_id: str) -> list[Job]:
        job = self.store.get_job(job_id)
        return self.submit(JobRequest(task=job.task, repo=job.repo, ref=job.ref, setup=job.setup, attempts=1,
                                      thread_id=job.thread_id, user_id=job.user_id,
                                      parent_job_id=job.parent_job_id, title=job.title))

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

    def shutdown(self, cancel_running: bool = True) -> None:
        self._closed.set()
        self._stopping = True
        if cancel_running:
            for job_id in list(self._cancel):
                try:
                    self.cancel(job_id)
                except Exception:
                    log.exception("cancelling %s at shutdown", job_id)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _watch_external_cancels(self) -> None:
        """`assistant jobs cancel` from another process only writes the store; notice it and stop the work."""
        while not self._closed.wait(1.0):
            with self._lock:
                mine = [job_id for job_id, ev in self._cancel.items() if not ev.is_set()]
            for job_id in mine:
                try:
                    if self.store.get_job(job_id).state == states.CANCELLED:
                        self.cancel(job_id)
                except Exception:
                    log.exception("checking %s for an external cancel", job_id)

    # ------------------------------------------------------------------ events
    def _emit(self, job: Job, event: JobEventRecord) -> None:
        row = self.store.append_event(job.id, event) if event.stored else None
        update = JobUpdate(job.id, job.thread_id, event, row.seq if row else None, row.created_at if row else None)
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(update)
            except Exception:  # a broken subscriber must not break the job
                log.exception("job subscriber failed")

    def _transition(self, job: Job, state: str, reason: str | None = None) -> Job:
        job = self.store.transition(job.id, state, reason)
        self._emit(job, StateChanged(state, reason))
        return job

    def _finish(self, job: Job, state: str, reason: str) -> None:
        current = self.store.get_job(job.id)
        if current.state in states.TERMINAL:
            return
        if state == states.CANCELLED and self._stopping:  # nobody cancelled it: the server is going away
            state, reason = states.INTERRUPTED, "the server shut down while this job was active; retry it"
        job = self._transition(current, state, reason)
        if job.group_id:
            self._rank_group_if_complete(job.group_id)
        self._emit(job, Finished(state, reason))
        with self._lock:
            done = self._finished.get(job.id)
        if done:
            done.set()

    # ------------------------------------------------------------------ the work
    def _run_guarded(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        try:
            if job.state != states.QUEUED or self._cancel[job_id].is_set():
                return
            self._run(job)
        except Exception as exc:  # whatever happens, the job ends in a defined state with the reason
            if self._cancel.get(job_id) is not None and self._cancel[job_id].is_set():
                self._finish(job, states.CANCELLED, "cancelled by the user")
            else:
                log.exception("job %s crashed", job_id)
                self._finish(job, states.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                sandbox = self._sandboxes.pop(job_id, None)
                self._cancel.pop(job_id, None)
                done = self._finished.get(job_id)
            if sandbox is not None:
                try:
                    sandbox.close()
                except Exception:
                    log.exception("closing sandbox of %s", job_id)
            if done:
                done.set()

    def _run(self, job: Job) -> None:
        cancel = self._cancel[job.id]
        job = self._transition(job, states.PREPARING)

        def on_state(state: str) -> None:
            nonlocal job
            if state == states.SETTING_UP and job.state == states.PREPARING:
                job = self._transition(job, states.SETTING_UP)

        def on_command(command: str, result) -> None:
            chunk = self.store.add_chunk(job_id=job.id, phase="setup", command=command, text=result.output,
                                         exit_code=result.exit_code, duration_s=result.duration_s,
                                         truncated=result.truncated, timed_out=result.timed_out)
            self._emit(job, SetupCommandRan(command, chunk.id, result.exit_code, round(result.duration_s, 3),
                                            chunk.line_count))

        def on_output(text: str) -> None:
            self._emit(job, OutputDelta(text))

        try:
            prepared = prepare(PrepareRequest(job_id=job.id, repo=job.repo, ref=job.ref, setup=job.setup),
                               self.sandbox_config, on_state=on_state, on_command=on_command, on_output=on_output)
        except SetupFailed as exc:
            chunks = [c for c in self.store.list_chunks(job.id) if c.phase == "setup"]
            cite = f" 【{chunks[-1].id}†L1-L{max(chunks[-1].line_count, 1)}】" if chunks else ""
            self._finish(job, states.FAILED, f"{exc}{cite}")
            return
        except SandboxError as exc:
            self._finish(job, states.CANCELLED if cancel.is_set() else states.FAILED, str(exc))
            return
        with self._lock:
            self._sandboxes[job.id] = prepared.sandbox
        job = self.store.update_job(job.id, backend=prepared.backend, base_commit=prepared.base_commit,
                                    setup_network=prepared.setup_network, agent_network=prepared.agent_network,
                                    cache_hit=prepared.cache_hit)
        if prepared.backend_fallback:
            self._emit(job, Notice(prepared.backend_fallback, level="warning"))
        touched = sorted(prepared.setup_changes.get("modified") or {})
        if touched:
            self._emit(job, Notice("setup changed tracked files (left out of the diff unless the agent changed them "
                                   "again): " + ", ".join(touched[:20])))
        if cancel.is_set():
            self._finish(job, states.CANCELLED, "cancelled by the user")
            return
        sandbox = prepared.sandbox
        context = self._context_for(job, prepared)
        job = self._transition(job, states.RUNNING)
        instructions = discover_agents_md(lambda paths: _read_in_sandbox(sandbox, paths))
        env = ToolEnv(sandbox, self.store, job.id, command_timeout_s=self.settings.command_timeout_s,
                      on_output=on_output, test_commands=commands_in(instructions))
        agent = Agent(self.model, env, budgets=AgentBudgets(
            max_steps=self.settings.job_max_steps, max_seconds=self.settings.job_max_seconds,
            max_tokens=self.settings.job_max_tokens, context_window=self.settings.context_window),
            protocol=self.settings.tool_protocol, job_id=job.id, cancel=cancel,
            on_event=lambda kind, data: self._emit(job, decode(kind, data)))
        result = agent.run(job.task, context=context, instructions=instructions)
        self.store.add_job_tokens(job.id, result.prompt_tokens, result.completion_tokens, result.steps)
        self._conclude(job, result, prepared, cancelled=cancel.is_set())

    def _context_for(self, job: Job, prepared) -> str:
        parts = []
        if prepared.failed_setup:
            command, res = prepared.failed_setup
            chunk = [c for c in self.store.list_chunks(job.id) if c.phase == "setup"][-1:]
            parts.append(f"Note: the setup command `{command}` failed with exit code {res.exit_code}"
                         + (f" (its output is chunk {chunk[0].id})" if chunk else "") + "; the environment may be incomplete.")
        elif prepared.setup_commands:
            parts.append("Setup already ran: " + "; ".join(f"`{c}`" for c in prepared.setup_commands))
        if job.parent_job_id:
            parts.append(self._apply_parent(job, prepared.sandbox))
        return "\n\n".join(parts)

    def _apply_parent(self, job: Job, sandbox) -> str:
        """A follow-up job starts from its parent's result: the parent's patch is applied first, in the sandbox."""
        parent = self.store.get_job(job.parent_job_id)
        patch = self.store.get_artifact(parent.id, "patch") or ""
        if patch.strip():
            reply = sandbox.call("apply_parent_patch", patch_b64=base64.b64encode(patch.encode()).decode())
            if not reply["ok"]:
                self._emit(job, Notice(f"job {parent.number}'s patch did not apply here ({reply['error'][:300]}); "
                                       "the job starts from the repository as it is", level="warning"))
                return (f"This job follows job {parent.number}, but its patch did not apply here "
                        f"({reply['error'][:300]}); start from the repository as it is.")
        return (f"This job follows job {parent.number} (\"{parent.title}\"), whose changes are already applied "
                f"in the workspace (uncommitted; `git diff` shows them). Its summary was:\n{parent.summary or '(none)'}")

    def _conclude(self, job: Job, result: AgentResult, prepared, cancelled: bool) -> None:
        config = self.sandbox_config
        notes: list[str] = []
        try:
            diff = workspace_diff(prepared.sandbox, prepared.base_commit, prepared.setup_changes,
                                  file_cap=config.diff_file_cap_bytes, patch_cap=config.diff_patch_cap_bytes)
            self.store.put_artifact(job.id, "diff", diff.display)
            self.store.put_artifact(job.id, "patch", diff.patch)
            files = [list(f) for f in diff.files]
            notes = diff.notes()
        except Exception as exc:  # a dead container must not cost the summary
            log.warning("diff of %s failed: %s", job.id, exc)
            files = []
            self.store.put_artifact(job.id, "diff", f"(the diff could not be computed: {exc})")
        citations = self._check_citations(job, result.summary, prepared.sandbox)
        diff_lines = sum(1 for line in (self.store.get_artifact(job.id, "diff") or "").splitlines()
                         if line[:1] in "+-" and not line.startswith(("+++", "---")))
        last_test = result.tests[-1] if result.tests else None
        outcome = {"files": files, "diff_lines": diff_lines, "tests": result.tests, "diff_notes": notes,
                   "tests_passed": None if last_test is None else last_test["exit_code"] == 0}
        self.store.update_job(job.id, summary=result.summary, citations=[c.as_dict() for c in citations],
                              outcome=outcome)
        if result.summary:
            self._emit(job, SummaryWritten(result.summary, [c.as_dict() for c in citations]))
        self._emit(job, DiffComputed(files, diff_lines, notes))
        if cancelled or result.status == "cancelled":
            self._finish(job, states.CANCELLED, "cancelled by the user")
        elif result.status == "succeeded":
            invalid = sum(1 for c in citations if not c.valid)
            note = f"{len(citations)} citations, {invalid} unverified" if citations else "no citations"
            self._finish(job, states.SUCCEEDED, note)
        else:
            self._finish(job, states.FAILED, result.reason)

    def _check_citations(self, job: Job, summary: str, sandbox):
        allowed_jobs = {job.id}
        parent_id = job.parent_job_id
        while parent_id and parent_id not in allowed_jobs:
            allowed_jobs.add(parent_id)
            parent_id = self.store.get_job(parent_id).parent_job_id

        def chunk_lookup(chunk_id: str):
            chunk = self.store.get_chunk(chunk_id)
            if chunk is None or chunk.job_id not in allowed_jobs:
                return None
            return chunk.line_count, chunk.job_id
        paths = sorted({c.target for c in find_citations(summary) if c.kind == "file"})
        try:
            cited = {path: text for path, text in _read_in_sandbox(sandbox, paths).items() if text is not None}
        except Exception as exc:  # the sandbox is gone: file citations cannot be checked, and say so
            log.warning("reading cited files of %s failed: %s", job.id, exc)
            cited = {}
        citations = check_citations(summary, chunk_lookup=chunk_lookup,
                                    file_lines=lambda path: len(cited[path].splitlines()) if path in cited else None)
        kept = {c.target: cited[c.target] for c in citations if c.kind == "file" and c.valid}
        if kept:
            self.store.put_artifact(job.id, "cited_files", json.dumps(kept))
        return citations

    # ------------------------------------------------------------------ best of N
    def _rank_group_if_complete(self, group_id: str) -> None:
        jobs = self.store.list_jobs(group_id=group_id)
        if any(j.state not in states.TERMINAL for j in jobs):
            return
        ranked = sorted(jobs, key=rank_key)
        for position, job in enumerate(ranked, start=1):
            outcome = dict(job.outcome or {})
            outcome.update(rank=position, recommended=position == 1 and job.state == states.SUCCEEDED)
            self.store.update_job(job.id, outcome=outcome)
        best = ranked[0]
        self._emit(best, GroupRanked(group_id, [j.id for j in ranked],
                                     best.id if best.state == states.SUCCEEDED else None))


CITED_FILE_MAX_BYTES = 2_000_000


def _read_in_sandbox(sandbox, paths) -> dict[str, str | None]:
    """Workspace files as text, read inside the sandbox (the host has no path to the workspace)."""
    paths = list(paths)
    if not paths:
        return {}
    return sandbox.call("read_files", paths=paths, max_bytes=CITED_FILE_MAX_BYTES)["texts"]


def rank_key(job: Job) -> tuple:
    """Succeeded before anything else; then a passing last test run, then any test run at all; then the smaller diff."""
    outcome = job.outcome or {}
    passed = outcome.get("tests_passed")
    return (job.state != states.SUCCEEDED, passed is not True, passed is None, outcome.get("diff_lines", 10**9))
