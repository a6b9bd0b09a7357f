"""Routing: each message becomes a quick answer, a new job, or a follow-up on a job of this conversation.

A cheap first pass settles the obvious cases (and /ask, /code force either way); the model decides the
rest with a structured reply. Whatever the model says, routing never fails: an unreadable reply falls
back to an answer, which offers "run as a job".
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..llm.client import ModelClient, ModelError
from ..llm.constrained import ModelOutputError
from ..prompts import render_prompt
from ..store import Job

ANSWER, JOB, FOLLOWUP_ANSWER, FOLLOWUP_JOB = "answer", "job", "followup_answer", "followup_job"

_QUESTION_START = re.compile(r"^\s*(what|why|how|where|which|who|when|does|do|did|is|are|was|were|can|could|would|"
                             r"should|explain|describe|show me|tell me|summari[sz]e|list|compare)\b", re.I)
_EDIT_VERB = (r"(fix|add|implement|refactor|change|write|update|remove|delete|rename|make|create|migrate|upgrade|"
              r"bump|port|convert|optimi[sz]e|improve|replace|move|extract|split|introduce|support|handle|resolve|"
              r"repair|patch|clean ?up|reformat|document|test)")
_EDIT_START = re.compile(rf"^\s*(please\s+|now\s+|also\s+|and\s+)*{_EDIT_VERB}\b", re.I)
_POLITE_EDIT = re.compile(rf"^\s*(can|could|would|will)\s+you\s+(please\s+)?(also\s+)?{_EDIT_VERB}\b", re.I)
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
             "ninth": 9, "tenth": 10}
_JOB_NUMBER = re.compile(r"\b(?:job|attempt|task)\s*#?\s*(\d+)\b|#(\d+)\b|\b(" + "|".join(_ORDINALS) + r")\s+(?:job|one|attempt)\b", re.I)
_JOB_LAST = re.compile(r"\b(the\s+)?(last|latest|previous|prior|most recent)\s+(one|job|change|run|attempt|fix|diff)\b"
                       r"|\b(that|this|the|your)\s+(change|fix|diff|patch|job)\b|\byou\s+(changed|did|ran|added|fixed|modified)\b"
                       r"|^\s*also\b|\bfor\s+that\b|\bit\s+(changed|did)\b", re.I)


@dataclass
class Route:
    kind: str                 # answer | job | followup_answer | followup_job
    job_id: str | None = None
    reason: str = ""
    decided_by: str = "rules"  # rules | model | command | fallback

    @property
    def is_job(self) -> bool:
        return self.kind in (JOB, FOLLOWUP_JOB)


def resolve_job_reference(text: str, jobs: list[Job]) -> Job | None:
    """"job 2", "#2", "the second job", "the last one" → that job of the conversation."""
    if not jobs:
        return None
    m = _JOB_NUMBER.search(text)
    if m:
        number = int(m[1] or m[2]) if (m[1] or m[2]) else _ORDINALS[m[3].lower()]
        for job in jobs:
            if job.number == number:
                return job
    lowered = text.lower()
    for job in sorted(jobs, key=lambda j: -j.number):
        if job.title and len(job.title) > 12 and job.title.lower()[:40] in lowered:
            return job
    if _JOB_LAST.search(text):
        return max(jobs, key=lambda j: j.number)
    return None


def _first_pass(text: str, jobs: list[Job]) -> Route | None:
    target = resolve_job_reference(text, jobs)
    question = bool(_QUESTION_START.search(text)) or text.rstrip().endswith("?")
    edit = bool(_EDIT_START.search(text)) or bool(_POLITE_EDIT.search(text))
    if edit and question and not _POLITE_EDIT.search(text):
        return None
    if edit:
        return Route(FOLLOWUP_JOB if target else JOB, target.id if target else None, "asks for a change")
    if question:
        return Route(FOLLOWUP_ANSWER if target else ANSWER, target.id if target else None, "asks a question")
    return None


def _parse_decision(content: str) -> dict:
    match = re.search(r"\{.*\}", content or "", re.S)
    if not match:
        raise ValueError("no JSON object in the reply")
    data = json.loads(match.group(0))
    if data.get("route") not in ("answer", "job"):
        raise ValueError(f"route must be answer or job, got {data.get('route')!r}")
    return data


ROUTE_SCHEMA = {"type": "object", "properties": {
    "route": {"type": "string", "enum": ["answer", "job"]}, "followup": {"type": "boolean"},
    "job": {"type": "string"}, "reason": {"type": "string"}}, "required": ["route", "followup", "reason"]}


def route_message(text: str, jobs: list[Job], model: ModelClient | None, *, command: str | None = None,
                  thread_id: str | None = None, constrained: bool = False) -> Route:
    if command in ("ask", "code"):
        target = resolve_job_reference(text, jobs)
        kind = {("ask", False): ANSWER, ("ask", True): FOLLOWUP_ANSWER,
                ("code", False): JOB, ("code", True): FOLLOWUP_JOB}[(command, target is not None)]
        return Route(kind, target.id if target else None, f"/{command} chosen", "command")
    quick = _first_pass(text, jobs)
    if quick is not None or model is None:
        return quick or Route(ANSWER, None, "no router model; answering", "fallback")
    listing = "\n".join(f"- job {j.number}: {j.title} ({j.state})" for j in jobs) or "(none)"
    messages = [{"role": "system", "content": render_prompt("router.md", jobs=listing)},
                {"role": "user", "content": text}]
    try:
        if constrained:  # small local models: a JSON-schema grammar keeps the reply well formed
            data = _parse_decision(json.dumps(model.constrained_json("router", messages, ROUTE_SCHEMA,
                                                                     thread_id=thread_id)))
        else:
            reply = model.complete("router", messages, thread_id=thread_id, temperature=0, max_tokens=120)
            data = _parse_decision(reply.content or "")
    except (ModelError, ModelOutputError, ValueError, json.JSONDecodeError) as exc:
        return Route(ANSWER, None, f"the router could not decide ({str(exc)[:120]}); answering", "fallback")
    target = None
    if data.get("followup") and jobs:
        ref = data.get("job")
        target = next((j for j in jobs if str(j.number) == str(ref)), None) or resolve_job_reference(text, jobs) \
            or max(jobs, key=lambda j: j.number)
    if data["route"] == "job":
        return Route(FOLLOWUP_JOB if target else JOB, target.id if target else None, str(data.get("reason", "")), "model")
    return Route(FOLLOWUP_ANSWER if target else ANSWER, target.id if target else None, str(data.get("reason", "")), "model")
