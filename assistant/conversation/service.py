"""The conversation core: route a message, stream a grounded quick answer, or delegate to a job.

No Chainlit here: the web app, the CLI's `ask` and the tests all drive this class.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..access import RepoPolicy
from ..agent.citations import check_citations, render_markdown
from ..agent.tools import parse_arguments
from ..config import Settings
from ..domain.outcome import Outcome
from ..domain.answers import (AnswerAbout, AnswerDone, AnswerError, AnswerEvent, AnswerLookup, AnswerRetract,
                               AnswerToken)
from ..jobs.manager import JobManager, JobRequest
from ..llm.client import ModelClient, ModelError
from ..llm.guards import Instructions, StreamGuard
from ..llm.tokens import count_message_tokens
from ..prompts import load_prompt, render_prompt
from ..store import Job, NotFound, SteerMessage, Store
from .checkout import CheckoutError, reading_checkout
from .repo_tools import READ_TOOLS, ReadOnlyRepo, numbered_excerpt
from .retrieval import Retrieval, retrieve, split_joined_citations
from .route_classifier import shipped_classifier
from .router import (ANSWER, FOLLOWUP_ANSWER, FOLLOWUP_JOB, JOB, STEER, ReviewAsk, Route, continuation_refusal,
                     parse_steer_command, route_message, same_repo)
from .signals import ADDRESSED_JOB, STEER_NOW

log = logging.getLogger(__name__)

MAX_ANSWER_TURNS = 8
HISTORY_MESSAGES = 12
READ_LOG_TOOL = {"type": "function", "function": {
    "name": "read_log", "description": "Read numbered lines of a logged command output of the job (by chunk id).",
    "parameters": {"type": "object", "properties": {
        "chunk": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}},
        "required": ["chunk"], "additionalProperties": False}}}


# Messages of a thread that are the assistant's answers carry this kind in their metadata; everything
# else the app posts (headers, notices, job cards) is not conversation and never goes back to the model.
ANSWER_KIND = "answer"


class Conversation:
    def __init__(self, settings: Settings, store: Store, model: ModelClient, jobs: JobManager):
        self.settings = settings
        self.store = store
        self.model = model
        self.jobs = jobs
        self.classifier = shipped_classifier()  # read once per process; a broken install fails here, at start
        self.policy = RepoPolicy.from_settings(settings)

    # ------------------------------------------------------------------ routing
    def thread_jobs(self, thread_id: str) -> list[Job]:
        return self.store.list_jobs(thread_id=thread_id)

    def route(self, thread_id: str, text: str, command: str | None = None,
              attached_patch: str | None = None) -> Route:
        # A configured model decides what the rules leave open, the classifier standing by for a reply it
        # cannot read; with the small embedded model the classifier decides (it routes better, in
        # milliseconds: bench/routing.py), the model only where router.EMBEDDED_MODEL_BELOW says.
        return route_message(text, self.thread_jobs(thread_id), self.model, command=command, thread_id=thread_id,
                             constrained=self.settings.tool_protocol == "grammar", repo=self._thread_repo(thread_id),
                             classifier=self.classifier, embedded=self.settings.uses_local_model,
                             attached_patch=attached_patch)

    def _thread_repo(self, thread_id: str) -> str | None:
        thread = self.store.get_thread(thread_id)
        return (thread.repo if thread else None) or self.settings.default_repo

    # ------------------------------------------------------------------ steering
    def steer(self, thread_id: str, user_id: str | None, text: str, route: Route) -> tuple[Job, SteerMessage]:
        """A steer route: the words go to its job (JobManager.tell), to be read by its agent at the next step.
        SteerRefused (saying what to do instead) when the job has ended or the words are empty; NotFound for a
        job of another conversation."""
        if route.kind != STEER or not route.job_id:
            raise ValueError(f"not a steer route: {route.kind}")
        job = self.store.get_job(route.job_id)
        if job.thread_id != thread_id:
            raise NotFound(f"job {route.job_id} is not of this conversation")
        message = self.jobs.tell(job.id, steer_words(text, route), now=route.now, user_id=user_id)
        return job, message

    # ------------------------------------------------------------------ delegation
    def delegate(self, thread_id: str, user_id: str | None, text: str, route: Route | None = None,
                 attempts: int = 1) -> list[Job]:
        thread = self.store.get_thread(thread_id)
        repo = (thread.repo if thread else None) or self.settings.default_repo
        if not repo:
            raise CheckoutError("this conversation has no repository yet: set one in the chat settings "
                                "(a local path or a git URL)")
        parent = self._parent_for(route, thread_id, repo)
        ref = (thread.ref if thread else None) or self.settings.default_ref
        about = self._followed_job(route, parent, thread_id, repo)
        if about is None:
            return self.jobs.submit(JobRequest(task=text, repo=repo, ref=ref, attempts=attempts, thread_id=thread_id,
                                               user_id=user_id))
        return self.jobs.submit(JobRequest(
            task=followup_task(self.store, about, text, starts_from_result=parent is not None), repo=repo, ref=ref,
            attempts=attempts, thread_id=thread_id, user_id=user_id, parent_job_id=parent,
            title=followup_title(about, text), request=text))

    def review(self, thread_id: str, user_id: str | None, ask: ReviewAsk) -> Job:
        """A review route's job (jobs/review.py submit_review) on this conversation's repository: a ref against
        `ask.base` (else the conversation's ref, else the repository's default branch), a patch, or the diff of a job
        of this conversation. ReviewError, RepoError or CheckoutError say what to give instead; nothing is queued."""
        from ..jobs.review import ReviewError, submit_review
        from ..sandbox.base import RepoError

        thread = self.store.get_thread(thread_id)
        repo = (thread.repo if thread else None) or self.settings.default_repo
        ref = (thread.ref if thread else None) or self.settings.default_ref
        if ask.job_id:
            job = self.store.get_job(ask.job_id)
            if job.thread_id != thread_id:
                raise NotFound(f"job {ask.job_id} is not of this conversation")
            return submit_review(self.jobs, repo=job.repo, job_id=job.id, thread_id=thread_id, user_id=user_id)
        if not repo:
            raise CheckoutError("this conversation has no repository yet: set one in the chat settings "
                                "(a local path or a git URL), then ask for the review again")
        base = ask.base or ref
        try:
            return submit_review(self.jobs, repo=repo, base=base, head=ask.head, patch=ask.patch,
                                 thread_id=thread_id, user_id=user_id)
        except RepoError as exc:
            if ask.head and "does not exist" in str(exc):
                missing = ask.head if f"'{ask.head}'" in str(exc) else (base or "the base")
                raise ReviewError(f"{exc}. Nothing was started: push or create {missing} in {repo} (or fix the "
                                  f"name), then ask again, e.g. /review --base {base or 'main'} BRANCH") from None
            raise

    def _followed_job(self, route: Route | None, parent: str | None, thread_id: str, repo: str) -> Job | None:
        """The job a follow-up job is about: the parent it starts from, else the job of this conversation (and
        repository) the message followed up on though the new job may not build on it (failed, cancelled)."""
        wanted = parent or (route and (route.context_job_id or (route.job_id if route.kind == FOLLOWUP_JOB else None)))
        if not wanted:
            return None
        try:
            job = self.store.get_job(wanted)
        except NotFound:
            return None
        if job.thread_id != thread_id or not same_repo(job.repo, repo):
            return None
        return job

    def _parent_for(self, route: Route | None, thread_id: str, repo: str) -> str | None:
        """The job a follow-up job starts from: a job of this conversation that is worth building on
        (same repository, a result to start from; see continuation_refusal), else none."""
        if route is None or route.kind != FOLLOWUP_JOB or not route.job_id:
            return None
        try:
            parent = self.store.get_job(route.job_id)
        except NotFound:
            return None
        if parent.thread_id != thread_id:
            return None
        refusal = continuation_refusal(parent, repo, route.reference)
        if refusal:
            log.info("a new job, not building on %s", refusal)
            return None
        return parent.id

    # ------------------------------------------------------------------ quick answers
    def answer(self, thread_id: str, text: str, route: Route | None = None,
               history: list[dict[str, str]] | None = None) -> Iterator[AnswerEvent]:
        """Stream a grounded answer. Synchronous: the web app runs it in a worker thread."""
        route = route or Route(ANSWER)
        thread = self.store.get_thread(thread_id)
        repo = (thread.repo if thread else None) or self.settings.default_repo or ""
        ref = (thread.ref if thread else None) or self.settings.default_ref
        with ExitStack() as held:  # retention leaves the checkout alone while the answer reads it
            try:
                root = held.enter_context(reading_checkout(repo, ref, self.settings.data_dir, self.policy))
            except CheckoutError as exc:
                yield AnswerError(str(exc))
                return
            yield from self._grounded_answer(thread_id, text, route, history, repo, root)

    def _grounded_answer(self, thread_id: str, text: str, route: Route, history: list[dict[str, str]] | None,
                         repo: str, root: Path) -> Iterator[AnswerEvent]:
        spent = sum(self.store.usage_totals(thread_id=thread_id))
        if spent >= self.settings.answer_token_budget:
            yield AnswerError(f"this conversation has used its quick-answer budget ({spent} of "
                              f"{self.settings.answer_token_budget} tokens; ASSISTANT_ANSWER_TOKEN_BUDGET). "
                              "Start a new conversation or raise the budget.")
            return
        job = self.store.get_job(route.job_id) if route.kind == FOLLOWUP_ANSWER and route.job_id else None
        job_files = self._job_files(job)
        if job is not None:
            yield AnswerAbout(job.id, job.number, job.title, job.task)
        repo_view = ReadOnlyRepo(root, self.policy)
        answer = _AnswerRun(self, thread_id, text, repo, repo_view, job, job_files)
        if self.settings.answer_mode == "excerpts" or (self.settings.answer_mode == "auto"
                                                        and self.settings.uses_local_model):
            final = yield from answer.from_excerpts(history or [])
        else:
            final = yield from answer.with_tools(history or [])
        if final is None:
            return
        final = split_joined_citations(final)
        citations = self._check(final, repo_view, job, job_files)
        if answer.retrieval is not None and not any(c.valid for c in citations) and answer.retrieval.excerpts:
            # The answer came from these excerpts; when it cites none of them, say what it was based on.
            read = "\n\n" + "Based on: " + ", ".join(e.citation for e in answer.retrieval.excerpts)
            yield AnswerToken(read)
            final += read
            citations = self._check(final, repo_view, job, job_files)
        yield AnswerDone(final, [c.as_dict() for c in citations], job.id if job else None, sorted(job_files),
                         str(root))

    def history(self, thread_id: str, exclude_id: str | None = None) -> list[dict[str, str]]:
        """The conversation as the model sees it: the user's messages and the assistant's answers (as the
        model wrote them), never the app's own headers, notices, job cards or commands."""
        out = []
        for m in self.store.list_messages(thread_id):
            meta = m.meta or {}
            metadata, step = meta.get("metadata") or {}, meta.get("step") or {}
            text = (m.output or "").strip()
            if m.id == exclude_id or m.job_id or not text:
                continue
            if m.type == "user_message" and step.get("command") != "jobs" and not text.startswith("/jobs"):
                out.append({"role": "user", "content": text})
            elif m.type == "assistant_message" and metadata.get("kind") == ANSWER_KIND and metadata.get("answer_text"):
                out.append({"role": "assistant", "content": metadata["answer_text"]})  # an answer that failed has none
        return out[-HISTORY_MESSAGES:]

    def _job_files(self, job: Job | None) -> dict[str, str]:
        """The files of the job's final workspace that were kept (those its summary cited), by path.
        The workspace itself is gone when the job ends; these stored copies are what remains."""
        if job is None:
            return {}
        return json.loads(self.store.get_artifact(job.id, "cited_files") or "{}")

    def _run_read_tool(self, repo_view: ReadOnlyRepo, job: Job | None, job_files: dict[str, str], name: str,
                       args: dict) -> str:
        if name == "read_file" and job is not None and str(args.get("path", "")).removeprefix("./") in job_files:
            path = str(args["path"]).removeprefix("./")
            return numbered_excerpt(path, job_files[path], args.get("start"), args.get("end"),
                                    note=f" as job {job.number} left it")
        if name == "read_log":
            chunk = self.store.get_chunk(str(args.get("chunk", "")))
            if chunk is None or job is None or chunk.job_id not in self.store.lineage(job):
                return f"error: no logged output {args.get('chunk')!r} in this job"
            lines = chunk.text.splitlines()
            first = max(1, int(args.get("start") or 1))
            last = min(len(lines), int(args.get("end") or first + 199))
            body = "\n".join(f"{i:>5} | {lines[i - 1]}" for i in range(first, last + 1))
            return f"chunk {chunk.id}: $ {chunk.command} (exit {chunk.exit_code}; lines {first}-{last} of {len(lines)})\n{body}"
        return repo_view.run(name, args)

    def _followup_context(self, job: Job, job_files: dict[str, str], max_diff: int = 12_000) -> str:
        diff = self.store.get_artifact(job.id, "diff") or "(no diff)"
        if len(diff) > max_diff:
            diff = diff[:max_diff] + "\n… (diff shortened)"
        commands = "\n".join(f"- {c.id} (exit {c.exit_code}): {c.command[:160]}" for c in self.store.list_chunks(job.id)) or "(none)"
        kept = ", ".join(sorted(job_files)) or "(none)"
        return render_prompt("followup_context.md", number=str(job.number), title=job.title, state=job.state,
                             task=job.task, summary=job.summary or "(no summary)", diff=diff, commands=commands,
                             files=kept)

    def _trimmed_history(self, history: list[dict[str, str]]) -> list[dict[str, str]]:
        recent = history[-HISTORY_MESSAGES:]
        budget = self.settings.context_window // 4
        while recent and count_message_tokens(recent, self.model.model_for("answer")) > budget:
            recent = recent[1:]
        return recent

    def _check(self, text: str, repo_view: ReadOnlyRepo, job: Job | None, job_files: dict[str, str]):
        """File citations resolve against the job's kept files first, then the conversation's checkout."""
        lineage = self.store.lineage(job) if job is not None else set()

        def chunk_lookup(chunk_id: str):
            chunk = self.store.get_chunk(chunk_id)
            if chunk is None or chunk.job_id not in lineage:
                return None
            return chunk.line_count, chunk.job_id

        def file_lines(path: str):
            if path in job_files:
                return len(job_files[path].splitlines())
            return repo_view.line_count(path)
        return check_citations(text, chunk_lookup=chunk_lookup, file_lines=file_lines)

    @staticmethod
    def render_citations(text: str, citations: list[dict], link_base: str) -> str:
        """Markdown with each checked citation as a link to the cited lines."""
        def link(c: dict) -> str:
            target = f"F:{c['target']}" if c["kind"] == "file" else c["target"]
            return f"{link_base}/{target}?L={c['start']}-{c['end']}"
        return render_markdown(text, citations, link)


CUT_NOTE = ("\n\n*(The answer was cut here at the length limit of {limit} tokens; ask a narrower question, or raise "
            "ASSISTANT_ANSWER_MAX_TOKENS.)*")
LOOKUP_TURNS_NOTE = "(I ran out of lookup turns before answering; ask a narrower question.)"
EXCERPT_DIFF_CHARS = 1500   # a follow-up's diff, for a small model's prompt


class _AnswerRun:
    """One quick answer: the model's turns streamed through an output guard, retried once when the reply is
    unusable (an echo of its prompt, a loop, garbage), and replaced by the search result when the retry is
    no better. Methods are generators of AnswerEvents that return the final text (None after an error)."""

    def __init__(self, conversation: "Conversation", thread_id: str, question: str, repo: str,
                 repo_view: ReadOnlyRepo, job: Job | None, job_files: dict[str, str]):
        self.c = conversation
        self.repo = repo
        self.thread_id = thread_id
        self.question = question
        self.repo_view = repo_view
        self.job = job
        self.job_files = job_files
        self.retrieval: Retrieval | None = None
        self.limit = conversation.settings.answer_max_tokens

    # ------------------------------------------------------------------ the two ways to answer
    def from_excerpts(self, history: list[dict[str, str]]):
        """A small model: the product searches and reads, the model answers from numbered excerpts."""
        self.retrieval = retrieve(self.repo_view, self.question)
        for name, args, output in self.retrieval.lookups:
            yield AnswerLookup(name, args, output[:2000])
        followup = ""
        if self.job is not None:
            followup = self.c._followup_context(self.job, self.job_files, max_diff=EXCERPT_DIFF_CHARS) + "\n\n"
        example_question, example_answer = load_prompt("answer_excerpts_example.md").split("\n=====\n")
        # A worked example shows a small model what a cited answer looks like; the same prefix on every
        # question, so the server's prompt cache keeps it evaluated.
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": load_prompt("answer_excerpts_system.md").strip()},
            {"role": "user", "content": example_question.strip()},
            {"role": "assistant", "content": example_answer.strip()}]
        messages += self.c._trimmed_history(history)[-4:]
        messages.append({"role": "user", "content": render_prompt(
            "answer_excerpts_task.md", followup=followup, excerpts=self.retrieval.as_prompt(),
            question=self.question).strip()})
        return (yield from self._guarded(messages, None, Instructions.every_prompt()))

    def with_tools(self, history: list[dict[str, str]]):
        """A capable model: it looks things up itself with the read-only tools, a few turns at most."""
        job = self.job
        tools = list(READ_TOOLS) + ([READ_LOG_TOOL] if job else [])
        system = render_prompt("answer_system.md", repo=self.repo,
                               followup=self.c._followup_context(job, self.job_files) if job else "")
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        messages += self.c._trimmed_history(history)
        messages.append({"role": "user", "content": self.question})
        return (yield from self._guarded(messages, tools, Instructions.every_prompt()))

    # ------------------------------------------------------------------ guard, retry, fallback
    def _guarded(self, messages: list[dict[str, Any]], tools: list[dict] | None, instructions: Instructions):
        problem = None
        for attempt in range(2):
            turn_messages = list(messages)
            if attempt:
                turn_messages.append({"role": "user", "content": render_prompt("answer_retry.md", problem=problem)})
            result = yield from self._turns(turn_messages, tools, instructions)
            if result is None:
                return None
            final, problem, shown, cut = result
            if problem is None:
                if cut:
                    note = CUT_NOTE.format(limit=self.limit)
                    yield AnswerToken(note)
                    final += note
                return final
            log.warning("quick answer withheld (attempt %d): %s", attempt + 1, problem)
            if shown:
                yield AnswerRetract(problem)
        if self.retrieval is None:
            self.retrieval = retrieve(self.repo_view, self.question)
            for name, args, output in self.retrieval.lookups:
                yield AnswerLookup(name, args, output[:2000])
        fallback = self.retrieval.fallback_answer(problem or "no usable reply")
        yield AnswerToken(fallback)
        return fallback

    def _turns(self, messages: list[dict[str, Any]], tools: list[dict] | None, instructions: Instructions):
        """Model turns until one answers without tool calls: (final, problem, shown text, cut) or None on error."""
        shown = ""
        for _turn in range(MAX_ANSWER_TURNS):
            guard = StreamGuard(instructions, conversation=self.question)
            completion = None
            stream = self.c.model.stream_turn("answer", messages, tools=tools, thread_id=self.thread_id,
                                              max_tokens=self.limit)
            try:
                for kind, value in stream:
                    if kind == "text":
                        released = guard.feed(value)
                        if released:
                            shown += released
                            yield AnswerToken(released)
                        if guard.problem:
                            break   # closing the stream stops the generation
                    else:
                        completion = value
            except ModelError as exc:
                yield AnswerError(str(exc))
                return None
            finally:
                stream.close()
            if guard.problem:
                return "", guard.problem, shown, False
            assert completion is not None
            if not completion.tool_calls:
                rest = guard.finish()
                if guard.problem:
                    return "", guard.problem, shown, False
                if rest:
                    shown += rest
                    yield AnswerToken(rest)
                return guard.text, None, shown, completion.finish_reason == "length"
            rest = guard.finish() if (completion.content or "").strip() else ""
            if rest:
                shown += rest
                yield AnswerToken(rest)
            messages.append(completion.as_message())
            for call in completion.tool_calls:
                try:
                    args = parse_arguments(call.arguments)
                    output = self.c._run_read_tool(self.repo_view, self.job, self.job_files, call.name, args)
                except ValueError as exc:
                    args, output = {}, f"error: {exc}"
                yield AnswerLookup(call.name, args, output[:2000])
                messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
        yield AnswerToken(LOOKUP_TURNS_NOTE)
        return LOOKUP_TURNS_NOTE, None, shown + LOOKUP_TURNS_NOTE, False


__all__ = ["Conversation", "AnswerEvent", "Route", "ANSWER", "JOB", "FOLLOWUP_ANSWER", "FOLLOWUP_JOB", "STEER",
           "steer_words"]


def steer_words(text: str, route: Route) -> str:
    """What the job is told: the message without the /steer arguments or a leading "now:" (said by route.now)."""
    if route.decided_by == "command":
        return parse_steer_command(text)[2]
    body = text.strip()
    if route.answer:  # "job 2: yes" answers job 2 with "yes"
        body = ADDRESSED_JOB.sub("", body, count=1).strip() or body
    return body[STEER_NOW.match(body).end():].strip() if route.now and STEER_NOW.match(body) else body


# ---------------------------------------------------------------------- follow-up jobs
TITLE_CHARS = 80
FOLLOWUP_TASK_CHARS = 4_000      # the followed job's task and summary, each, as context
_FILLER = re.compile(r"^(?:(?:also|and|plus|please|pls|now|then|next|ok|okay|so|great|thanks|"
                     r"(?:can|could|would|will)\s+(?:you|u))\b[,\s]*)+", re.I)
_TRAILING_FILLER = re.compile(r"(?:[,\s]+(?:please|pls|thanks|thank\s+you|too|as\s+well))+$", re.I)


def _shortened(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + "\n… (shortened)"


def followup_task(store: Store, about: Job, request: str, *, starts_from_result: bool) -> str:
    """The task of a follow-up job: the user's words, then the job they follow up on (its task, how it ended,
    the kind of its result and its summary), so the agent knows what "it" is (prompts/followup_job.md)."""
    outcome = Outcome.from_dict(about.outcome)
    kind = outcome.kind or "not assessed"
    if outcome.kind_reason:
        kind += f" ({outcome.kind_reason})"
    if starts_from_result:
        start = f"This job starts from job {about.number}'s result: its changes are applied first (see below)."
    else:
        start = (f"This job does not start from job {about.number}'s result: the workspace is the repository as it "
                 "is, without its changes.")
    own_words = store.get_artifact(about.id, "request") or about.task   # its own request, not its context again
    return render_prompt("followup_job.md", request=request.strip(), number=str(about.number),
                         title=about.title or own_words.strip().splitlines()[0][:80], state=about.state, kind=kind,
                         starting_point=start, task=_shortened(own_words, FOLLOWUP_TASK_CHARS),
                         summary=_shortened(about.summary or "(no summary)", FOLLOWUP_TASK_CHARS)).strip()


def followup_title(about: Job, request: str) -> str:
    """"Fix the add function: add a test for it": the followed job's title and what this job adds, trimmed (at
    most 80 characters, cut at a word)."""
    base = (about.title or about.task.strip().splitlines()[0]).strip().rstrip(" .!?…")
    lines = request.strip().splitlines()
    ask = _FILLER.sub("", " ".join(lines[0].split()) if lines else "").strip().rstrip(" .!?")
    ask = _TRAILING_FILLER.sub("", ask).rstrip(" ,.!?")
    if not ask:
        return _trimmed(base or "Follow-up", TITLE_CHARS)
    title = f"{base}{'; ' if ':' in base else ': '}{ask}" if base else ask[:1].upper() + ask[1:]
    return _trimmed(title, TITLE_CHARS)


def _trimmed(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:-—") + "…"
