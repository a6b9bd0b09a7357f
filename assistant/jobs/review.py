"""Review jobs: a change (a branch against its base, a patch, or another job's diff) reviewed in a sandbox, its
findings checked by the product, and "fix this" as a follow-up job.

A review job is a job like any other (queued, run, recorded, cancelled the same way); its request is the
`review_request` artifact, and its result the `review` artifact (a domain.review.ReviewResult as JSON).

In the sandbox the workspace is put at the head with the base in the same repository (a branch is cloned at its
head, whose history holds the base; a patch is applied on the base and committed there). The product runs the
repository's tests on both sides, lets the reviewer work, then runs every proof the reviewer offered itself, on the
head and on the base, with the tracked files reset to each side. A finding is verified only when its proof fails
on the head and passes on the base; the reviewer's own word counts for nothing. Nothing here runs on the host
against what the change or the reviewer wrote: checkouts, file writes and diffs are workspace operations.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

from ..agent.citations import check_citations, find_citations
from ..agent.harness import uses_guided
from ..agent.loop import Agent, AgentBudgets
from ..agent.review import review_diff
from ..agent.reviewer import (MAX_TEST_BYTES, Report, ReportMissing, ReportedFinding, REPORT_SCHEMA,
                              new_file_patch, normalized_test, parse_report, proof_path_problem, proof_status,
                              render_summary, report_from_json)
from ..agent.tools import AGENT_ENV, ToolEnv, looks_like_tests
from ..domain import states
from ..domain.events import Notice
from ..domain.outcome import Outcome
from ..domain.review import (PROOF_CONFIRMED, PROOF_NOT_RUN, PROOFS_ARTIFACT, REVIEW_ARTIFACT, Finding, Proof,
                             ProofRun, ReviewResult, SuiteRun, decide_verdict)
from ..llm.client import ModelError
from ..llm.constrained import ModelOutputError
from ..prompts import load_prompt, render_prompt
from ..sandbox.workspace import Workspace
from .pipeline import JobOutcome

REVIEW_REQUEST = "review_request"   # artifact: what to review (ReviewRequest as JSON)
REVIEW = REVIEW_ARTIFACT            # artifact: the result (ReviewResult as JSON)
REVIEW_PROOFS = PROOFS_ARTIFACT     # artifact: the reviewer's proof tests, one git-apply-able patch
DIFF_IN_PROMPT = 8000               # characters of the change the reviewer's first message carries
DIFF_IN_SMALL_PROMPT = 3000         # … when a small model reviews in one constrained reply
REPORT_MAX_TOKENS = 900


class ReviewError(ValueError):
    """A review that cannot be asked for as given; the message says what to give instead."""


@dataclass(frozen=True)
class ReviewRequest:
    """What a review job reviews. Branch mode: `base_commit` (where the head forked) and `head_commit`, fixed when
    the review was asked for. Patch and job modes: `patch`, applied on the job's ref (the base) in the sandbox."""
    mode: str                          # branch | patch | job | self (a coding job's own diff, in its sandbox)
    base_ref: str | None = None
    head_ref: str | None = None
    base_commit: str | None = None
    head_commit: str | None = None
    patch: str | None = None
    job_id: str | None = None          # job mode: the job whose diff is reviewed
    task: str | None = None            # self mode: the task the change was made for

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ReviewRequest":
        return cls(**json.loads(text))

    def describe(self) -> str:
        if self.mode == "branch":
            return f"{self.head_ref or self.head_commit[:12]} against {self.base_ref or self.base_commit[:12]}"
        if self.mode == "job":
            return f"the diff of job {self.job_id}"
        if self.mode == "self":
            return render_prompt("self_review_what.md", task=" ".join((self.task or "").split())[:400]).strip()
        return f"a patch on {self.base_ref or 'the default branch'}"


# ---------------------------------------------------------------------------------------------- asking for one
def submit_review(manager, *, repo: str, base: str | None = None, head: str | None = None, patch: str | None = None,
                  job_id: str | None = None, setup: list[str] | None = None, thread_id: str | None = None,
                  user_id: str | None = None):
    """Queue a review job of one change: `head` (a branch, tag or commit) against `base`, a `patch` (text) on
    `base`, or the diff of job `job_id`. Returns the job. ReviewError says what is missing or contradictory."""
    from ..sandbox.repo import review_range
    from .apply import START_PATCH
    from .manager import JobRequest
    from .uncommitted import UNCOMMITTED

    given = [name for name, value in (("--head", head), ("--patch", patch), ("--job", job_id)) if value]
    if len(given) != 1:
        raise ReviewError("say what to review: exactly one of a head ref (--head), a patch file (--patch) "
                          "or a job (--job)" + (f"; {' and '.join(given)} were given" if given else ""))
    artifacts: dict[str, str] = {}
    if head:
        base_commit, head_commit = review_range(repo, base or "HEAD", head, manager.sandbox_config.data_dir)
        if base_commit == head_commit:
            raise ReviewError(f"{head} has nothing that {base or 'HEAD'} lacks: there is no change to review")
        request = ReviewRequest("branch", base or "HEAD", head, base_commit, head_commit)
        ref = head_commit
    elif patch is not None:
        if not patch.strip():
            raise ReviewError("the patch is empty: give a file made by `git diff` (or `git format-patch`)")
        request = ReviewRequest("patch", base_ref=base, patch=patch)
        ref = base
    else:
        job = manager.store.get_job(job_id)
        change = manager.store.get_artifact(job.id, "patch") or ""
        if not change.strip():
            raise ReviewError(f"job {job_id} left no diff to review; pick a job whose result has a diff")
        if base:
            raise ReviewError("--base does not go with --job: a job's diff is reviewed against the commit it started from")
        request = ReviewRequest("job", base_ref=job.base_commit or job.ref, patch=change, job_id=job.id)
        ref, repo, setup = job.base_commit or job.ref, job.repo, setup if setup is not None else job.setup
        thread_id = thread_id or job.thread_id
        if manager.store.get_artifact(job.id, START_PATCH):  # it started from uncommitted changes: so does this
            artifacts = {START_PATCH: manager.store.get_artifact(job.id, START_PATCH),
                         UNCOMMITTED: manager.store.get_artifact(job.id, UNCOMMITTED) or "{}"}
    task = f"Review {request.describe()}"
    jobs = manager.submit(JobRequest(task=task, repo=repo, ref=ref, setup=setup, thread_id=thread_id,
                                     user_id=user_id, title=task[:80], review=request.to_json(),
                                     inherited=artifacts))
    return jobs[0]


def load_review(store, job_id: str) -> ReviewResult | None:
    """A review job's result, or None while it has none (not a review, not finished, or it failed)."""
    raw = store.get_artifact(job_id, REVIEW)
    return ReviewResult.from_dict(json.loads(raw)) if raw else None


def fix_finding(manager, review_job_id: str, finding_id: str, *, user_id: str | None = None):
    """"Fix this": a follow-up job of the review whose task is the finding (its citations and proof). It starts
    from the review's patch, so the change under review and the proof test are in its workspace. Returns the job."""
    review_job, result = _finished_review(manager.store, review_job_id)
    return _fix(manager, review_job, [result.finding(finding_id)], user_id)


def fix_blockers(manager, review_job_id: str, *, user_id: str | None = None):
    """"Fix all blockers": one follow-up job for every blocker finding (verified ones first)."""
    review_job, result = _finished_review(manager.store, review_job_id)
    blockers = result.by_severity()["blocker"]
    if not blockers:
        raise ReviewError(f"the review {review_job_id} has no blocker findings to fix")
    return _fix(manager, review_job, blockers, user_id)


def _finished_review(store, review_job_id: str):
    job = store.get_job(review_job_id)
    result = load_review(store, job.id)
    if result is None:
        raise ReviewError(f"job {review_job_id} has no review result (is it a review job that succeeded?)")
    return job, result


def fix_task(review_job, findings: list[Finding]) -> str:
    """The follow-up's task: each finding with where it is and how to see it fail."""
    parts = []
    for f in findings:
        where = ", ".join(c["text"] + ("" if c["valid"] else " (unverified citation)") for c in f.citations
                          if c["kind"] == "file") or "not cited"
        proof = ""
        if f.proof is not None and f.proof.status != PROOF_NOT_RUN:
            proof = f"Proof command: `{f.proof.command}`"
            if f.proof.test_path:
                proof += f" (its test {f.proof.test_path} is already in the workspace)"
            proof += (": it fails now and must pass after the fix.\n" if f.proof.status == PROOF_CONFIRMED
                      else ": the review could not confirm it shows the problem.\n")
        parts.append(render_prompt("review_fix_task.md", number=str(review_job.number or review_job.id),
                                   severity=f.severity, title=f.title, body=f.body, where=where, proof=proof).strip())
    return "\n\n---\n\n".join(parts)


def _fix(manager, review_job, findings: list[Finding], user_id: str | None):
    from .manager import JobRequest
    title = ("Fix: " + findings[0].title) if len(findings) == 1 else f"Fix {len(findings)} blockers of the review"
    jobs = manager.submit(JobRequest(task=fix_task(review_job, findings), repo=review_job.repo, ref=review_job.ref,
                                     setup=review_job.setup, thread_id=review_job.thread_id,
                                     user_id=user_id or review_job.user_id, parent_job_id=review_job.id,
                                     title=title[:80]))
    return jobs[0]


# ---------------------------------------------------------------------------------------------- in the sandbox
class _Stop(Exception):
    def __init__(self, outcome: JobOutcome):
        self.outcome = outcome


def run_review(spec, prepared, *, model, limits, config, job_log, emit, control, instructions: str) -> JobOutcome:
    """The review job's run once its sandbox is prepared (pipeline._run hands over here)."""
    try:
        return _review(spec, prepared, model, limits, config, job_log, emit, control, instructions)
    except _Stop as stop:
        return stop.outcome


@dataclass
class Reviewed:
    """What one review pass found (a review job's, or a coding job's self-review): the product-checked result,
    the change it reviewed, the proofs it ran, and the reviewer's usage."""
    result: ReviewResult
    change: object          # the WorkspaceDiff of base → head
    proofs: list
    usage: "_Usage"


def review_change(spec, request: ReviewRequest, prepared, *, model, limits, config, job_log, emit, control,
                  instructions: str, deadline: float | None = None) -> Reviewed:
    """One review pass in a prepared sandbox: the sides, the tests on both, the reviewer's report, the proofs run
    by the product and the citations checked. `deadline` (time.monotonic()) bounds the pass: past it, no further
    command starts. Raises _Stop (cancelled, or no usable report) with the outcome to end with."""
    sandbox = prepared.sandbox
    ws = Workspace(sandbox)
    base, head = _sides(request, prepared, ws)
    change = ws.diff(base, prepared.setup_changes, file_cap=config.diff_file_cap_bytes,
                     patch_cap=config.diff_patch_cap_bytes)
    if not change.files:
        raise _Stop(JobOutcome(states.FAILED, f"the head {head[:12]} does not differ from the base {base[:12]}: "
                                              "nothing to review"))
    flags = [f.as_dict() for f in review_diff(change.display, "", patch=change.patch)]  # the change's own flags
    suites = _run_suites(spec, prepared, ws, base, head, limits, job_log, emit, instructions, deadline)
    _check_cancel(control)
    env = ToolEnv(sandbox, job_log, spec.job_id, command_timeout_s=_left(limits, deadline) or 1,
                  on_output=None, test_commands=tuple(s.command for s in suites))
    report, usage = _reviewer_report(spec, request, model, limits, env, emit, control, instructions, base, head,
                                     change, suites, flags, deadline)
    control.set_interrupter(None)
    _check_cancel(control)
    sandbox.reap()  # what the reviewer left running must not touch the proofs' runs
    ws.checkout_commit(head)
    findings = [Finding(id=f"f{i}", title=rf.title, severity=rf.severity, body=rf.body)
                for i, rf in enumerate(report.findings, 1)]
    proofs = _run_proofs(spec, ws, sandbox, job_log, emit, report.findings, findings, base, head, limits, deadline)
    for finding, proof in zip(findings, proofs):
        finding.proof = proof
        finding.verified = proof is not None and proof.status == PROOF_CONFIRMED
    _check_finding_citations(spec, ws, job_log, report.findings, findings)
    verdict = decide_verdict(findings)
    proof_patch = "".join(p.patch for p in proofs if p is not None and p.patch and p.status != PROOF_NOT_RUN)
    result = ReviewResult(verdict=verdict, base_commit=base, head_commit=head, mode=request.mode,
                          summary=report.summary, model_verdict=report.verdict,
                          model_verdict_consistent=report.verdict == verdict, findings=findings, tests=suites,
                          changed_files=[list(f) for f in change.files], flags=flags, proof_patch=proof_patch)
    return Reviewed(result, change, proofs, usage)


def _review(spec, prepared, model, limits, config, job_log, emit, control, instructions) -> JobOutcome:
    request: ReviewRequest = spec.review
    ws = Workspace(prepared.sandbox)
    reviewed = review_change(spec, request, prepared, model=model, limits=limits, config=config, job_log=job_log,
                             emit=emit, control=control, instructions=instructions)
    result, change, proofs, agent = reviewed.result, reviewed.change, reviewed.proofs, reviewed.usage
    proof_patch = result.proof_patch
    summary = render_summary(result)
    if result.summary:  # the model's words: said to be so, and its citations are checked with the rest
        summary += "\n\nThe reviewer's note (its own words; only the verified findings above are checked facts): " \
            + result.summary
    outcome = JobOutcome(states.SUCCEEDED, _reason(result), agent_ran=True, summary=summary,
                         prompt_tokens=agent.prompt_tokens, completion_tokens=agent.completion_tokens,
                         steps=agent.steps)
    # A follow-up ("fix this") starts from the job's patch on the job's ref: the change (when it was applied in
    # here; a branch review's ref is the head itself) and the proof tests.
    change_patch = change.patch if request.mode != "branch" else ""
    outcome.patch = change_patch + proof_patch
    outcome.diff = ((change.display if request.mode != "branch" else "") + proof_patch) or None
    outcome.citations = [c.as_dict() for c in _summary_citations(spec, ws, job_log, summary)]
    files = [list(f) for f in change.files] if request.mode != "branch" else []
    files += [["added", p.test_path] for p in proofs if p is not None and p.patch and p.status != PROOF_NOT_RUN]
    outcome.outcome = Outcome().replace(files=files,
                                        diff_lines=sum(1 for line in outcome.patch.splitlines()
                                                       if line[:1] in "+-" and not line.startswith(("+++", "---"))))
    outcome.artifacts = {REVIEW: json.dumps(result.as_dict()), REVIEW_PROOFS: proof_patch}
    emit(Notice(f"review: {_reason(result)}"))
    return outcome


def _reason(result: ReviewResult) -> str:
    verified = sum(1 for f in result.findings if f.verified)
    return (f"{result.verdict.replace('_', ' ')}: {len(result.findings)} finding"
            f"{'s' if len(result.findings) != 1 else ''}, {verified} verified")


def _check_cancel(control) -> None:
    if control.cancelled.is_set():
        raise _Stop(JobOutcome(states.CANCELLED, "cancelled by the user"))


def _sides(request: ReviewRequest, prepared, ws: Workspace) -> tuple[str, str]:
    """(base, head) commits in the sandbox, the workspace at the head."""
    if request.mode == "branch":
        return request.base_commit, prepared.base_commit
    base = prepared.diff_base or prepared.base_commit
    if request.mode == "self":  # the job's own change is in the working tree: back to the base, then commit it
        ws.checkout_commit(base)
        for path in added_paths(request.patch or ""):
            ws.remove_file(path)
    applied = ws.apply_start_patch(request.patch or "", "the change under review")
    if not applied.ok:
        raise _Stop(JobOutcome(states.FAILED, f"the change does not apply on the base {base[:12]}: "
                                              f"{applied.error[:400]}; review it against the commit it was made on"))
    return base, applied.summary


def added_paths(patch: str) -> list[str]:
    """The files a git patch creates (they are untracked files in the working tree that made it)."""
    paths, current = [], None
    for line in patch.splitlines():
        if line.startswith("diff --git "):
            current = None
        elif line.startswith("new file mode") or line == "--- /dev/null":
            current = "new"
        elif line.startswith("+++ b/") and current == "new":
            paths.append(line[6:])
            current = None
        elif line.startswith(("rename to ", "copy to ")):
            paths.append(line.split(" to ", 1)[1])
    return list(dict.fromkeys(paths))


def _left(limits, deadline: float | None) -> int | None:
    """A command's timeout within the pass's deadline; None when the deadline has passed."""
    if deadline is None:
        return limits.command_timeout_s
    left = deadline - time.monotonic()
    return min(limits.command_timeout_s, math.ceil(left)) if left > 0 else None


def _run_suites(spec, prepared, ws, base, head, limits, job_log, emit, instructions,
                deadline: float | None = None) -> list[SuiteRun]:
    """The repository's tests on the head, then on the base (the workspace is left at the head)."""
    from ..agent.agents_md import commands_in

    # AGENTS.md, where it names a test command, knows better than the manifests (as for a task job's agent).
    named = [c for c in commands_in(instructions) if looks_like_tests(c)]
    commands = named or list(prepared.test_commands)
    if not commands:
        emit(Notice("review: no test command was found (manifests, AGENTS.md); the tests were not run"))
        return []
    command = commands[0]
    runs = []
    for side, commit in (("head", head), ("base", base)):
        timeout = _left(limits, deadline)
        if timeout is None:
            emit(Notice(f"review: no time left to run the tests on the {side}"))
            break
        ws.checkout_commit(commit)
        result = prepared.sandbox.exec(command, timeout_s=timeout, env=AGENT_ENV)
        chunk = job_log.add_chunk(job_id=spec.job_id, phase="review", command=f"review: tests on the {side}: {command}",
                                  text=result.output, exit_code=result.exit_code, duration_s=result.duration_s,
                                  truncated=result.truncated, timed_out=result.timed_out)
        runs.append(SuiteRun(side, command, chunk.id, result.exit_code, chunk.line_count))
        emit(Notice(f"review: tests on the {side} → exit {result.exit_code} (chunk {chunk.id})"))
    ws.checkout_commit(head)
    return runs[::-1]  # base (before) first


def _task_text(request, base, head, change, suites, flags, diff_cap: int) -> str:
    files = "\n".join(f"- {status} {path}" for status, path in change.files[:50]) or "(none)"
    if flags:
        files += "\n\nFlags on the diff (check them): " + "; ".join(
            f"{f['kind']} {f['path']}: {f['detail']}" for f in flags[:10])
    tests = "\n".join(f"Tests on the {s.side}: `{s.command}` exit {s.exit_code} (chunk {s.chunk_id}, {s.lines} lines)"
                      for s in suites) or "No test command is known; find how the project runs its tests."
    diff = change.display if len(change.display) <= diff_cap else change.display[:diff_cap] + "\n… (cut)"
    return render_prompt("review_task.md", base=base[:12], head=head[:12], what=request.describe(), files=files,
                         tests=tests, diff=diff).strip()


@dataclass
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0


def _reviewer_report(spec, request, model, limits, env, emit, control, instructions, base, head, change, suites,
                     flags, deadline: float | None = None):
    """The reviewer's report: a strong model reviews with the tools and ends with it; a small one (the guided
    harness's models) gives it in one grammar-constrained reply over the diff and the test runs."""
    usage = _Usage()
    if not uses_guided(limits.harness, limits.tool_protocol):
        seconds = limits.max_seconds if deadline is None else max(1, math.ceil(deadline - time.monotonic()))
        budgets = AgentBudgets(max_steps=limits.max_steps, max_seconds=min(limits.max_seconds, seconds),
                               max_tokens=limits.max_tokens, context_window=limits.context_window)
        agent = Agent(model, env, budgets=budgets, protocol=limits.tool_protocol, job_id=spec.job_id,
                      cancel=control.cancelled, on_event=emit)
        control.set_interrupter(env.interrupt)
        result = agent.run(_task_text(request, base, head, change, suites, flags, DIFF_IN_PROMPT),
                           instructions=instructions, system_prompt="review_system.md")
        usage = _Usage(result.prompt_tokens, result.completion_tokens, result.steps)
        if result.status == "cancelled":
            raise _Stop(JobOutcome(states.CANCELLED, "cancelled by the user"))
        if result.status == "succeeded":
            try:
                return parse_report(result.summary), usage
            except ReportMissing as exc:
                emit(Notice(f"review: the reviewer's answer held no report ({exc}); asking for it once more"))
                return _constrained_report(spec, model, [
                    {"role": "system", "content": load_prompt("review_system.md")},
                    {"role": "user", "content": _task_text(request, base, head, change, suites, flags,
                                                           DIFF_IN_SMALL_PROMPT)},
                    {"role": "assistant", "content": result.summary[:4000]},
                    {"role": "user", "content": render_prompt("review_report.md", review="").strip()}], usage), usage
        emit(Notice(f"review: the reviewer stopped ({result.reason}); asking for its report in one reply", "warning"))
    return _constrained_report(spec, model, [
        {"role": "system", "content": load_prompt("review_system.md")},
        {"role": "user", "content": render_prompt("review_report.md", review=_task_text(
            request, base, head, change, suites, flags, DIFF_IN_SMALL_PROMPT)).strip()}], usage), usage


def _constrained_report(spec, model, messages, usage: _Usage) -> Report:
    try:
        value = model.constrained_json("agent", messages, REPORT_SCHEMA, max_tokens=REPORT_MAX_TOKENS)
        return report_from_json(value)
    except (ModelError, ModelOutputError, ReportMissing) as exc:
        raise _Stop(JobOutcome(states.FAILED, f"the reviewer gave no usable report: {exc}", agent_ran=False,
                               prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                               steps=usage.steps)) from None


def _run_proofs(spec, ws, sandbox, job_log, emit, reported: list[ReportedFinding], findings: list[Finding],
                base: str, head: str, limits, deadline: float | None = None) -> list[Proof | None]:
    """Every proof the reviewer offered, run by the product on the head and on the base."""
    proofs: list[Proof | None] = []
    for rf in reported:
        if not rf.proof_command:
            proofs.append(None)
            continue
        proof = Proof(command=rf.proof_command, test_path=rf.proof_test_path)
        if rf.proof_test:
            proof.test_content = normalized_test(rf.proof_test)
            if not rf.proof_test_path:
                proof.reason = "a proof test came without proof_test_path"
            elif proof_path_problem(rf.proof_test_path):
                proof.reason = proof_path_problem(rf.proof_test_path)
            elif len(proof.test_content.encode()) > MAX_TEST_BYTES:
                proof.reason = f"the proof test is over {MAX_TEST_BYTES:,} bytes"
            else:
                proof.patch = new_file_patch(proof.test_path, proof.test_content)
        proofs.append(proof)
    runnable = [(f, p) for f, p in zip(findings, proofs) if p is not None and not p.reason]
    taken: set[str] = set()
    for finding, p in runnable:  # the proof tests go out as one patch: one file a path
        if p.test_content and p.test_path in taken:
            p.reason, p.patch = f"another finding's proof test has the path {p.test_path}; give each its own", ""
        taken.add(p.test_path or "")
    runnable = [(f, p) for f, p in runnable if not p.reason]
    paths = sorted({p.test_path for _f, p in runnable if p.test_content})
    clash = set(ws.tracked_in(head, paths)) | set(ws.tracked_in(base, paths)) if paths else set()
    for _f, p in runnable:
        if p.test_content and p.test_path in clash:
            p.reason, p.patch = f"{p.test_path} is a file of the repository; a proof test needs a new path", ""
    runnable = [(f, p) for f, p in runnable if not p.reason]
    for side, commit in (("head", head), ("base", base)):
        if not runnable:
            break
        ws.checkout_commit(commit)
        for finding, proof in runnable:
            timeout = _left(limits, deadline)
            if timeout is None:
                proof.reason = "the review's time ran out before its proof ran"
                continue
            if proof.test_content:
                ws.write_text(proof.test_path, proof.test_content)
            try:
                result = sandbox.exec(proof.command, timeout_s=timeout, env=AGENT_ENV)
            finally:
                if proof.test_content:
                    ws.remove_file(proof.test_path)
            chunk = job_log.add_chunk(job_id=spec.job_id, phase="review",
                                      command=f"review: proof of {finding.id} on the {side}: {proof.command}",
                                      text=result.output, exit_code=result.exit_code, duration_s=result.duration_s,
                                      truncated=result.truncated, timed_out=result.timed_out)
            setattr(proof, side, ProofRun(side, proof.command, chunk.id, result.exit_code, result.timed_out,
                                          chunk.line_count))
            emit(Notice(f"review: proof of {finding.id} on the {side} → exit {result.exit_code} (chunk {chunk.id})"))
    ws.checkout_commit(head)
    for _f, proof in runnable:
        if proof.head is None or proof.base is None:
            proof.status = PROOF_NOT_RUN
            proof.reason = proof.reason or "the review's time ran out before its proof ran"
        elif proof.head.timed_out or proof.base.timed_out:
            proof.status, proof.reason = PROOF_NOT_RUN, "the proof timed out"
        else:
            proof.status = proof_status(proof.head, proof.base)
    return proofs


def _chunk_lookup(spec, job_log):
    allowed = spec.citable_jobs | {spec.job_id}

    def lookup(chunk_id: str):
        owner = job_log.chunk_owner(chunk_id)
        return owner if owner is not None and owner[1] in allowed else None
    return lookup


def _head_files(ws: Workspace, texts: list[str]) -> dict[str, str]:
    paths = sorted({c.target for text in texts for c in find_citations(text) if c.kind == "file"})
    return {p: t for p, t in ws.read_files(paths).texts.items() if t is not None} if paths else {}


def _check_finding_citations(spec, ws, job_log, reported: list[ReportedFinding], findings: list[Finding]) -> None:
    """Each finding's citations (its body's and its location), checked against the head's files and the job's
    logs; a valid file citation carries its excerpt."""
    texts = []
    for rf, finding in zip(reported, findings):
        location = rf.location_citation()
        if location and location not in finding.body:
            finding.body = f"{finding.body} {location}".strip()
        texts.append(finding.body)
    files = _head_files(ws, texts)
    lookup = _chunk_lookup(spec, job_log)
    for text, finding in zip(texts, findings):
        checked = check_citations(text, chunk_lookup=lookup,
                                  file_lines=lambda p: len(files[p].splitlines()) if p in files else None)
        finding.citations = []
        for c in checked:
            entry = c.as_dict()
            if c.kind == "file" and c.valid:
                entry["excerpt"] = "\n".join(files[c.target].splitlines()[c.start - 1:c.end])
            finding.citations.append(entry)


def _summary_citations(spec, ws, job_log, summary: str):
    files = _head_files(ws, [summary])
    return check_citations(summary, chunk_lookup=_chunk_lookup(spec, job_log),
                           file_lines=lambda p: len(files[p].splitlines()) if p in files else None)
