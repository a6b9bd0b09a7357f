"""Routing: each message becomes a quick answer, a new job, or a follow-up on a job of this conversation.

Deciders, in order:
- /ask and /code force either way;
- first-pass rules settle only the shapes they get right every time on the labelled set
  (bench/routing_set.jsonl; zero misroutes is the bar, bench/routing.py measures it);
- the rest: with a configured model endpoint, the router model, which is told the conversation's jobs;
  with the small embedded model or none, the shipped classifier (route_classifier.py), which routes
  better than the embedded model (bench/routing.py; the model may be asked where the classifier is unsure,
  see EMBEDDED_MODEL_BELOW).
  An unreadable model reply also goes to the classifier, so routing never fails.

A follow-up job starts from its parent's result, so the parent must be one worth building on: see
`continuation_refusal`.

While a job of the conversation has not ended, a message addressed to its work ("also handle the empty list",
"stop, use pathlib instead", "now: …") is a `steer`: it goes to that job (JobManager.tell) and reaches its agent at
the next step. The rules and the router model decide it; the shipped classifier was never trained on it and cannot,
so where it decides a job while another runs, the route carries `steer_offer` and the user picks.

A message asking to review a change ("review the branch feature/x against main", "review job 3's diff", "review this
patch" with the patch pasted or attached, "can you review my changes on fix-login") is a `review`: one narrow rule,
`review_rule`, decides it before the others (a job's work it is not); `/review` picks it explicitly.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..domain import states
from ..llm.client import ModelClient, ModelError
from ..llm.constrained import ModelOutputError
from ..prompts import render_prompt
from ..store import Job
from . import signals
from .route_classifier import RouteClassifier
from .signals import BY_DEFAULT, BY_MODEL, JobReference, find_job_reference, latest

ANSWER, JOB, FOLLOWUP_ANSWER, FOLLOWUP_JOB = "answer", "job", "followup_answer", "followup_job"
STEER = "steer"
REVIEW = "review"


@dataclass
class Route:
    kind: str                 # answer | job | followup_answer | followup_job | steer
    job_id: str | None = None  # a follow-up's job, or the job a steer goes to
    reason: str = ""
    decided_by: str = "rules"  # rules | model | classifier | command | fallback | choice (a button the user picked)
    reference: str = ""        # how a follow-up's job was named: number | ordinal | last | state | title | default | model
    context_job_id: str | None = None  # a follow-up that must not start from this job's result (it failed, was
                                       # cancelled, still runs) still carries its task and result as context
    now: bool = False          # a steer that also stops the command the job runs at the moment
    steer_offer: str | None = None  # a job decided while this job runs, by a decider that cannot tell a steer
                                    # ("unsure"): the user is asked to pick, "Send to job N" or "Start a new job"
    answer: bool = False       # a steer that answers the question its job waits on (the agent's ask_user)
    review: "ReviewAsk | None" = None  # a review route: what to review

    @property
    def is_job(self) -> bool:
        return self.kind in (JOB, FOLLOWUP_JOB)


def resolve_job_reference(text: str, jobs: list[Job]) -> Job | None:
    """"job 2", "#2", "the second job", "the last one", a title → that job of the conversation."""
    ref = find_job_reference(text, jobs)
    return ref.job if ref else None


# ---------------------------------------------------------------------- follow-up jobs
def same_repo(a: str | None, b: str | None) -> bool:
    def norm(r: str | None) -> str:
        r = (r or "").strip().rstrip("/")
        return r[:-4] if r.endswith(".git") else r
    return norm(a) == norm(b)


def continuation_refusal(parent: Job, repo: str | None, by: str) -> str | None:
    """Why a new job must not start from `parent`'s result, or None when it may.

    Never from a job on another repository (its patch belongs there) or one still running (no result
    yet); from a failed, interrupted or cancelled one only when the user named it ("job 3", "the last
    one"), never because a title matched or because it is the latest.
    """
    if repo is not None and not same_repo(parent.repo, repo):
        return f"job {parent.number} ran on another repository ({parent.repo})"
    if parent.state in states.ACTIVE:
        return f"job {parent.number} has not finished yet"
    if parent.state != states.SUCCEEDED and by not in signals.EXPLICIT:
        return f"job {parent.number} {parent.state}"
    return None


def _followup_job(ref: JobReference, repo: str | None, reason: str, decided_by: str) -> Route:
    refusal = continuation_refusal(ref.job, repo, ref.by)
    if refusal:
        # Not its result, but still what it was about (never a job of another repository: that is not this work).
        about = ref.job.id if repo is None or same_repo(ref.job.repo, repo) else None
        return Route(JOB, None, f"{reason}; a new job, not building on {refusal}", decided_by, ref.by,
                     context_job_id=about)
    return Route(FOLLOWUP_JOB, ref.job.id, f"{reason}; continues job {ref.job.number}", decided_by, ref.by)


def _target(text: str, jobs: list[Job], named: object = None) -> JobReference:
    """The job a follow-up is about: the one the message names, else the one the model named, else the latest."""
    own = find_job_reference(text, jobs)
    named_job = next((j for j in jobs if named is not None and str(j.number) == str(named).lstrip("#")), None)
    if named_job is None or (own is not None and own.job is named_job):
        return own or JobReference(latest(jobs), BY_DEFAULT)
    return JobReference(named_job, BY_MODEL)


def _route_from(text: str, jobs: list[Job], repo: str | None, *, work: bool, followup: bool, reason: str,
                decided_by: str, named: object = None) -> Route:
    if followup and jobs:
        target = _target(text, jobs, named)
        if work:
            return _followup_job(target, repo, reason, decided_by)
        return Route(FOLLOWUP_ANSWER, target.job.id, f"{reason} (job {target.job.number})", decided_by, target.by)
    return Route(JOB if work else ANSWER, None, reason, decided_by)


# ---------------------------------------------------------------------- steering
def active_jobs(jobs: list[Job]) -> list[Job]:
    """The conversation's jobs that have not ended (any state but a terminal one: a job waiting for the user too)."""
    return [j for j in jobs if j.state not in states.TERMINAL]


def steer_target(text: str, jobs: list[Job]) -> Job | None:
    """The job a steer goes to: the one the message names if it has not ended, else the only one running. None
    when it names a finished job (that is a follow-up) or several run and it names none."""
    running = active_jobs(jobs)
    if not running:
        return None
    ref = find_job_reference(text, jobs)
    if ref is not None and ref.by != BY_DEFAULT:
        return ref.job if ref.job.state not in states.TERMINAL else None
    return running[0] if len(running) == 1 else None


def _steer_rule(body: str, jobs: list[Job]) -> Route | None:
    """A message addressed to the work under way while a job runs: "now: …", "stop, …", "also …", "actually …",
    "don't touch the tests", "use pathlib instead", each also after the job it is for ("job 2: also …").
    Never a question."""
    said = signals.ADDRESSED_JOB.sub("", body, count=1)
    now = bool(signals.STEER_NOW.match(said) or signals.STEER_STOP.match(said))
    cue = now or signals.STEER_CUE.match(said) or signals.INSTEAD.search(said) or signals.KEEP_AWAY.match(said)
    if not cue:
        return None
    if "?" in body and not (signals.POLITE_ORDER.match(said) and signals.ALSO.search(said)):
        return None
    target = steer_target(body, jobs)
    if target is None:
        return None
    return Route(STEER, target.id, f"speaks to job {target.number}, which is still {target.state}", "rules",
                 now=now)


# ---------------------------------------------------------------------- a job waiting for the user
def waiting_jobs(jobs: list[Job]) -> list[Job]:
    """The conversation's jobs whose agent asked the user something and waits for the answer."""
    return sorted((j for j in jobs if j.state == states.WAITING), key=lambda j: j.number)


def answer_rule(text: str, jobs: list[Job]) -> Route | None:
    """While a job of the conversation waits for the user's answer, a typed message answers it: with one waiting,
    any message that does not name another job by its number; with several, the one it names ("job 2: yes"; "the
    second one" names no job: it is an answer). Several waiting and none named: SteerCommandError says how to answer."""
    waiting = waiting_jobs(jobs)
    body = " ".join(text.split())
    if not waiting or not body:
        return None
    ref = find_job_reference(body, jobs)
    number = ref.job.number if ref is not None and ref.by == signals.BY_NUMBER else None  # "job 2: yes", "#2"
    named = next((j for j in waiting if j.number == number), None)
    if number is None and len(waiting) == 1:
        named = waiting[0]
    if named is not None:
        return Route(STEER, named.id, f"job {named.number} waits for your answer", "rules", answer=True,
                     now=_says_now(signals.ADDRESSED_JOB.sub("", body, count=1)))
    if number is not None:
        return None  # it names another job of the conversation: the other rules decide
    listed = ", ".join(str(j.number) for j in waiting[:-1]) + " and " + str(waiting[-1].number)
    raise SteerCommandError(f"jobs {listed} are waiting for your answer; say which one it is for, e.g. "
                            f"\"job {waiting[0].number}: your answer\", or use the buttons on its card")


# ---------------------------------------------------------------------- first-pass rules
def _first_pass(text: str, jobs: list[Job], repo: str | None) -> Route | None:
    """Once a conversation has jobs, whether a message is about one of them takes judgement ("Add a test for
    the 429 response" follows a rate-limiting job): the rules then decide only messages that name a job."""
    body = " ".join(text.split())
    if not body:
        return None
    if signals.PASTED_LOG.search(text):
        # A pasted log with no question around it reports a failure to fix; with a question, whether it asks
        # for a fix or an explanation needs judgement.
        if not jobs and signals.READ_ONLY.search(body):   # "… what causes it? I don't want a fix yet"
            return Route(ANSWER, None, "a pasted error, asks for no changes")
        if jobs or "?" in signals.log_prose(text):
            return None
        return Route(JOB, None, "a pasted error, no question")
    if signals.SMALL_TALK.match(body) or signals.ack_remark(body):
        return Route(ANSWER, None, "small talk")
    body = signals.LEADING_ACK.sub("", body) or body   # "Nice. Why did it …?" asks like "Why did it …?"
    ref = find_job_reference(body, jobs)
    named = ref if ref is not None and ref.explicit else None
    if active_jobs(jobs) and not signals.READ_ONLY.search(body) and not _asks(body):
        steer = _steer_rule(body, jobs)
        if steer is not None:
            return steer
    if _asks(body):
        if jobs and (named or signals.ABOUT_DONE_WORK.search(body)):
            return _route_from(body, jobs, repo, work=False, followup=True, reason="asks about a job",
                               decided_by="rules")
        if not jobs and not signals.WORK_CLAUSE.search(body):
            return Route(ANSWER, None, "asks a question")
        return None
    if signals.READ_ONLY.search(body):
        if named:
            return _route_from(body, jobs, repo, work=False, followup=True, reason="asks about a job, no changes",
                               decided_by="rules")
        return None if jobs else Route(ANSWER, None, "asks for no changes")
    if not jobs and (signals.RUN_ORDER.match(body) or signals.FIND_AND_FIX.search(body)):
        return Route(JOB, None, "asks to run or to find and fix something")
    if not jobs and signals.LATER_ORDER.search(body):
        return Route(JOB, None, "asks a question, then for a change")
    if _orders(body):
        if not jobs:
            return Route(JOB, None, "asks for a change")
        if named:
            return _followup_job(named, repo, "asks for a change", "rules")
    elif named and signals.ORDER_CLAUSE.search(body) and not signals.QUESTION_START.match(body) \
            and ("?" not in body or (signals.one_question(body) and signals.POLITE_CLAUSE.search(body))):
        return _followup_job(named, repo, "asks for a change", "rules")
    return None


def _asks(body: str) -> bool:
    """A question, or an order to explain: one sentence, not proposing work ("how about adding …?")."""
    if signals.SUGGESTION.match(body):
        return False
    if signals.QUESTION_START.match(body) and signals.one_question(body):
        return True
    one_sentence = signals.one_sentence(body) and "?" not in body
    return one_sentence and bool(signals.WH_WORD.match(body) or signals.READ_ORDER.match(body))


def _orders(body: str) -> bool:
    """An order to change something, with no question in it: "Fix …", "Can you add …?", "Let's move …"."""
    if "?" in body.rstrip("?"):
        return False
    if signals.IMPERATIVE.match(body):
        return True
    return bool(signals.POLITE_ORDER.match(body)) and (signals.one_question(body) or signals.one_sentence(body))


# ---------------------------------------------------------------------- the model and the classifier
ROUTER_PROMPT_MARKER = "You route messages"  # how the router's system prompt begins (tests and benches script on it)
ROUTES = (ANSWER, JOB, FOLLOWUP_ANSWER, FOLLOWUP_JOB, STEER)
# With the embedded model, the model decides only what the classifier is less sure of than this (see
# Guess.certainty). 0: never. Measured with bench/routing.py (--model-below): Qwen2.5-Coder-1.5B through
# prompts/router.md, asked about the messages the classifier was least sure of (below 0.6), routed dev2 90%
# and dev3 77% right against the classifier's 95% and 92%, at about 1 s a message on a quiet machine
# (7 s under load): it misses follow-ups and bug reports. So the classifier decides them all.
# Measured again in round 2 as a tie-breaker for answer-vs-job only (a short few-shot prompt, a two-value schema):
# on the 104 held-out and dev messages the retrained classifier's work head was least sure of (certainty < 0.5)
# the model was right on 63, the classifier on 95 (below 0.1: 4 against 9 of 11), at a median 2.6 s a message.
EMBEDDED_MODEL_BELOW = 0.0


def route_schema(jobs: list[Job]) -> dict:
    """The decision a constrained model must give: one of the routes (follow-ups only when there are jobs, a steer
    only while one has not ended). No job number and no reason: every generated token costs a small local model
    about 0.1 s; the job a follow-up is about comes from the message ("job 2", a title) or is the latest."""
    routes = [ANSWER, JOB, FOLLOWUP_ANSWER, FOLLOWUP_JOB] if jobs else [ANSWER, JOB]
    if active_jobs(jobs):
        routes.append(STEER)
    return {"type": "object", "properties": {"route": {"type": "string", "enum": routes}}, "required": ["route"]}


def _parse_decision(content: str) -> dict:
    """{"route": one of ROUTES, "job": …} or the older {"route": "answer" | "job", "followup": bool, "job": …}."""
    match = re.search(r"\{.*\}", content or "", re.S)
    if not match:
        raise ValueError("no JSON object in the reply")
    data = json.loads(match.group(0))
    if not isinstance(data, dict) or data.get("route") not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {data.get('route') if isinstance(data, dict) else data!r}")
    route = data["route"]
    followup = route.startswith("followup") or bool(data.get("followup"))
    return {"work": route in (JOB, FOLLOWUP_JOB, STEER), "followup": followup, "job": data.get("job"),
            "reason": str(data.get("reason") or ""), "steer": route == STEER}


def job_listing(jobs: list[Job], repo: str | None) -> str:
    """The conversation's jobs as the router prompt names them."""
    lines = []
    for j in sorted(jobs, key=lambda j: j.number):
        elsewhere = "" if repo is None or same_repo(j.repo, repo) else f", on another repository: {j.repo}"
        lines.append(f"- job {j.number}: {j.title} ({j.state}{elsewhere})")
    return "\n".join(lines) or "(none)"


def _ask_model(text: str, jobs: list[Job], model: ModelClient, repo: str | None, thread_id: str | None,
               constrained: bool) -> dict:
    messages = [{"role": "system", "content": render_prompt("router.md", jobs=job_listing(jobs, repo))},
                {"role": "user", "content": text}]
    if constrained:
        # Small local models: a JSON-schema grammar (llama.cpp) keeps the reply well formed and short, and
        # temperature 0 makes the same message route the same way every time.
        reply = model.complete("router", messages, thread_id=thread_id, temperature=0, max_tokens=24,
                               response_format={"type": "json_object", "schema": route_schema(jobs)})
    else:
        reply = model.complete("router", messages, thread_id=thread_id, temperature=0, max_tokens=120)
    return _parse_decision(reply.content or "")


def _from_guess(text: str, jobs: list[Job], repo: str | None, guess, note: str = "") -> Route:
    what = ("a follow-up " if guess.followup else "a ") + ("job" if guess.work else "question")
    route = _route_from(text, jobs, repo, work=guess.work, followup=guess.followup, reason=f"reads as {what}{note}",
                        decided_by="classifier")
    return _offer_steer(route, text, jobs)


def _offer_steer(route: Route, text: str, jobs: list[Job]) -> Route:
    """A job decided while another job of the conversation runs, by a decider that cannot say "steer": unsure."""
    if route.is_job:
        target = steer_target(text, jobs)
        if target is not None:
            route.steer_offer = target.id
    return route


def _steer_from_model(text: str, jobs: list[Job], repo: str | None, named: object, reason: str) -> Route:
    """The model's steer: to the job it (or the message) names while that job has not ended; a steer for a job
    that has ended is the follow-up job the user can still have."""
    running = active_jobs(jobs)
    target = next((j for j in running if named is not None and str(j.number) == str(named).lstrip("#")), None)
    target = target or steer_target(text, jobs)
    if target is None and running:
        target = max(running, key=lambda j: j.number)
    if target is None:
        return _route_from(text, jobs, repo, work=True, followup=True, reason=f"{reason}; no job runs now",
                           decided_by="model", named=named)
    return Route(STEER, target.id, reason or f"the router model reads it as a message to job {target.number}",
                 "model", now=_says_now(text))


def _says_now(text: str) -> bool:
    body = " ".join(text.split())
    return bool(signals.STEER_NOW.match(body) or signals.STEER_STOP.match(body))


def _classify(text: str, jobs: list[Job], repo: str | None, classifier: RouteClassifier, note: str = "") -> Route:
    return _from_guess(text, jobs, repo, classifier.predict(text, jobs), note)


def route_message(text: str, jobs: list[Job], model: ModelClient | None, *, command: str | None = None,
                  thread_id: str | None = None, constrained: bool = False, repo: str | None = None,
                  classifier: RouteClassifier | None = None, embedded: bool = False,
                  model_below: float = EMBEDDED_MODEL_BELOW, attached_patch: str | None = None) -> Route:
    """Route one message of a conversation that has `jobs` and works on `repo`; `attached_patch` is the text of a
    .patch/.diff file sent with it.

    `model` None: the classifier (when given) decides what the rules leave open, else it is answered.
    `embedded` (the model is the small embedded one): the classifier decides what it is at least
    `model_below` sure of, the model the rest (by default nothing: see EMBEDDED_MODEL_BELOW).
    """
    if command == STEER:
        return steer_command(text, jobs)
    if command == REVIEW:
        return review_command(text, jobs, attached_patch)
    if command in ("ask", "code"):
        ref = find_job_reference(text, jobs)
        if ref is None:
            return Route(ANSWER if command == "ask" else JOB, None, f"/{command} chosen", "command")
        if command == "code":
            return _followup_job(ref, repo, "/code chosen", "command")
        return Route(FOLLOWUP_ANSWER, ref.job.id, "/ask chosen", "command", ref.by)
    quick = answer_rule(text, jobs) or review_rule(text, jobs, attached_patch) or _first_pass(text, jobs, repo)
    if quick is not None:
        return quick
    guess = None
    if classifier is not None and (model is None or embedded):
        guess = classifier.predict(text, jobs)
        if model is None or guess.sure(model_below):
            return _from_guess(text, jobs, repo, guess)
    if model is None:
        return Route(ANSWER, None, "no router model; answering", "fallback")
    try:
        data = _ask_model(text, jobs, model, repo, thread_id, constrained)
    except (ModelError, ModelOutputError, ValueError, json.JSONDecodeError) as exc:
        problem = f"; the router model could not decide: {str(exc)[:120]}"
        if classifier is not None:
            return _from_guess(text, jobs, repo, guess or classifier.predict(text, jobs), problem)
        return Route(ANSWER, None, f"answering{problem}", "fallback")
    if data["steer"]:
        return _steer_from_model(text, jobs, repo, data.get("job"), data["reason"])
    what = ("a follow-up " if data["followup"] else "a ") + ("job" if data["work"] else "question")
    route = _route_from(text, jobs, repo, work=data["work"], followup=data["followup"],
                        reason=data["reason"] or f"the router model reads it as {what}", decided_by="model",
                        named=data.get("job"))
    if route.kind == JOB and route.context_job_id and route.context_job_id in {j.id for j in active_jobs(jobs)}:
        route.steer_offer = route.context_job_id  # "more work on job N" while job N still runs: ask which
    return route


# ---------------------------------------------------------------------- /steer
_STEER_COMMAND = re.compile(r"^\s*(?:(?:job\s*)?#?(\d+)\b[\s:,]*)?(?:(now)\b[\s:,]*)?(.*)$", re.I | re.S)


class SteerCommandError(ValueError):
    """A /steer (or an answer to waiting jobs) the app cannot act on: the text says what to type instead."""


def parse_steer_command(text: str) -> tuple[int | None, bool, str]:
    """"/steer 2 now use pathlib" → (2, True, "use pathlib"); the number and "now" are both optional."""
    match = _STEER_COMMAND.match(text or "")
    number, now, rest = match.group(1), match.group(2), match.group(3).strip()
    if not now:
        lead = signals.STEER_NOW.match(rest)
        if lead:
            now, rest = "now", rest[lead.end():].strip()
    return (int(number) if number else None), bool(now), rest


def steer_command(text: str, jobs: list[Job]) -> Route:
    """/steer [N] [now] text: to job N, else to the conversation's running job. A job that has ended is still the
    target: the core refuses it (SteerRefused) and the app offers a follow-up job instead."""
    number, now, rest = parse_steer_command(text)
    if not rest:
        raise SteerCommandError("say what the job should do: /steer [job number] [now] your message")
    if number is not None:
        job = next((j for j in jobs if j.number == number), None)
        if job is None:
            raise SteerCommandError(f"this conversation has no job {number}"
                                    + (f"; its jobs are {', '.join(str(j.number) for j in jobs)}" if jobs else ""))
    else:
        running = active_jobs(jobs)
        if len(running) > 1:
            raise SteerCommandError("several jobs are running (" + ", ".join(str(j.number) for j in running)
                                    + "): name one, e.g. /steer " + str(running[-1].number) + " your message")
        if not running and not jobs:
            raise SteerCommandError("this conversation has no job to steer; send the message as a new job instead")
        job = running[0] if running else max(jobs, key=lambda j: j.number)
    return Route(STEER, job.id, "/steer chosen", "command", now=now)


# ---------------------------------------------------------------------- reviews
@dataclass(frozen=True)
class ReviewAsk:
    """What a review route reviews: a `head` ref (against `base`, None: the conversation's ref or the repository's
    default branch), the diff of job `job_id`, or a `patch` (on `base`)."""
    head: str | None = None
    base: str | None = None
    job_id: str | None = None
    patch: str | None = None


class ReviewCommandError(ValueError):
    """A review asked for in a way the app cannot act on: the text says what to type instead."""


REVIEW_USAGE = ("/review BRANCH (against the default branch), /review --base main BRANCH, /review job 3, or "
                "\"review this patch\" with the patch pasted or a .patch/.diff file attached")
_REVIEW_LEAD = re.compile(
    r"^(?:(?:hey|ok|okay|so|please|pls)[\s,]+)?"
    r"(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?|please\s+|pls\s+|i'?d\s+like\s+you\s+to\s+|let'?s\s+)?"
    r"(?:(?:code[\s-]?)?review|do\s+a\s+(?:code\s+)?review\s+of|give\s+(?:me\s+)?a\s+(?:code\s+)?review\s+of)\b\s*",
    re.I)
_REF = r"`?['\"]?([A-Za-z0-9_][\w./@^~{}+-]*?)['\"]?`?"
_VERSUS = r"(?:against|vs\.?|versus|compared\s+(?:to|with)|relative\s+to|on\s+top\s+of|onto|into|over)"
_TRAIL = re.compile(r"(?:[\s,]+(?:please|for\s+me|thanks?|thank\s+you))*[\s.!?]*$", re.I)
_REVIEW_JOB = re.compile(
    r"^(?:(?:the\s+)?(?:diff|changes?|patch|work|result)\s+(?:of|from|made\s+by|in)\s+)?(?:job\s*#?|#)(\d+)"
    r"(?:'s)?(?:\s+(?:diff|changes?|patch|work|result))?$", re.I)
_REVIEW_BRANCH = re.compile(
    r"^(?:(?:the|my|our)\s+)?(?:(?:changes|work|commits?)\s+(?:on\s+(?:the\s+)?(?:branch\s+)?|(?:in|from)\s+(?:the\s+)?"
    r"branch\s+)|(?:branch|ref|tag|commit)\s+)" + _REF + r"(?:\s+" + _VERSUS + r"\s+(?:the\s+)?(?:branch\s+)?"
    + _REF + r")?$", re.I)
_REVIEW_RANGE = re.compile(r"^" + _REF + r"\s+" + _VERSUS + r"\s+(?:the\s+)?(?:branch\s+)?" + _REF + r"$", re.I)
_REVIEW_PATCH = re.compile(r"^(?:(?:this|that|the|my|the\s+following|the\s+attached|attached)\s+(?:patch|diff|change)s?|"
                           r"this|that|it|these\s+changes)(?:\s+(?:against|on)\s+" + _REF + r")?\s*:?$", re.I)
_FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
_DIFF_START = re.compile(r"^(?:diff --git |--- (?:a/|/dev/null)|Index: )", re.M)


def pasted_patch(text: str) -> str | None:
    """The patch pasted in a message (a fenced block that is a diff, or everything from its first diff header),
    or None. A diff has a header and a hunk: "--- a/x" and "@@" lines."""
    def is_diff(body: str) -> bool:
        return bool(_DIFF_START.search(body)) and bool(re.search(r"^@@ ", body, re.M) or "GIT binary patch" in body)
    for fence in _FENCE.finditer(text or ""):
        if is_diff(fence.group(2)):
            return fence.group(2)[_DIFF_START.search(fence.group(2)).start():]
    start = _DIFF_START.search(text or "")
    if start and is_diff(text[start.start():]):
        return text[start.start():].rstrip("`~ \n") + "\n"
    return None


def _prose(text: str) -> str:
    """The words of a message, without the patch pasted in it."""
    patch_at = _DIFF_START.search(text)
    fence_at = _FENCE.search(text)
    cut = min(m.start() for m in (patch_at, fence_at) if m) if (patch_at or fence_at) else len(text)
    return " ".join(text[:cut].split())


def _clean_ref(ref: str | None) -> str | None:
    return ref.strip("`'\".,") if ref else None


def review_rule(text: str, jobs: list[Job], attached_patch: str | None = None) -> Route | None:
    """A message that asks for a review of a named change: a branch (or ref, tag, commit), a job's diff, or a patch
    pasted in it or attached. Only these shapes: "review the README" names no change, so the rule says nothing."""
    prose = _prose(text)
    lead = _REVIEW_LEAD.match(prose)
    if not lead:
        return None
    rest = _TRAIL.sub("", prose[lead.end():]).strip()
    patch = attached_patch or pasted_patch(text)
    job = _REVIEW_JOB.match(rest)
    if job:
        number = int(job.group(1))
        target = next((j for j in jobs if j.number == number), None)
        if target is None:
            raise ReviewCommandError(f"this conversation has no job {number}"
                                     + (f"; its jobs are {', '.join(str(j.number) for j in jobs)}" if jobs else ""))
        return Route(REVIEW, target.id, f"asks to review the diff of job {number}", "rules",
                     review=ReviewAsk(job_id=target.id))
    branch = _REVIEW_BRANCH.match(rest) or _REVIEW_RANGE.match(rest)
    if branch and not patch:
        head, base = _clean_ref(branch.group(1)), _clean_ref(branch.group(2))
        return Route(REVIEW, None, f"asks to review {head}" + (f" against {base}" if base else ""), "rules",
                     review=ReviewAsk(head=head, base=base))
    on_patch = _REVIEW_PATCH.match(rest) if rest else None
    if patch and (on_patch or not rest):
        return Route(REVIEW, None, "asks to review a patch", "rules",
                     review=ReviewAsk(patch=patch, base=_clean_ref(on_patch.group(1)) if on_patch else None))
    if on_patch and re.search(r"patch|diff", rest, re.I):
        raise ReviewCommandError("there is no patch to review in the message: paste it (the output of `git diff`) "
                                 "or attach a .patch or .diff file, and ask again")
    return None


_REVIEW_BASE_OPT = re.compile(r"(?:^|\s)--base(?:=|\s+)(\S+)")


def review_command(text: str, jobs: list[Job], attached_patch: str | None = None) -> Route:
    """/review [--base REF] (REF | job N), or /review [--base REF] with a patch pasted after it or attached."""
    patch = attached_patch or pasted_patch(text)
    words = _prose(text)
    base = None
    option = _REVIEW_BASE_OPT.search(words)
    if option:
        base = _clean_ref(option.group(1))
        words = (words[:option.start()] + " " + words[option.end():]).strip()
    if words.startswith("-"):
        raise ReviewCommandError(f"/review knows only --base; say what to review: {REVIEW_USAGE}")
    job = _REVIEW_JOB.match(words)
    if job:
        if base:
            raise ReviewCommandError("--base does not go with a job: a job's diff is reviewed against the commit it "
                                     "started from; type /review job " + job.group(1))
        number = int(job.group(1))
        target = next((j for j in jobs if j.number == number), None)
        if target is None:
            raise ReviewCommandError(f"this conversation has no job {number}"
                                     + (f"; its jobs are {', '.join(str(j.number) for j in jobs)}" if jobs else ""))
        return Route(REVIEW, target.id, "/review chosen", "command", review=ReviewAsk(job_id=target.id))
    if patch and not words:
        return Route(REVIEW, None, "/review chosen", "command", review=ReviewAsk(patch=patch, base=base))
    ref = re.fullmatch(_REF, words) if words else None
    if ref and not patch:
        return Route(REVIEW, None, "/review chosen", "command", review=ReviewAsk(head=_clean_ref(ref.group(1)),
                                                                                  base=base))
    if ref and patch:
        raise ReviewCommandError("give either a ref or a patch to /review, not both")
    raise ReviewCommandError(f"say what to review: {REVIEW_USAGE}")
