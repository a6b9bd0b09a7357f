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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..access import RepoNotAllowed, RepoPolicy
from ..agent.agents_md import commands_in, discover_agents_md
from ..agent.citations import check_citations, find_citations
from ..agent.loop import Agent, AgentBudgets, AgentResult
from ..agent.outcome import kind_rank
from ..agent.tools import ToolEnv
from ..config import Settings
from ..egress import spec_from_settings
from ..llm.client import ModelClient
from ..sandbox import PrepareRequest, SandboxConfig, SandboxError, SetupFailed, prepare
from ..sandbox.diff import workspace_diff
from ..sandbox.warm import CLOSE_WAIT_S, WarmPool
from ..store import Job, Store
from . import states
from .results import assess_job

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


@dataclass
class JobUpdate:
    job_id: str
    thread_id: str | None
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None          # None for ephemeral updates (live output) that are not stored


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
        egress_settings=spec_from_settings(settings), egress_image=settings.egress_image)


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
        self.warm = (WarmPool(self.sandbox_config, capacity=settings.warm_pool_size, idle_s=settings.warm_pool_idle_s)
                     if settings.warm_pool else None)
        threading.Thread(target=self._watch_external_cancels, name="job-cancel-watch", daemon=True).start()

    # ------------------------------------------------------------------ public API
    def submit(self, req: JobRequest) -> list[Job]:
        if not req.task.strip():
            raise ValueError("a job needs a task")
        RepoPolicy.from_settings(self.settings).check(req.repo)  # RepoNotAllowed says why and what to do
        attempts = max(1, min(int(req.attempts), 8))
        group = secrets.token_hex(4) if attempts > 1 else None
        title = req.title or req.task.strip().splitlines()[0][:80]
        jobs = []
        for attempt in range(1, attempts + 1):
            job = self.store.create_job(
                task=req.task, repo=req.repo, ref=req.ref, setup=req.setup, thread_id=req.thread_id,
                user_id=req.user_id, parent_job_id=req.parent_job_id, title=title, group_id=group,
                attempt=attempt, attempts=attempts, model=self.model.model_for("agent"))
            if req.agent_internet is not None:  # kept with the job, so a retry asks for the same
                self.store.put_artifact(job.id, "agent_internet", json.dumps(req.agent_internet))
            with self._lock:
                self._cancel[job.id] = threading.Event()
                self._finished[job.id] = threading.Event()
            self._emit(job, "state", {"state": states.QUEUED, "attempt": attempt, "attempts": attempts})
            jobs.append(job)
        for job in jobs:
            self._pool.submit(self._run_guarded, job.id)
        return jobs

    def prewarm(self, repo: str, ref: str | None = None, setup: list[str] | None = None,
                agent_internet: dict | str | None = None) -> bool:
        """Ready a sandbox for the next job on this repository in the background (the web app asks when a chat
        has a repository; a finished job asks for the next one). False when there is no pool, the server is
        stopping or the repository is not allowed; never blocks and never fails the caller."""
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
        elif sandbox is None:  # still preparing: say so now; the worker stops when preparation returns
            self._finish(job, states.CANCELLED, "cancelled by the user before the agent started")
        else:
            try:  # kills whatever command is running; the worker then sees the cancel flag
                sandbox.close()
            except Exception:
                log.exception("closing the sandbox of %s", job_id)
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
        active = list(self._cancel)
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
            except states.IllegalTransition:
                pass  # its worker ended it just now
            except Exception:
                log.exception("interrupting %s at shutdown", job_id)

    def _watch_external_cancels(self) -> None:
        """`assistant jobs cancel` from another process only writes the store; notice it and stop the work."""
        while not self._closed.wait(1.0):
            with self._lock:
                mine = [job_id for job_id, ev in self._cancel.items() if not ev.is_set()]
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
    def _emit(self, job: Job, kind: str, data: dict[str, Any], persist: bool = True) -> None:
        seq = self.store.add_event(job.id, kind, data).seq if persist else None
        update = JobUpdate(job.id, job.thread_id, kind, data, seq)
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(update)
            except Exception:  # a broken subscriber must not break the job
                log.exception("job subscriber failed")

    def _transition(self, job: Job, state: str, reason: str | None = None) -> Job:
        job = self.store.transition(job.id, state, reason)
        self._emit(job, "state", {"state": state, "reason": reason})
        return job

    def _finish(self, job: Job, state: str, reason: str) -> None:
        current = self.store.get_job(job.id)
        if current.state in states.TERMINAL:
            if not (current.outcome or {}).get("kind"):  # ended from outside (`jobs cancel`): still owed its assessment
                self._assess(current, current.state, current.reason or reason)
            return
        if state == states.CANCELLED and self._stopping:  # nobody cancelled it: the server is going away
            state, reason = states.INTERRUPTED, "the server shut down while this job was active; retry it"
        self._assess(current, state, reason)
        job = self._transition(current, state, reason)
        if job.group_id:
            self._rank_group_if_complete(job.group_id)
        self._emit(job, "finished", {"state": state, "reason": reason})
        with self._lock:
            done = self._finished.get(job.id)
        if done:
            done.set()

    def _assess(self, job: Job, state: str, reason: str) -> None:
        """Before the job ends: a summary if it has none, the kind of result, checked claims, review flags."""
        summarise = None
        if not self._stopping and job.id in self._cancel:  # in our worker: a model call may take its time here
            def summarise(messages: list[dict]) -> str:
                return self.model.complete("summary", messages, job_id=job.id, max_tokens=700).content or ""
        try:
            assessment = assess_job(self.store, job, state=state, reason=reason, summarise=summarise,
                                    price_table=self.settings.price_table, currency=self.settings.price_currency)
        except Exception:  # the job must still end, with what it has
            log.exception("assessing the result of %s", job.id)
            return
        if assessment.summary_written:
            self._emit(job, "summary", {"summary": assessment.summary, "citations": assessment.citations})

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
            self._emit(job, "setup_command", {"command": command, "chunk_id": chunk.id, "exit_code": result.exit_code,
                                              "duration_s": round(result.duration_s, 3), "lines": chunk.line_count})

        def on_output(text: str) -> None:
            self._emit(job, "output", {"text": text}, persist=False)

        try:
            internet = self.store.get_artifact(job.id, "agent_internet")
            prepared = prepare(PrepareRequest(job_id=job.id, repo=job.repo, ref=job.ref, setup=job.setup,
                                              agent_internet=json.loads(internet) if internet else None),
                               self.sandbox_config, on_state=on_state, on_command=on_command, on_output=on_output,
                               warm=self.warm)
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
            self._emit(job, "notice", {"level": "warning", "text": prepared.backend_fallback})
        touched = sorted(prepared.setup_changes.get("modified") or {})
        if touched:
            self._emit(job, "notice", {"level": "info", "text": "setup changed tracked files (left out of the diff "
                                       "unless the agent changed them again): " + ", ".join(touched[:20])})
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
            on_event=lambda kind, data: self._emit(job, kind, data, persist=kind != "tool_start"))
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
                self._emit(job, "notice", {"level": "warning", "text": f"job {parent.number}'s patch did not apply "
                                           f"here ({reply['error'][:300]}); the job starts from the repository as it is"})
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
            files = [list(f) for f in diff.files[:MAX_LISTED_FILES]]
            notes = diff.notes()
            if len(diff.files) > MAX_LISTED_FILES:  # the patch holds them all; records and cards need not
                notes.append(f"{len(diff.files):,} files changed; the first {MAX_LISTED_FILES:,} are listed")
        except Exception as exc:  # a dead container must not cost the summary
            log.warning("diff of %s failed: %s", job.id, exc)
            files = []
            self.store.put_artifact(job.id, "diff", f"(the diff could not be computed: {exc})")
        blocked = self._report_blocked(job, prepared)
        if blocked:
            result.summary = f"{result.summary}\n\n{blocked}".strip()
        citations = self._check_citations(job, result.summary, prepared.sandbox)
        diff_lines = sum(1 for line in (self.store.get_artifact(job.id, "diff") or "").splitlines()
                         if line[:1] in "+-" and not line.startswith(("+++", "---")))
        last_test = result.tests[-1] if result.tests else None
        outcome = {"files": files, "diff_lines": diff_lines, "tests": result.tests, "diff_notes": notes,
                   "tests_passed": None if last_test is None else last_test["exit_code"] == 0,
                   "test_commands": list(result.test_commands)}
        self.store.update_job(job.id, summary=result.summary, citations=[c.as_dict() for c in citations],
                              outcome=outcome)
        if result.summary:
            self._emit(job, "summary", {"summary": result.summary, "citations": [c.as_dict() for c in citations]})
        self._emit(job, "diff", {"files": files, "diff_lines": diff_lines, "notes": notes})
        if cancelled or result.status == "cancelled":
            self._finish(job, states.CANCELLED, "cancelled by the user")
        elif result.status == "succeeded":
            invalid = sum(1 for c in citations if not c.valid)
            note = f"{len(citations)} citations, {invalid} unverified" if citations else "no citations"
            self._finish(job, states.SUCCEEDED, note)
        else:
            self._finish(job, states.FAILED, result.reason)

    def _report_blocked(self, job: Job, prepared) -> str:
        """Every request the egress proxy refused, for the summary and the card: what, where it is logged, and how
        to allow it. "" when nothing was blocked (or the job had no internet at all)."""
        egress = getattr(prepared.sandbox, "egress", None)
        if egress is None:
            return ""
        from ..egress.report import blocked_summary

        try:
            blocked = egress.blocked_requests()
        except Exception as exc:
            log.warning("reading the egress log of %s failed: %s", job.id, exc)
            return ""
        if not blocked:
            return ""
        logged = [c for c in self.store.list_chunks(job.id) if c.command.startswith("egress proxy:")]
        where = " ".join(f"【{c.id}†L1-L{max(c.line_count, 1)}】" for c in logged)
        text = blocked_summary(blocked, prepared.egress_policy)
        self._emit(job, "notice", {"level": "warning", "text": text})
        return f"**Blocked by the egress proxy** {where}\n\n{text}"

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
        self._emit(best, "group_ranked", {"group_id": group_id, "order": [j.id for j in ranked],
                                          "recommended": best.id if best.state == states.SUCCEEDED else None})


CITED_FILE_MAX_BYTES = 2_000_000
MAX_LISTED_FILES = 1000


def _read_in_sandbox(sandbox, paths) -> dict[str, str | None]:
    """Workspace files as text, read inside the sandbox (the host has no path to the workspace)."""
    paths = list(paths)
    if not paths:
        return {}
    return sandbox.call("read_files", paths=paths, max_bytes=CITED_FILE_MAX_BYTES)["texts"]


def rank_key(job: Job) -> tuple:
    """The kind of result first (fix, draft, findings, no result); then succeeded before anything else; then
    fewer review flags, a passing last test run, any test run at all; then the smaller diff."""
    outcome = job.outcome or {}
    passed = outcome.get("tests_passed")
    return (kind_rank(outcome.get("kind")), job.state != states.SUCCEEDED, len(outcome.get("flags") or []),
            passed is not True, passed is None, outcome.get("diff_lines", 10**9))
