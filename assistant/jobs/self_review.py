"""Self-review: a coding job's own diff reviewed in its own sandbox before the job ends (ASSISTANT_SELF_REVIEW).

The pass is the review job's (jobs/review.py: `review_change`): the base is the commit the job started from, the
head its change committed in the sandbox; the product runs the tests on both sides, the reviewer reports, and the
product runs every proof on the head and the base. Its result is the job's `self_review` artifact; the job's
kind of result (jobs/results.py) turns from fix to draft when a serious finding is verified.

The pass has its own budget (ASSISTANT_SELF_REVIEW_MAX_SECONDS / _MAX_STEPS; the job's wall clock stands still
meanwhile, as it does while the agent waits for the user). Whatever goes wrong in it (a model error, its time
running out, a change that does not apply again) costs only the review: the job ends with its own result and a
note that the self-review did not complete. Only a cancel stops the job.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

from ..agent.reviewer import finding_status
from ..domain import states
from ..domain.events import Notice
from ..domain.review import SELF_REVIEW_ARTIFACT, SELF_REVIEW_DONE, SELF_REVIEW_INCOMPLETE, SelfReview
from .pipeline import JobOutcome
from .review import ReviewRequest, _Stop, review_change

log = logging.getLogger(__name__)


def wanted(outcome: JobOutcome, limits) -> bool:
    """A self-review runs when it is on and the agent finished with a change to review."""
    return bool(limits.self_review and outcome.state == states.SUCCEEDED and (outcome.patch or "").strip())


def self_review(spec, prepared, outcome: JobOutcome, *, model, limits, config, job_log, emit, control,
                instructions: str) -> JobOutcome:
    """Review the job's own diff and attach the result to `outcome` (its artifact, usage and notices). Returns
    the outcome: the same one, or a cancelled one when the user cancelled during the pass."""
    started = time.monotonic()
    deadline = started + limits.self_review_seconds
    review_limits = dataclasses.replace(limits, max_steps=limits.self_review_steps,
                                        max_seconds=limits.self_review_seconds,
                                        command_timeout_s=min(limits.command_timeout_s, limits.self_review_seconds))
    request = ReviewRequest("self", base_ref=prepared.diff_base or prepared.base_commit, patch=outcome.patch,
                            job_id=spec.job_id, task=spec.task)
    emit(Notice(f"self-review: reviewing the job's own change (at most {limits.self_review_seconds} s)"))
    sandbox = prepared.sandbox
    pause, resume = getattr(sandbox, "pause_wall_clock", None), getattr(sandbox, "resume_wall_clock", None)
    if pause is not None:
        pause()   # the pass has its own budget: it does not eat the job's
    try:
        reviewed = review_change(spec, request, prepared, model=model, limits=review_limits, config=config,
                                 job_log=job_log, emit=emit, control=control, instructions=instructions,
                                 deadline=deadline)
    except _Stop as stop:
        if stop.outcome.state == states.CANCELLED or control.cancelled.is_set():
            return _cancelled(outcome)
        return _incomplete(outcome, stop.outcome.reason, started, emit, stop.outcome, limits.self_review_seconds)
    except Exception as exc:  # the review's failure is not the job's
        if control.cancelled.is_set():
            return _cancelled(outcome)
        log.warning("self-review of %s failed: %s", spec.job_id, exc, exc_info=True)
        return _incomplete(outcome, f"{type(exc).__name__}: {exc}", started, emit, None, limits.self_review_seconds)
    finally:
        control.set_interrupter(None)
        if resume is not None:
            resume()
    if time.monotonic() > deadline:
        emit(Notice(f"self-review: it went over its {limits.self_review_seconds} s; what ran is kept", "warning"))
    review = SelfReview(SELF_REVIEW_DONE, seconds=time.monotonic() - started, result=reviewed.result)
    _attach(outcome, review, reviewed.usage)
    result = reviewed.result
    verified = sum(1 for f in result.findings if f.verified)
    emit(Notice(f"self-review: {result.verdict.replace('_', ' ')}: {len(result.findings)} finding"
                f"{'s' if len(result.findings) != 1 else ''}, {verified} verified",
                "warning" if review.proved_problem else "info"))
    return outcome


def _cancelled(outcome: JobOutcome) -> JobOutcome:
    return dataclasses.replace(outcome, state=states.CANCELLED, reason="cancelled by the user")


def _incomplete(outcome: JobOutcome, reason: str, started: float, emit, stopped: JobOutcome | None = None,
                limit: int | None = None) -> JobOutcome:
    if limit is not None and time.monotonic() - started >= limit:
        reason = f"its time ({limit} s) ran out: {reason}"
    review = SelfReview(SELF_REVIEW_INCOMPLETE, reason=reason[:500], seconds=time.monotonic() - started)
    _attach(outcome, review, stopped)
    emit(Notice(f"self-review did not complete ({reason[:300]}); the job's result is its own, unreviewed", "warning"))
    return outcome


def _attach(outcome: JobOutcome, review: SelfReview, usage) -> None:
    outcome.artifacts[SELF_REVIEW_ARTIFACT] = json.dumps(review.as_dict())
    if usage is not None:
        outcome.prompt_tokens += usage.prompt_tokens
        outcome.completion_tokens += usage.completion_tokens


def load_self_review(store, job_id: str) -> SelfReview | None:
    """A job's self-review (done or incomplete), or None when none ran."""
    raw = store.get_artifact(job_id, SELF_REVIEW_ARTIFACT)
    return SelfReview.from_dict(json.loads(raw)) if raw else None


def self_review_lines(store, job_id: str) -> list[str]:
    """The self-review for a terminal: its verdict and each finding with its mark and severity, or why it did not
    complete. [] when none ran."""
    review = load_self_review(store, job_id)
    if review is None:
        return []
    if review.status != SELF_REVIEW_DONE or review.result is None:
        return [f"self-review: did not complete — {review.reason or 'no reason recorded'} "
                "(the result above is the job's own, unreviewed)"]
    result = review.result
    verified = sum(1 for f in result.findings if f.verified)
    lines = [f"self-review: {result.verdict.replace('_', ' ')} — {len(result.findings)} finding"
             f"{'s' if len(result.findings) != 1 else ''}, {verified} verified ({review.seconds:.0f} s)"]
    for severity, findings in result.by_severity().items():
        lines += [f"  {f.id} [{severity}] {f.title} — {'✔' if f.verified else '⚠'} {finding_status(f)}"
                  for f in findings]
    return lines
