"""What a notification says: one typed record per job event, its JSON body and its one-line text.

The body is flat JSON with a top-level `text` (a one-line summary with the link), so the same POST works for a
receiver of our own and for a Slack-style incoming webhook, which shows `text` and ignores the rest.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from ..agent.citations import CITATION_RE
from ..domain import states
from ..domain.outcome import Outcome
from ..store import Job

ENDED = "ended"       # a job reached a terminal state
WAITING = "waiting"   # the agent asks the user something (its ask_user tool): the job waits for the answer
EVENTS = (ENDED, WAITING)

TASK_CHARS = 300
SUMMARY_CHARS = 600
TEXT_SUMMARY_CHARS = 160

_SAID = {states.SUCCEEDED: "succeeded", states.FAILED: "failed", states.CANCELLED: "was cancelled",
         states.INTERRUPTED: "was interrupted"}


@dataclass(frozen=True)
class JobNotification:
    """The body of one notification (see README, Job notifications)."""
    event: str
    text: str
    job_id: str
    job_number: int | None       # the number its conversation shows ("job 2"); None for a job outside one
    title: str
    task: str                    # excerpt
    state: str
    reason: str | None
    outcome: str | None          # fix | draft | findings | no result (None: not assessed)
    summary: str | None          # excerpt, plain text, citation markers removed
    repo: str
    ref: str | None
    thread_id: str | None
    link: str | None             # <ASSISTANT_PUBLIC_URL>/thread/<thread id>
    occurred_at: str             # ISO 8601, UTC
    question: str | None = None  # waiting: what the agent asks (excerpt; also the `summary`)

    def to_dict(self) -> dict:
        return asdict(self)


def plain_excerpt(text: str | None, limit: int) -> str:
    """Text without citation markers, on one line, cut at a word boundary to at most `limit` characters."""
    flat = " ".join(CITATION_RE.sub("", text or "").split())
    flat = re.sub(r"\s+([.,;:!?)])", r"\1", flat)  # "fixed 【…】." left a space before the period
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def thread_link(public_url: str | None, thread_id: str | None) -> str | None:
    if not public_url or not thread_id:
        return None
    return f"{public_url.rstrip('/')}/thread/{thread_id}"


def job_notification(job: Job, event: str, public_url: str | None, now: datetime | None = None, *,
                     question: str | None = None) -> JobNotification:
    """The notification of `event` for a job as the store has it now; a waiting one carries the agent's question
    as its excerpt."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}; known: {', '.join(EVENTS)}")
    kind = Outcome.from_dict(job.outcome).kind
    number = job.number if job.thread_id else None
    link = thread_link(public_url, job.thread_id)
    summary = plain_excerpt(job.summary, SUMMARY_CHARS) or None
    asked = plain_excerpt(question, SUMMARY_CHARS) or None if event == WAITING else None
    if event == WAITING:
        summary = asked
    title = job.title or plain_excerpt(job.task, 80)
    return JobNotification(
        event=event, text=one_line(event, job, title, kind, number, summary, link), job_id=job.id,
        job_number=number, title=title, task=plain_excerpt(job.task, TASK_CHARS), state=job.state, reason=job.reason,
        outcome=kind, summary=summary, repo=job.repo, ref=job.ref, thread_id=job.thread_id, link=link,
        occurred_at=(now or datetime.now(timezone.utc)).isoformat(timespec="seconds"), question=asked)


def one_line(event: str, job: Job, title: str, kind: str | None, number: int | None, summary: str | None,
             link: str | None) -> str:
    """`Job 2 “Fix the failing test” succeeded (fix) in /src/calc: The add function … <link>`"""
    name = f"Job {number}" if number is not None else f"Job {job.id}"
    if event == WAITING:
        said = "is waiting for your answer"
    else:
        said = _SAID.get(job.state, f"ended {job.state}")
        if kind:
            said += f" ({kind})"
        elif job.state != states.SUCCEEDED and job.reason:
            said += f" ({plain_excerpt(job.reason, 80)})"
    line = f"{name} “{title}” {said} in {job.repo}"
    if summary:
        line += f": {plain_excerpt(summary, TEXT_SUMMARY_CHARS)}"
    return line + (f" {link}" if link else "")
