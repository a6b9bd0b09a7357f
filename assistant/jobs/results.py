"""A finished job's result made trustworthy: a summary for every job, the kind of result, the summary's
claims checked against the log, and review flags on the diff.

Reads only what the store holds (log chunks, the diff and patch artifacts, the job row), so it works
wherever the workspace lived; the judgements themselves are the plain functions in assistant.agent.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..agent.citations import check_citations
from ..agent.claims import check_claims
from ..agent.digest import log_excerpt, plain_digest
from ..agent.evidence import LogRecord, records_from_chunks
from ..agent.outcome import DRAFT, FIX, KindDecision, decide_outcome
from ..agent.review import parse_diff, review_diff, tampered_tests
from ..domain.outcome import Outcome
from ..domain.review import REVIEW_ARTIFACT, SELF_REVIEW_ARTIFACT, SelfReview
from ..llm.guards import Instructions, find_problem
from ..llm.pricing import Cost, UsageRow, cost_of, format_cost, format_tokens, parse_price_table
from ..prompts import load_prompt, render_prompt
from ..store import Job, Store
from ..domain import states

log = logging.getLogger(__name__)

SOURCE_AGENT, SOURCE_MODEL, SOURCE_DIGEST = "agent", "summary model", "log digest"

Summarise = Callable[[list[dict]], str]   # chat messages -> the summary model's text


@dataclass
class Assessment:
    summary: str
    citations: list[dict]
    outcome: Outcome
    summary_written: bool       # a summary was written here (the job had none)


def _chunk_lookup(store: Store, job: Job):
    """Chunks of this job and of the jobs it follows (their logs are part of its story)."""
    allowed = store.lineage(job)

    def lookup(chunk_id: str):
        chunk = store.get_chunk(chunk_id)
        if chunk is None or chunk.job_id not in allowed:
            return None
        return chunk.line_count, chunk.job_id
    return lookup


def changed_files(job: Job, diff: str) -> list[list[str]]:
    """The diff's (status, path) list as the job row holds it, else read from the diff text."""
    files = Outcome.from_dict(job.outcome).files
    if files:
        return [list(f) for f in files]
    return [[c.status, c.path] for c in parse_diff(diff)]


def failure_summary_messages(job: Job, state: str, reason: str, records: list[LogRecord], files: list,
                             named_tests: list[str]) -> list[dict]:
    listed = ", ".join(f[1] for f in files[:20]) or "none"
    user = render_prompt("failure_summary_task.md", task=job.task.strip(), state=state, reason=reason or "(none given)",
                         files=listed, log=log_excerpt(records, named_tests))
    return [{"role": "system", "content": load_prompt("failure_summary.md").strip()},
            {"role": "user", "content": user.strip()}]


def write_summary(store: Store, job: Job, *, state: str, reason: str, records: list[LogRecord], files: list,
                  named_tests: list[str], summarise: Summarise | None) -> tuple[str, list[dict], str]:
    """(summary, checked citations, source) for a job that ended without a summary. The summary model
    writes it when there is a log to write from; its citations are checked, and when none holds, the
    plain digest (valid by construction) is appended so every claim has a checkable anchor."""
    digest = plain_digest(state=state, reason=reason, records=records, files=files, named_tests=named_tests)
    lookup = _chunk_lookup(store, job)
    if summarise is not None and any(r.phase == "agent" for r in records):
        text = _usable_summary(summarise, failure_summary_messages(job, state, reason, records, files, named_tests),
                               job.id)
        if text:
            citations = check_citations(text, chunk_lookup=lookup)
            if not any(c.valid for c in citations):
                text += "\n\nFrom the log:\n" + digest
                citations = check_citations(text, chunk_lookup=lookup)
            return text, [c.as_dict() for c in citations], SOURCE_MODEL
    return digest, [c.as_dict() for c in check_citations(digest, chunk_lookup=lookup)], SOURCE_DIGEST


def _usable_summary(summarise: Summarise, messages: list[dict], job_id: str) -> str:
    """The summary model's text when it is fit to show: one that recites its prompt, loops or degenerates is
    asked for once more, then given up ("": the digest stands in)."""
    problem = None
    for attempt in range(2):
        asked = messages if problem is None else [*messages, {
            "role": "user", "content": render_prompt("summary_retry.md", problem=problem).strip()}]
        try:
            text = (summarise(asked) or "").strip()
        except Exception as exc:  # no usable model: the digest still says what happened
            log.warning("the summary model could not summarise job %s: %s", job_id, exc)
            return ""
        if not text:
            return ""
        problem = find_problem(text, Instructions.every_prompt())
        if problem is None:
            return text
        log.warning("summary of job %s withheld (attempt %d): %s", job_id, attempt + 1, problem)
    return ""


def assess_job(store: Store, job: Job, *, state: str, reason: str, summarise: Summarise | None = None,
               price_table: str | None = None, currency: str = "USD") -> Assessment:
    """Everything a reviewer needs to trust (or not) the job's result, stored on the job row's outcome
    (with the job's token usage, so a card can show it from stored data alone)."""
    records = records_from_chunks(store.list_chunks(job.id))
    outcome = Outcome.from_dict(job.outcome)
    named_tests = list(outcome.test_commands)
    diff = store.get_artifact(job.id, "diff") or ""
    files = changed_files(job, diff)
    summary, citations, source = job.summary or "", list(job.citations or []), SOURCE_AGENT
    written = False
    unfit = find_problem(summary, Instructions.every_prompt()) if summary.strip() else None
    if unfit:   # the agent's last words recite its prompt, loop or degenerate: not shown as its summary
        log.warning("the agent's summary of job %s is not shown: %s", job.id, unfit)
        outcome = outcome.replace(summary_withheld=unfit)
    if not summary.strip() or unfit:
        summary, citations, source = write_summary(store, job, state=state, reason=reason, records=records, files=files,
                                                   named_tests=named_tests, summarise=summarise)
        written = True
    flags = review_diff(diff, job.task, patch=store.get_artifact(job.id, "patch") or "") if files else []
    decided = decide_outcome(
        records, changed_files=files, named_tests=named_tests, agent_finished=state == states.SUCCEEDED,
        summary_located=source == SOURCE_AGENT and any(c.get("valid") for c in citations),
        tests_changed=tampered_tests(flags))
    decided = _self_reviewed(store, job, decided)
    outcome = outcome.replace(**decided.as_dict()).replace(
        claims=[c.as_dict() for c in check_claims(summary, records, named_tests=named_tests)],
        flags=[f.as_dict() for f in flags], summary_source=source,
        usage=usage_of(store, job_ids=[job.id], price_table=price_table, currency=currency))
    if store.has_artifact(job.id, REVIEW_ARTIFACT) and state == states.SUCCEEDED:
        # A review's summary is the product's, written from the proof runs it made and the checked citations;
        # its findings are the result, and its diff (the change, the proof tests) carries the review's own flags.
        outcome = outcome.replace(kind="findings", kind_reason=f"a review ({job.reason or 'done'})", claims=[],
                                  flags=[])
    store.update_job(job.id, summary=summary, citations=citations, outcome=outcome.to_dict())
    return Assessment(summary, citations, outcome, written)


def _self_reviewed(store: Store, job: Job, decided: KindDecision) -> KindDecision:
    """A fix whose own self-review verified a blocker or major finding is a draft: the tests the agent ran pass,
    but a proof the product ran fails on the change and passes on the start commit."""
    raw = store.get_artifact(job.id, SELF_REVIEW_ARTIFACT)
    if decided.kind != FIX or not raw:
        return decided
    review = SelfReview.from_dict(json.loads(raw))
    proved = review.verified_serious()
    if not proved:
        return decided
    first = proved[0]
    run = first.proof.head if first.proof is not None else None
    where = f" (its proof fails on the change, chunk {run.chunk_id}, and passes on the start commit)" if run else ""
    more = f" and {len(proved) - 1} more" if len(proved) > 1 else ""
    return dataclasses.replace(decided, kind=DRAFT, reason=(
        f"self-review verified a {first.severity} finding: {first.id} {first.title}{where}{more}; "
        f"the agent's tests had passed ({decided.reason})"))


def assess_interrupted(store: Store, job_ids: Sequence[str]) -> None:
    """Jobs found interrupted at start-up get their summary (the log digest: no model at start-up) and kind too."""
    for job_id in job_ids:
        job = store.get_job(job_id)
        try:
            assess_job(store, job, state=job.state, reason=job.reason or "")
        except Exception:  # start-up must go on
            log.exception("assessing interrupted job %s", job_id)


# ---------------------------------------------------------------------------------------------- cost
def usage_of(store: Store, *, job_ids: Sequence[str] = (), thread_id: str | None = None,
             price_table: str | None = None, currency: str = "USD") -> dict:
    """Tokens per model (and money, with a price table) for some jobs, or for a whole conversation."""
    rows = store.usage_by_model(job_ids=job_ids, thread_id=thread_id)
    models: dict[str, list[int]] = {}
    for _role, model, prompt, completion in rows:
        totals = models.setdefault(model, [0, 0])
        totals[0] += prompt
        totals[1] += completion
    cost = cost_of([UsageRow(m, p, c) for m, (p, c) in models.items()], parse_price_table(price_table), currency)
    return {"prompt_tokens": sum(p for p, _ in models.values()), "completion_tokens": sum(c for _, c in models.values()),
            "models": [{"model": m, "prompt_tokens": p, "completion_tokens": c} for m, (p, c) in models.items()],
            "by_role": [{"role": r, "model": m, "prompt_tokens": p, "completion_tokens": c} for r, m, p, c in rows],
            "cost": cost.as_dict() if cost else None}


def job_usage(store: Store, job: Job, settings) -> dict:
    return usage_of(store, job_ids=[job.id], price_table=settings.price_table, currency=settings.price_currency)


def conversation_usage(store: Store, thread_id: str, settings) -> dict:
    jobs = [j.id for j in store.list_jobs(thread_id=thread_id, limit=100_000)]
    return usage_of(store, job_ids=jobs, thread_id=thread_id, price_table=settings.price_table,
                    currency=settings.price_currency)


# ---------------------------------------------------------------------------------------------- plain text
def result_lines(job: Job) -> list[str]:
    """The kind of result, what it rests on, and the review flags, as lines for a terminal."""
    outcome = Outcome.from_dict(job.outcome)
    if not outcome.assessed:
        return []
    lines = [f"result: {outcome.kind} — {outcome.kind_reason}"]
    for e in outcome.evidence:
        when = "after the last edit" if e.get("after_last_edit") else "before the last edit"
        lines.append(f"  test run: `{e['command']}` exit {e['exit_code']} (chunk {e['chunk_id']}, {when})"
                     + (f" — {e['note']}" if e.get("note") else ""))
    for flag in outcome.flags:
        lines.append(f"  ⚠ {flag['path']}: {flag['detail']}")
    return lines


def usage_line(usage: dict, fallback_job: Job | None = None) -> str:
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    models = ", ".join(m["model"] for m in usage["models"])
    if not prompt and not completion and fallback_job is not None:
        prompt, completion, models = fallback_job.prompt_tokens, fallback_job.completion_tokens, fallback_job.model or ""
    text = f"{format_tokens(prompt)} prompt + {format_tokens(completion)} completion tokens" + (f" ({models})" if models else "")
    cost = usage.get("cost")
    if cost:
        text += " · " + format_cost(Cost(cost["amount"], cost["currency"], tuple(cost["unpriced_models"])))
    return text
