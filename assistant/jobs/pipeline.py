"""One job from start to result, as a plain function: prepare the sandbox, run the agent, take the diff and
check the summary's citations.

`run_job` knows no store, no web app and no queue. What it learns about the job comes in a JobSpec; what
happens goes out as typed events (assistant/domain/events.py) to `emit`; command output goes to a JobLog (whatever keeps
citable log chunks); the result comes back as a JobOutcome. The job manager (one process, threads) and the
queue workers (many processes) both call it and record what it says, so the same code runs a job wherever.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..agent.agents_md import commands_in, discover_agents_md
from ..agent.asking import Asker, Question, Reply
from ..agent.citations import check_citations, find_citations
from ..agent.harness import make_agent
from ..agent.loop import AgentResult
from ..agent.steering import SteerInbox
from ..agent.tools import ToolEnv
from ..domain.outcome import Outcome
from ..llm.client import ModelClient
from ..sandbox import PreparedSandbox, PrepareRequest, SandboxConfig, SandboxError, SetupFailed
from ..sandbox.workspace import Workspace, workspace_diff
from ..domain import states
from ..domain.events import (JobEventRecord, Notice, OutputDelta, SandboxPlaced, SandboxReady, SetupCommandRan,
                             StateChanged)

log = logging.getLogger(__name__)

MAX_LISTED_FILES = 1000  # files named in the job's records and card; the patch holds them all
EGRESS_CHUNK_PREFIX = "egress proxy:"  # log chunks of requests the egress proxy refused (agent/tools.py)


class LoggedChunk(Protocol):
    id: str
    line_count: int


class JobLog(Protocol):
    """Where command output is kept as citable chunks (the store, in practice)."""

    def add_chunk(self, *, job_id: str | None, command: str, text: str, exit_code: int | None, phase: str = "agent",
                  duration_s: float = 0.0, truncated: bool = False, timed_out: bool = False) -> LoggedChunk: ...

    def chunk_owner(self, chunk_id: str) -> tuple[int, str] | None:
        """(line count, job id) of a stored chunk, or None."""


Emit = Callable[[JobEventRecord], None]
Prepare = Callable[..., PreparedSandbox]  # prepare(request, *, on_state, on_command, on_output)


@dataclass(frozen=True)
class ParentResult:
    """What a follow-up job starts from: its parent's patch, applied in the sandbox first."""
    number: int
    title: str
    summary: str | None
    patch: str


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    task: str
    repo: str
    ref: str | None = None
    setup: list[str] | None = None
    parent: ParentResult | None = None
    citable_jobs: frozenset[str] = frozenset()  # whose log chunks the summary may cite: the job and its ancestors
    run: int = 1                                # which run of the job this is (its fence)
    agent_internet: dict | str | None = None    # the job request's agent-internet layer (see assistant/egress)
    start_patch: str | None = None              # the user's uncommitted changes, applied before setup
    review: Any = None                          # a review job's jobs.review.ReviewRequest (None: a task job)


@dataclass(frozen=True)
class JobLimits:
    command_timeout_s: int = 300
    max_steps: int = 60
    max_seconds: int = 3600
    max_tokens: int = 3_000_000
    context_window: int = 128_000
    tool_protocol: str = "auto"
    harness: str = "auto"          # auto | guided | free (agent/harness.py)
    candidates: int = 3            # candidate edits the guided harness may try
    self_review: bool = False      # review the job's own diff before it ends (jobs/self_review.py)
    self_review_seconds: int = 600
    self_review_steps: int = 15

    @classmethod
    def from_settings(cls, settings) -> "JobLimits":
        return cls(command_timeout_s=settings.command_timeout_s, max_steps=settings.job_max_steps,
                   max_seconds=settings.job_max_seconds, max_tokens=settings.job_max_tokens,
                   context_window=settings.context_window, tool_protocol=settings.tool_protocol,
                   harness=settings.agent_harness, candidates=settings.guided_candidates,
                   self_review=settings.self_review == "on" or (settings.self_review == "auto"
                                                                and not settings.uses_local_model),
                   self_review_seconds=settings.self_review_max_seconds,
                   self_review_steps=settings.self_review_max_steps)


@dataclass
class JobOutcome:
    """How the job ended and what it left: recorded by the caller, in this order, before the job ends."""
    state: str                                  # succeeded | failed | cancelled
    reason: str
    agent_ran: bool = False                     # summary, citations, diff and outcome below are meaningful
    summary: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)
    diff: str | None = None                     # readable diff (or why it could not be computed)
    patch: str | None = None
    cited_files: dict[str, str] = field(default_factory=dict)
    outcome: Outcome = field(default_factory=Outcome)  # the diff's shape and the agent's test runs
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    artifacts: dict[str, str] = field(default_factory=dict)  # further artifacts by kind (a review's result)


class RunLost(Exception):
    """This run of the job no longer owns it (another worker took it over): stop, write nothing more."""


class RunControl:
    """Cancel, and the sandbox to close when cancelled (closing it kills whatever command runs); interrupt, which
    stops only the agent's command under way (a steering message sent with `now`)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.lost: str | None = None
        self._sandbox = None
        self._interrupter: Callable[[], str | None] | None = None
        self._lock = threading.Lock()
        self._on_cancel: list = []

    def set_interrupter(self, interrupter: Callable[[], str | None] | None) -> None:
        """What stops the agent's command under way (ToolEnv.interrupt), once the agent phase has begun."""
        with self._lock:
            self._interrupter = interrupter

    def interrupt(self) -> str | None:
        """Stop the agent's command under way, if there is one and its agent can be interrupted: the command
        stopped, or None (nothing ran, or the run is not in its agent phase)."""
        with self._lock:
            interrupter = self._interrupter
        return interrupter() if interrupter is not None and not self.cancelled.is_set() else None

    def attach(self, sandbox) -> None:
        with self._lock:
            self._sandbox = sandbox
            close_now = self.cancelled.is_set()
        if close_now:
            _close(sandbox)

    def detach(self):
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        return sandbox

    def cancel(self) -> None:
        """Stop the run: its sandbox starts closing (which kills whatever command runs) and this returns at once;
        the run's own thread waits for the teardown before the run ends."""
        self.cancelled.set()
        with self._lock:
            sandbox = self._sandbox
        if sandbox is not None:
            close_soon = getattr(sandbox, "close_soon", None)
            if close_soon is not None:
                close_soon()
            else:
                _close(sandbox)
        if self.lost is None:
            for callback in list(self._on_cancel):
                try:
                    callback()
                except Exception:  # what a listener records must not stop the cancel
                    log.exception("a cancel listener failed")

    def on_cancel(self, callback) -> None:
        """Call `callback` (on the cancelling thread) when the run is cancelled, not when it is lost."""
        self._on_cancel.append(callback)

    def lose(self, reason: str) -> None:
        """Another run owns the job now: stop this one without recording anything."""
        self.lost = reason
        self.cancel()


def _close(sandbox) -> None:
    try:
        sandbox.close()
    except Exception:
        log.exception("closing a sandbox")


def run_job(spec: JobSpec, *, prepare: Prepare, config: SandboxConfig, model: ModelClient, limits: JobLimits,
            job_log: JobLog, emit: Emit, control: RunControl | None = None,
            steering: SteerInbox | None = None, asker: Asker | None = None) -> JobOutcome:
    """Run one job to its outcome. The sandbox is closed when this returns (or raises). `steering` is where the
    agent reads the messages the user tells the job while it runs (agent/steering.py); `asker` is whom it asks
    when it is blocked (agent/asking.py): while it waits, the sandbox is kept and its wall clock paused."""
    control = control or RunControl()
    try:
        return _run(spec, prepare, config, model, limits, job_log, emit, control, steering, asker)
    finally:
        control.set_interrupter(None)
        sandbox = control.detach()
        if sandbox is not None:
            _close(sandbox)
        if control.lost:
            raise RunLost(control.lost)


def _run(spec, prepare, config, model, limits, job_log, emit, control, steering, asker) -> JobOutcome:
    job_log = _ChunkTally(job_log)
    emit(StateChanged(states.PREPARING))
    setup_chunks: list[LoggedChunk] = []
    entered_setup = False

    def on_state(state: str) -> None:
        nonlocal entered_setup
        if state == states.SETTING_UP and not entered_setup:
            entered_setup = True
            emit(StateChanged(states.SETTING_UP))

    def on_command(command: str, result) -> None:
        chunk = job_log.add_chunk(job_id=spec.job_id, phase="setup", command=command, text=result.output,
                                  exit_code=result.exit_code, duration_s=result.duration_s,
                                  truncated=result.truncated, timed_out=result.timed_out)
        setup_chunks.append(chunk)
        emit(SetupCommandRan(command, chunk.id, result.exit_code, round(result.duration_s, 3), chunk.line_count))

    def on_output(text: str) -> None:
        emit(OutputDelta(text))

    def on_sandbox(sandbox) -> None:
        control.attach(sandbox)  # a cancel from now on closes it, even in the middle of setup
        if sandbox.placement is not None:
            emit(SandboxPlaced(*sandbox.placement))

    try:
        prepared = prepare(PrepareRequest(job_id=spec.job_id, repo=spec.repo, ref=spec.ref, setup=spec.setup,
                                          run=spec.run, agent_internet=spec.agent_internet,
                                          start_patch=spec.start_patch),
                           on_state=on_state, on_command=on_command, on_output=on_output, on_sandbox=on_sandbox)
    except SetupFailed as exc:
        last = setup_chunks[-1] if setup_chunks else None
        cite = f" 【{last.id}†L1-L{max(last.line_count, 1)}】" if last else ""
        return JobOutcome(states.FAILED, f"{exc}{cite}")
    except SandboxError as exc:  # after a cancel, the error is only the closed sandbox's
        if control.cancelled.is_set():
            return JobOutcome(states.CANCELLED, "cancelled by the user")
        return JobOutcome(states.FAILED, str(exc))
    control.attach(prepared.sandbox)
    emit(SandboxReady(prepared.backend, prepared.base_commit, prepared.setup_network, prepared.agent_network,
                      prepared.cache_hit))
    if prepared.backend_fallback:
        emit(Notice(prepared.backend_fallback, "warning"))
    if prepared.image and prepared.image != config.image:
        emit(Notice(f"sandbox image: {prepared.image}"))
    touched = sorted(prepared.setup_changes.get("modified") or {})
    if touched:
        emit(Notice("setup changed tracked files (left out of the diff unless the agent changed them again): "
                    + ", ".join(touched[:20])))
    if control.cancelled.is_set():
        return JobOutcome(states.CANCELLED, "cancelled by the user")
    sandbox = prepared.sandbox
    context = _context(spec, prepared, setup_chunks, emit)
    emit(StateChanged(states.RUNNING))
    instructions = discover_agents_md(lambda paths: read_in_sandbox(sandbox, paths))
    if spec.review is not None:
        from .review import run_review  # a review job: its own run over the same prepared sandbox
        return run_review(spec, prepared, model=model, limits=limits, config=config, job_log=job_log, emit=emit,
                          control=control, instructions=instructions)
    env = ToolEnv(sandbox, job_log, spec.job_id, command_timeout_s=limits.command_timeout_s,
                  on_output=on_output, test_commands=commands_in(instructions) + tuple(prepared.test_commands))
    agent = make_agent(model, env, limits, job_id=spec.job_id, cancel=control.cancelled, on_event=emit,
                       steering=steering, asker=_PausingAsker(asker, sandbox) if asker is not None else None)
    if agent.interruptible:  # the guided harness's commands validate its edits: it reads messages, never stops them
        control.set_interrupter(env.interrupt)
    result = agent.run(spec.task, context=context, instructions=instructions)
    outcome = _conclude(spec, result, prepared, config, job_log, emit, cancelled=control.cancelled.is_set())
    from . import self_review  # a second pass over the job's own diff, when it is on
    if self_review.wanted(outcome, limits) and not control.cancelled.is_set():
        outcome = self_review.self_review(spec, prepared, outcome, model=model, limits=limits, config=config,
                                          job_log=job_log, emit=emit, control=control, instructions=instructions)
    return outcome


class _PausingAsker:
    """While the agent waits for the user, its sandbox stays and the sandbox's wall clock (the job's time limit,
    ASSISTANT_JOB_MAX_SECONDS) stands still: waiting for an answer is not the job's time."""

    def __init__(self, asker: Asker, sandbox):
        self.asker = asker
        self.sandbox = sandbox

    def ask(self, question: Question) -> Reply:
        pause = getattr(self.sandbox, "pause_wall_clock", None)
        resume = getattr(self.sandbox, "resume_wall_clock", None)
        if pause is not None:
            pause()
        try:
            return self.asker.ask(question)
        finally:
            if resume is not None:
                resume()


def _context(spec: JobSpec, prepared: PreparedSandbox, setup_chunks: list[LoggedChunk], emit: Emit) -> str:
    parts = []
    if prepared.failed_setup:
        command, res = prepared.failed_setup
        chunk = setup_chunks[-1:]
        parts.append(f"Note: the setup command `{command}` failed with exit code {res.exit_code}"
                     + (f" (its output is chunk {chunk[0].id})" if chunk else "") + "; the environment may be incomplete.")
    elif prepared.setup_commands:
        parts.append("Setup already ran: " + "; ".join(f"`{c}`" for c in prepared.setup_commands))
    if prepared.test_commands:
        parts.append("The repository's manifests say its tests run with: "
                     + "; ".join(f"`{c}`" for c in prepared.test_commands)
                     + " (where AGENTS.md names other commands, follow AGENTS.md).")
    if spec.parent is not None:
        parts.append(_apply_parent(spec.parent, prepared.sandbox, emit))
    return "\n\n".join(parts)


def _apply_parent(parent: ParentResult, sandbox, emit: Emit) -> str:
    """A follow-up job starts from its parent's result: the parent's patch is applied first, in the sandbox."""
    if parent.patch.strip():
        applied = Workspace(sandbox).apply_parent_patch(parent.patch)
        if not applied.ok:
            emit(Notice(f"job {parent.number}'s patch did not apply here ({applied.error[:300]}); "
                        "the job starts from the repository as it is", "warning"))
            return (f"This job follows job {parent.number}, but its patch did not apply here "
                    f"({applied.error[:300]}); start from the repository as it is.")
    return (f"This job follows job {parent.number} (\"{parent.title}\"), whose changes are already applied "
            f"in the workspace (uncommitted; `git diff` shows them). Its summary was:\n{parent.summary or '(none)'}")


def _conclude(spec: JobSpec, result: AgentResult, prepared: PreparedSandbox, config: SandboxConfig,
              job_log: "_ChunkTally", emit: Emit, cancelled: bool) -> JobOutcome:
    outcome = JobOutcome(states.FAILED, result.reason, agent_ran=True, summary=result.summary,
                         prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                         steps=result.steps)
    notes: list[str] = []
    files: list[list[str]] = []
    try:
        diff = workspace_diff(prepared.sandbox, prepared.diff_base or prepared.base_commit, prepared.setup_changes,
                              file_cap=config.diff_file_cap_bytes, patch_cap=config.diff_patch_cap_bytes)
        outcome.diff, outcome.patch = diff.display, diff.patch
        files = [list(f) for f in diff.files[:MAX_LISTED_FILES]]
        notes = diff.notes()
        if len(diff.files) > MAX_LISTED_FILES:
            notes.append(f"{len(diff.files):,} files changed; the first {MAX_LISTED_FILES:,} are listed")
    except Exception as exc:  # a dead container must not cost the summary
        log.warning("diff of %s failed: %s", spec.job_id, exc)
        outcome.diff = f"(the diff could not be computed: {exc})"
    blocked = _report_blocked(spec, prepared, job_log, emit)
    if blocked:
        outcome.summary = result.summary = f"{result.summary}\n\n{blocked}".strip()
    citations, outcome.cited_files = _check_citations(spec, result.summary, prepared.sandbox, job_log)
    outcome.citations = [c.as_dict() for c in citations]
    diff_lines = sum(1 for line in (outcome.diff or "").splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))
    last_test = result.tests[-1] if result.tests else None
    outcome.outcome = Outcome().replace(files=files, diff_lines=diff_lines, tests=result.tests, diff_notes=notes,
                                        tests_passed=None if last_test is None else last_test["exit_code"] == 0,
                                        test_commands=list(result.test_commands))
    if cancelled or result.status == "cancelled":
        outcome.state, outcome.reason = states.CANCELLED, "cancelled by the user"
    elif result.status == "succeeded":
        invalid = sum(1 for c in citations if not c.valid)
        outcome.state = states.SUCCEEDED
        outcome.reason = f"{len(citations)} citations, {invalid} unverified" if citations else "no citations"
    return outcome


def _report_blocked(spec: JobSpec, prepared: PreparedSandbox, job_log: "_ChunkTally", emit: Emit) -> str:
    """Every request the egress proxy refused, for the summary and the card: what, where it is logged, and how
    to allow it. "" when nothing was blocked (or the job had no internet at all)."""
    egress = prepared.sandbox.egress
    if egress is None:
        return ""
    from ..egress.report import blocked_summary

    try:
        blocked = egress.blocked_requests()
    except Exception as exc:
        log.warning("reading the egress log of %s failed: %s", spec.job_id, exc)
        return ""
    if not blocked:
        return ""
    where = " ".join(f"【{c.id}†L1-L{max(c.line_count, 1)}】" for c in job_log.egress_chunks)
    text = blocked_summary(blocked, prepared.egress_policy)
    emit(Notice(text, "warning"))
    return f"**Blocked by the egress proxy** {where}\n\n{text}"


class _ChunkTally:
    """The run's JobLog, noting the chunks the egress proxy's refusals were logged in (for the summary)."""

    def __init__(self, job_log: JobLog):
        self._log = job_log
        self.egress_chunks: list[LoggedChunk] = []

    def add_chunk(self, **fields) -> LoggedChunk:
        chunk = self._log.add_chunk(**fields)
        if str(fields.get("command", "")).startswith(EGRESS_CHUNK_PREFIX):
            self.egress_chunks.append(chunk)
        return chunk

    def chunk_owner(self, chunk_id: str) -> tuple[int, str] | None:
        return self._log.chunk_owner(chunk_id)


def _check_citations(spec: JobSpec, summary: str, sandbox, job_log: JobLog):
    allowed = spec.citable_jobs | {spec.job_id}

    def chunk_lookup(chunk_id: str):
        owner = job_log.chunk_owner(chunk_id)
        if owner is None or owner[1] not in allowed:
            return None
        return owner
    paths = sorted({c.target for c in find_citations(summary) if c.kind == "file"})
    try:
        cited = {path: text for path, text in read_in_sandbox(sandbox, paths).items() if text is not None}
    except Exception as exc:  # the sandbox is gone: file citations cannot be checked, and say so
        log.warning("reading cited files of %s failed: %s", spec.job_id, exc)
        cited = {}
    citations = check_citations(summary, chunk_lookup=chunk_lookup,
                                file_lines=lambda path: len(cited[path].splitlines()) if path in cited else None)
    kept = {c.target: cited[c.target] for c in citations if c.kind == "file" and c.valid}
    return citations, kept


def read_in_sandbox(sandbox, paths) -> dict[str, str | None]:
    """Workspace files as text, read inside the sandbox (the host has no path to the workspace)."""
    return Workspace(sandbox).read_files(paths).texts
