"""The `assistant` command: every subcommand maps to one function over the same core as the web app."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .config import Settings, SettingsError, load_settings
from .domain.answers import AnswerAbout, AnswerDone, AnswerError, AnswerLookup, AnswerRetract, AnswerToken
from .domain.outcome import Outcome

REPO_ROOT = Path(__file__).resolve().parent.parent


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- serve
def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    env = dict(os.environ)
    env["CHAINLIT_APP_ROOT"] = str(REPO_ROOT)
    host = args.host or settings.host
    port = str(args.port or settings.port)
    chainlit = shutil.which("chainlit", path=str(Path(sys.executable).parent)) or shutil.which("chainlit")
    if not chainlit:
        _err("chainlit is not installed in this environment; run ./run.sh")
        return 2
    if args.no_workers:
        env["ASSISTANT_SERVE_WORKERS"] = "false"
    if settings.uses_local_model and not _prepare_local_model(settings):
        return 2
    _err(f"assistant: serving on http://{host}:{port} (data in {settings.data_dir})")
    cmd = [chainlit, "run", str(REPO_ROOT / "assistant" / "app.py"), "--headless", "--host", host, "--port", port]
    from .serve import serve
    return serve(settings, cmd, env, REPO_ROOT)


def _prepare_local_model(settings: Settings) -> bool:
    """Before the server starts: which embedded model, assembled and verified (a minute the first time), said once."""
    from .llm.local import LocalModelConfig, LocalModelError, LocalModelServer, weights_verified
    server = LocalModelServer(LocalModelConfig.from_settings(settings))
    weights = server.config.bundled
    if weights is not None and not weights_verified(server.config):
        _err(f"assistant: first start: assembling {weights.description} ({weights.size_text}) from its packages "
             "and checking its sha256")
    try:
        server.resolve_model()
    except LocalModelError as exc:
        _err(f"assistant: the embedded model cannot start: {exc}")
        return False
    _err(f"assistant: embedded model {server.describe()}")
    return True


# ---------------------------------------------------------------------------------------------- jobs
def _assistant(settings: Settings):
    from .core import Assistant
    a = Assistant(settings)
    a.start()
    return a


def _progress_line(event, job_id: str = "JOB") -> str | None:
    """One stderr line for a job event, or None for events the CLI does not show."""
    from .domain import events as ev
    match event:
        case ev.StateChanged(state=state, reason=reason):
            return state + (f": {reason}" if reason else "")
        case ev.SetupCommandRan():
            return (f"setup $ {event.command}  → exit {event.exit_code} in {event.duration_s:.1f} s "
                    f"(chunk {event.chunk_id})")
        case ev.StepFinished():
            extra = f" → exit {event.exit_code}" if event.exit_code is not None else ""
            return (f"step {event.step}: {event.title[:160]}{extra}"
                    + (f" (chunk {event.chunk_id})" if event.chunk_id else ""))
        case ev.AgentMessage(text=text):
            return f"note: {text[:300]}"
        case ev.Notice():
            return f"{'warning' if event.warning else 'notice'}: {event.text[:500]}"
        case ev.SandboxPlaced(engine=engine):
            return f"sandbox on engine {engine}"
        case ev.GroupRanked(recommended=recommended) if recommended:
            return f"recommended attempt: {recommended}"
        case ev.SteerQueued(text=text, now=now):
            return f"message queued{' (now)' if now else ''}: {text[:200]}"
        case ev.SteerDelivered(step=step, how=how, stopped=stopped):
            return (f"message delivered at step {step}" + (" as guidance" if how == "guidance" else "")
                    + (f", stopping $ {stopped[:120]}" if stopped else ""))
        case ev.SteerAcknowledged(excerpt=excerpt):
            return f"message acknowledged: {excerpt}"
        case ev.QuestionAsked(question=question, choices=choices, timeout_s=timeout_s):
            offered = f" (choices: {' | '.join(choices)})" if choices else ""
            return (f"the agent asks: {question[:500]}{offered}\n  waiting for your answer (up to {timeout_s:.0f} s): "
                    f'assistant jobs tell {job_id} "your answer"')
        case ev.QuestionAnswered(answer=answer, waited_s=waited_s):
            return f"answered after {waited_s:.0f} s: {answer[:200]}"
        case ev.QuestionTimedOut(waited_s=waited_s):
            return f"no answer came within {waited_s:.0f} s"
    return None


def _progress_printer(job_ids: set[str]):
    """Live progress of the given jobs on stderr."""
    def on_update(update) -> None:
        if update.job_id not in job_ids:
            return
        line = _progress_line(update.event, update.job_id)
        if line:
            _err(f"[{update.job_id}] {line}")
    return on_update


def _job_json(assistant, job) -> dict:
    from .domain.events import Notice
    from .jobs.results import job_usage
    return {
        "job_id": job.id, "number": job.number if job.thread_id else None, "thread_id": job.thread_id,
        "status": job.state, "reason": job.reason, "title": job.title,
        "summary": job.summary or "", "diff": assistant.store.get_artifact(job.id, "diff") or "",
        "patch": assistant.store.get_artifact(job.id, "patch") or "",
        "citations": job.citations or [], "setup_network": job.setup_network, "agent_network": job.agent_network,
        "backend": job.backend, "cache_hit": job.cache_hit, "base_commit": job.base_commit, "steps": job.steps,
        "prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
        "attempt": job.attempt, "attempts": job.attempts, "group_id": job.group_id, "outcome": job.outcome or {},
                "notices": [e.text for e in assistant.store.read_events(job.id) if isinstance(e, Notice)],
        "blocked_requests": [{"command": c.command, "chunk_id": c.id, "lines": c.text.splitlines()}
                             for c in assistant.store.list_chunks(job.id) if c.command.startswith("egress proxy:")],
        "model": job.model, "usage": job_usage(assistant.store, job, assistant.settings),
        "self_review": _self_review_json(assistant.store, job),
    }


def _self_review_json(store, job) -> dict | None:
    """The job's self-review (ASSISTANT_SELF_REVIEW): status, and the review's result when it completed."""
    from .jobs.self_review import load_self_review
    review = load_self_review(store, job.id)
    return review.as_dict() if review is not None else None


def _checked_summary(job) -> str:
    """The summary with citations marked ✓/✗ and claims the log does not support marked ⚠."""
    from .agent.citations import render_plain
    from .agent.claims import mark_claims, plain_mark
    return render_plain(mark_claims(job.summary or "", Outcome.from_dict(job.outcome).claims, plain_mark),
                        job.citations or [])


def _print_job_result(assistant, job) -> None:
    from .jobs.results import result_lines
    print(f"{_job_name(job)}: {job.state}" + (f" ({job.reason})" if job.reason else ""))
    for line in result_lines(job):
        print(line)
    from .jobs.self_review import self_review_lines
    for line in self_review_lines(assistant.store, job.id):
        print(line)
    if job.summary:
        print("\n" + _checked_summary(job))
    diff = assistant.store.get_artifact(job.id, "diff")
    if diff:
        print("\n" + diff)


def _repo_arg(settings: Settings, repo: str) -> str:
    """--repo as the job will use it; RepoNotAllowed when this server's policy forbids it."""
    from .access import RepoPolicy, is_url
    RepoPolicy.from_settings(settings).check(repo)
    return repo if is_url(repo) else str(Path(repo).expanduser().resolve())


def _wait_all(assistant, jobs) -> list:
    return [assistant.jobs.wait(j.id) for j in jobs]


def _agent_internet_arg(args: argparse.Namespace) -> dict | str | None:
    """The job request's agent-internet layer from the flags (None: the settings and the repository decide)."""
    if args.no_internet:
        return "off"
    if not (args.allow_domain or args.allow_preset or args.allow_methods):
        return None
    table: dict = {"mode": "allowlist"}
    if args.allow_domain:
        table["domains"] = args.allow_domain
    if args.allow_preset:
        table["presets"] = args.allow_preset
    if args.allow_methods:
        table["methods"] = args.allow_methods
    return table


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from .access import RepoNotAllowed
    from .jobs.manager import JobRequest
    try:
        repo = _repo_arg(settings, args.repo)
    except RepoNotAllowed as exc:
        _err(f"assistant: --repo refused: {exc}")
        return 2
    from .jobs.uncommitted import UncommittedError
    assistant = _assistant(settings)
    try:
        try:
            jobs = assistant.jobs.submit(JobRequest(task=args.task, repo=repo, ref=args.ref,
                                                    setup=args.setup if args.setup else None,
                                                    attempts=args.attempts, agent_internet=_agent_internet_arg(args),
                                                    include_uncommitted=args.include_uncommitted))
        except UncommittedError as exc:
            _err(f"assistant: --include-uncommitted: {exc}")
            return 2
        unsubscribe = assistant.jobs.subscribe(_progress_printer({j.id for j in jobs}))
        try:
            done = _wait_all(assistant, jobs)
        except KeyboardInterrupt:
            for j in jobs:
                assistant.jobs.cancel(j.id)
            done = _wait_all(assistant, jobs)
        unsubscribe()
        ranked = sorted(done, key=lambda j: Outcome.from_dict(j.outcome).rank or j.attempt)
        best = ranked[0]
        if args.json:
            out = _job_json(assistant, best)
            if len(done) > 1:
                out["attempts_results"] = [_job_json(assistant, j) for j in ranked]
                out["recommended"] = next((j.id for j in ranked if Outcome.from_dict(j.outcome).recommended), None)
            print(json.dumps(out, indent=2, default=str))
        else:
            for j in ranked:
                if len(done) > 1:
                    outcome = Outcome.from_dict(j.outcome)
                    rec = " (recommended)" if outcome.recommended else ""
                    print(f"=== attempt {j.attempt} of {j.attempts}, rank {outcome.rank}{rec}")
                _print_job_result(assistant, j)
        return 0 if best.state == "succeeded" else 1
    finally:
        assistant.close()


def review_json(assistant, job) -> dict:
    """`assistant review --json`: the job's fields and its review (verdict, findings with checked citations and
    the proofs the product ran, the proof tests as patches)."""
    from .jobs.review import load_review
    result = load_review(assistant.store, job.id)
    out = {"job_id": job.id, "status": job.state, "reason": job.reason, "summary": job.summary or "",
           "citations": job.citations or [], "verdict": None, "findings": [], "proof_patches": []}
    if result is None:
        return out
    data = result.as_dict()
    data["reviewer_summary"] = data.pop("summary")  # "summary" stays the job's, the review as rendered and checked
    out.update(data)
    out["proof_patches"] = [{"finding": f.id, "path": f.proof.test_path, "status": f.proof.status,
                             "patch": f.proof.patch}
                            for f in result.findings if f.proof is not None and f.proof.patch]
    return out


def cmd_review(settings: Settings, args: argparse.Namespace) -> int:
    from .access import RepoNotAllowed
    from .jobs.review import ReviewError, submit_review
    from .sandbox.base import RepoError
    patch = None
    if args.patch:
        try:
            patch = Path(args.patch).read_text()
        except OSError as exc:
            _err(f"assistant: --patch {args.patch}: {exc.strerror or exc}; give a patch file made by `git diff`")
            return 2
    if not args.job and not args.repo:
        _err("assistant: review needs --repo (a local path or git URL), or --job ID")
        return 2
    repo = None
    if args.repo:
        try:
            repo = _repo_arg(settings, args.repo)
        except RepoNotAllowed as exc:
            _err(f"assistant: --repo refused: {exc}")
            return 2
    if args.fix and not args.job:
        _err("assistant: --fix needs --job naming the review job whose finding to fix")
        return 2
    assistant = _assistant(settings)
    try:
        job_id = None
        if args.job:
            job = _find_job(assistant.store, args.job, None, "show")
            if job is None:
                return 2
            job_id, repo = job.id, job.repo
        if args.fix:
            return _review_fix(assistant, job, args)
        try:
            job = submit_review(assistant.jobs, repo=repo, base=args.base, head=args.head, patch=patch, job_id=job_id,
                                setup=args.setup or None)
        except (ReviewError, RepoError, RepoNotAllowed) as exc:
            _err(f"assistant: review: {exc}")
            return 2
        done = _follow(assistant, job)
        if args.json:
            print(json.dumps(review_json(assistant, done), indent=2, default=str))
        else:
            _print_job_result(assistant, done)
            proofs = assistant.store.get_artifact(done.id, "review_proofs")
            if proofs:
                print("\nProof tests (git apply):\n" + proofs)
        return 0 if done.state == "succeeded" else 1
    finally:
        assistant.close()


def _follow(assistant, job):
    """One job's progress printed until it ends (Ctrl-C cancels it); the ended job."""
    unsubscribe = assistant.jobs.subscribe(_progress_printer({job.id}))
    try:
        return assistant.jobs.wait(job.id)
    except KeyboardInterrupt:
        assistant.jobs.cancel(job.id)
        return assistant.jobs.wait(job.id)
    finally:
        unsubscribe()


def _review_fix(assistant, review_job, args) -> int:
    """`assistant review --job REVIEW --fix f1|blockers`: the follow-up job, run and printed as `run` prints one."""
    from .jobs.review import ReviewError, fix_blockers, fix_finding
    try:
        job = (fix_blockers(assistant.jobs, review_job.id) if args.fix == "blockers"
               else fix_finding(assistant.jobs, review_job.id, args.fix))
    except (ReviewError, KeyError) as exc:
        _err(f"assistant: --fix: {exc.args[0] if isinstance(exc, KeyError) else exc}")
        return 2
    done = _follow(assistant, job)
    if args.json:
        print(json.dumps(_job_json(assistant, done), indent=2, default=str))
    else:
        _print_job_result(assistant, done)
    return 0 if done.state == "succeeded" else 1


def cmd_ask(settings: Settings, args: argparse.Namespace) -> int:
    from .access import RepoNotAllowed
    from .agent.citations import PlainStream, render_plain
    try:
        repo = _repo_arg(settings, args.repo)
    except RepoNotAllowed as exc:
        _err(f"assistant: --repo refused: {exc}")
        return 2
    assistant = _assistant(settings)
    try:
        user = assistant.store.get_or_create_user("cli")
        thread = assistant.store.create_thread(user_id=user.id, name=args.question[:60], repo=repo, ref=args.ref)
        route = assistant.conversation.route(thread.id, args.question)
        _err(f"routed: {route.kind} ({route.reason})")
        if route.is_job:
            jobs = assistant.conversation.delegate(thread.id, user.id, args.question, route)
            unsubscribe = assistant.jobs.subscribe(_progress_printer({j.id for j in jobs}))
            done = _wait_all(assistant, jobs)
            unsubscribe()
            for j in done:
                _print_job_result(assistant, j)
            return 0 if all(j.state == "succeeded" for j in done) else 1
        # On a terminal the reply streams as it comes (citations shown as [calc.py:L1-5]) and their checks follow
        # on one line; into a pipe or file the finished reply is printed once, each citation marked where it
        # stands ([calc.py:L1-5 ✓]), as `run` prints a summary. What it looks up shows on stderr meanwhile.
        live = PlainStream() if sys.stdout.isatty() else None
        streamed = ""
        for event in assistant.conversation.answer(thread.id, args.question, route):
            if isinstance(event, AnswerAbout):
                _err(event.text)
            elif isinstance(event, AnswerToken):
                streamed += event.text
                if live is not None:
                    print(live.feed(event.text), end="", flush=True)
            elif isinstance(event, AnswerLookup):
                _err(f"  ({event.tool} {json.dumps(event.arguments)[:120]})")
            elif isinstance(event, AnswerRetract):  # the rest of that reply was unusable and is not shown
                streamed = ""
                if live is not None:
                    print(live.end(), flush=True)
                    live = PlainStream()
                _err(f"(the model's reply was cut off: {event.text}; answering again)")
            elif isinstance(event, AnswerError):
                if live is not None:
                    print(live.end(), flush=True)
                elif streamed.strip():  # what came before the error, its citations unchecked
                    print(render_plain(streamed, []))
                _err(f"error: {event.text}")
                return 1
            elif isinstance(event, AnswerDone):
                if live is None:
                    print(render_plain(event.text, event.citations))
                else:
                    print(live.end())
                    if event.citations:
                        print("citations: " + " · ".join(render_plain(c["text"], event.citations)
                                                         for c in event.citations))
        return 0
    except BrokenPipeError:  # the reader went away: main() ends quietly
        raise
    except Exception as exc:  # an answer that failed: one line, no traceback (it would show host paths); the log has it
        import logging
        logging.getLogger("assistant.cli").debug("ask failed", exc_info=True)
        _err(f"error: the answer failed ({type(exc).__name__}); ASSISTANT_LOG_LEVEL=DEBUG shows where")
        return 1
    finally:
        assistant.close()


def _job_name(job) -> str:
    """A job as the web app names it: "job 2 (id ab12cd34)" in a conversation; "job ab12cd34" without one."""
    return f"job {job.number} (id {job.id})" if job.thread_id else f"job {job.id}"


def _thread_label(thread) -> str:
    return f"conversation {thread.id[:8]}" + (f" \u201c{thread.name[:50]}\u201d" if thread.name else "")


def _find_thread(store, ref: str):
    """The conversation --thread names, or None after saying why not."""
    threads = store.find_threads(ref)
    if len(threads) == 1:
        return threads[0]
    if not threads:
        _err(f"assistant: no conversation {ref!r}: give its id (or the start of it, as `assistant jobs list` shows "
             "it) or its name")
        return None
    _err(f"assistant: {ref!r} names {len(threads)} conversations; give more of the id:\n"
         + "\n".join(f"  {t.id}  {t.name or ''}" for t in threads))
    return None


def _find_job(store, ref: str, thread_ref: str | None, action: str = "show"):
    """The job a command names: a full id, a unique start of one, or the number the web app shows ("Job 2"),
    within --thread when given. None after saying why not, listing the jobs an ambiguous reference could mean."""
    thread = None
    if thread_ref:
        thread = _find_thread(store, thread_ref)
        if thread is None:
            return None
    jobs = store.find_jobs(ref, thread_id=thread.id if thread else None)
    if len(jobs) == 1:
        return jobs[0]
    where = f" in {_thread_label(thread)}" if thread else ""
    if not jobs:
        _err(f"assistant: no job {ref!r}{where}: give a job's id or its number (`assistant jobs list` shows both)")
        return None
    threads = {j.thread_id: store.get_thread(j.thread_id) for j in jobs if j.thread_id}
    lines = []
    for j in jobs:
        t = threads.get(j.thread_id)
        owner = (_thread_label(t) if t else f"conversation {j.thread_id[:8]}") if j.thread_id else "no conversation"
        lines.append(f"  {j.id}  job {j.number if j.thread_id else '-'} of {owner}, {j.state}: {j.title[:50]}")
    example = next((j.thread_id[:8] for j in jobs if j.thread_id and j.number == int(ref)), None) \
        if ref.isdigit() and not thread else None
    hint = "give the job's id" + (f", or its conversation, e.g. assistant jobs {action} {ref} --thread {example}"
                                  if example else "")
    _err(f"assistant: {ref!r} could mean {len(jobs)}{'+' if len(jobs) >= 20 else ''} jobs{where}; {hint}:\n"
         + "\n".join(lines))
    return None


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from .store import Store
    store = Store(settings.resolved_database_url)
    try:
        # A job whose runner died (kill -9 of `assistant run`, a crashed server) is shown as what it is;
        # with the queue, workers' heartbeats decide that instead.
        if not settings.uses_queue:
            from .jobs.manager import interrupt_orphans  # assessed; their end notified by the next server
            interrupt_orphans(settings, store, "the process running this job died; retry it")
        if args.action == "list":
            thread = _find_thread(store, args.thread) if args.thread else None
            if args.thread and thread is None:
                return 2
            rows = store.list_jobs(thread_id=thread.id if thread else None, limit=10_000)[-args.limit:]
            if not rows:
                print("no jobs yet" + (f" in {_thread_label(thread)}" if thread else ""))
                return 0
            # JOB is the number the web app shows ("Job 2"), counted per conversation; jobs of `assistant run`
            # belong to none and have no number.
            print(f"{'ID':<8}  {'JOB':>3}  {'CONVERSATION':<12}  {'STATE':<11} {'KIND':<9} {'CREATED':<16}  TITLE")
            for j in rows:
                kind = Outcome.from_dict(j.outcome).kind or "-"
                number = str(j.number) if j.thread_id else "-"
                print(f"{j.id:<8}  {number:>3}  {(j.thread_id or '-')[:8]:<12}  {j.state:<11} {kind:<9} "
                      f"{j.created_at:%Y-%m-%d %H:%M}  {j.title[:70]}")
            return 0
        if not args.id:
            _err(f"assistant jobs {args.action} needs a job: its id or its number (see `assistant jobs list`)")
            return 2
        job = _find_job(store, args.id, args.thread, args.action)
        if job is None:
            return 2
        if args.action == "show" and args.json:
            from types import SimpleNamespace
            print(json.dumps(_job_json(SimpleNamespace(store=store, settings=settings), job), indent=2, default=str))
            return 0
        if args.action == "show":
            from .jobs.results import conversation_usage, job_usage, result_lines, usage_line
            for key in ("id", "state", "reason", "title", "repo", "ref", "backend", "base_commit", "setup_network",
                        "agent_network", "cache_hit", "steps", "model", "prompt_tokens", "completion_tokens", "created_at",
                        "running_at", "finished_at"):
                print(f"{key:>18}: {getattr(job, key)}")
                if key == "id" and job.thread_id:
                    thread = store.get_thread(job.thread_id)
                    print(f"{'job':>18}: {job.number} of "
                          + (_thread_label(thread) if thread else f"conversation {job.thread_id[:8]}")
                          + f" ({job.thread_id})")
            print(f"{'task':>18}: {job.task}")
            from .jobs.uncommitted import notice_text
            from .jobs.uncommitted import read as read_uncommitted
            uncommitted = read_uncommitted(store, job.id)
            if uncommitted:
                print(f"{'working copy':>18}: {notice_text(uncommitted)}")
            print(f"{'usage':>18}: {usage_line(job_usage(store, job, settings), job)}")
            if job.thread_id:
                print(f"{'conversation usage':>18}: {usage_line(conversation_usage(store, job.thread_id, settings))}")
            for line in result_lines(job):
                print(line)
            from .jobs.self_review import self_review_lines
            for line in self_review_lines(store, job.id):
                print(line)
            from .notify import delivery_line
            for row in store.list_notifications(job.id):  # one per webhook URL (ASSISTANT_WEBHOOK_URLS)
                print(f"{'notification':>18}: {delivery_line(row)}")
            from .jobs.asking import pending_question
            from .domain.states import WAITING
            asked = pending_question(store.read_events(job.id)) if job.state == WAITING else None
            if asked is not None:
                print(f"{'question':>18}: {asked.question}")
                if asked.choices:
                    print(f"{'choices':>18}: {' | '.join(asked.choices)}")
                print(f"{'answer with':>18}: assistant jobs tell {job.id} \"…\" (waits up to {asked.timeout_s:.0f} s)")
            from .jobs.steering import receipt_line
            for message in store.list_steer_messages(job.id):  # `assistant jobs tell`, the web app's messages
                print(f"{'steering':>18}: {receipt_line(message)}")
            if job.summary:
                print("\n" + _checked_summary(job))
            return 0
        if args.action == "logs":
            chunks = store.list_chunks(job.id)
            if args.chunk:
                chunk = next((c for c in chunks if c.id == args.chunk), None)
                if chunk is None:
                    _err(f"{_job_name(job)} has no chunk {args.chunk}")
                    return 1
                print(f"$ {chunk.command}   (exit {chunk.exit_code}, {chunk.duration_s:.2f} s)")
                for i, line in enumerate(chunk.text.splitlines(), 1):
                    print(f"{i:>5} | {line}")
                return 0
            for c in chunks:
                print(f"{c.id}  {c.phase:<5} exit {str(c.exit_code):>4}  {c.line_count:>5} lines  $ {c.command[:100]}")
            return 0
        if args.action == "diff":
            print(store.get_artifact(job.id, "patch" if args.patch else "diff") or "(no diff)")
            return 0
        if args.action == "tell":
            if not args.text or not args.text.strip():
                _err('assistant jobs tell needs the message after the job, e.g. assistant jobs tell 2 "use the v2 API"')
                return 2
            from .jobs.manager import tell_from_command_line
            from .jobs.steering import SteerRefused
            try:
                message = tell_from_command_line(settings, store, job.id, args.text, now=args.now)
            except SteerRefused as exc:
                _err(f"assistant: {exc}")
                return 1
            from .domain.states import WAITING
            if job.state == WAITING:
                print(f"answered {_job_name(job)}'s question; its agent goes on with your answer "
                      f"(`assistant jobs show {job.id}` shows the receipt)")
                return 0
            when = ("now: the command it runs is stopped and it reads the message at its next step" if message.now
                    else "at its next step")
            print(f"told {_job_name(job)} ({job.state}); its agent reads it {when} "
                  f"(`assistant jobs show {job.id}` shows the receipt)")
            return 0
        if args.action == "cancel":
            from .domain.states import TERMINAL
            if job.state in TERMINAL:
                print(f"{_job_name(job)} already ended: {job.state}")
                return 1
            if settings.uses_queue:  # reaches the job on whichever worker runs it
                from .jobs.manager import cancel_from_command_line
                cancel_from_command_line(settings, store, job.id)
            else:  # recorded and notified here; a server running the job sees it in the store and stops the run
                from .jobs.manager import cancel_here
                cancel_here(settings, store, job.id)
            print(f"{_job_name(job)} cancelled")
            return 0
        return 2
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- doctor
def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from .doctor import run_checks
    checks = run_checks(settings)
    ok_all = True
    for check in checks:
        mark = "ok " if check.ok else ("-- " if not check.required else "NO ")
        print(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            print(f"       fix: {check.fix}")
        ok_all = ok_all and (check.ok or not check.required)
    return 0 if ok_all else 1


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.uses_queue:
        _err("assistant worker serves the job queue of a PostgreSQL database: set ASSISTANT_DATABASE_URL="
             "postgresql://user:password@host/db. With SQLite, jobs run inside `assistant serve` (or `assistant run`).")
        return 2
    from .core import Assistant
    from .jobs.worker import QueueWorker
    assistant = Assistant(settings)
    assistant.start()
    try:
        worker = QueueWorker(settings, assistant.store, assistant.model, name=args.name,
                             concurrency=args.concurrency, feed=assistant.jobs.feed)
        _err(f"assistant: worker {worker.name} running up to {worker.concurrency} jobs (stop with Ctrl-C or SIGTERM)")
        worker.run(handle_signals=True)
    finally:
        assistant.close()
    return 0


# ---------------------------------------------------------------------------------------------- gc
def cmd_gc(settings: Settings, args: argparse.Namespace) -> int:
    from . import retention
    from .store import Store
    store = Store(settings.resolved_database_url)
    try:
        report = retention.run(settings, store, dry_run=args.dry_run)
    finally:
        store.close()
    size = retention.human_size
    verb = "would remove" if args.dry_run else "removed"
    for removal in report.removals:
        done = "kept" if removal.error else verb
        print(f"{done:<12}  {removal.item.kind:<11}  {size(removal.item.size):>9}  {removal.item.label}\n"
              f"{'':<12}  {removal.reason}" + (f"; {removal.error}" if removal.error else ""))
    for problem in report.problems:
        print(f"note: {problem}")
    for kind in retention.KINDS:
        items = [i for i in report.items if i.kind == kind]
        busy = sum(1 for i in items if i.in_use)
        print(f"{kind + ':':<13} {len(items)} items, {size(report.total(kind))}"
              + (f", {size(report.left(kind))} left" if not args.dry_run else "")
              + (f", {busy} in use" if busy else "") + f" (limits: {report.limits[kind].describe()})")
    print(f"{verb} {len([r for r in report.removals if not r.error])} items, {size(report.freed)}"
          + (" (nothing was deleted: --dry-run)" if args.dry_run else ""))
    return 0


# ---------------------------------------------------------------------------------------------- users
def cmd_users(settings: Settings, args: argparse.Namespace) -> int:
    from .store import Store
    name = (args.name or "").strip()
    if not name:
        _err("assistant users revoke NAME: give the user name to log out")
        return 2
    store = Store(settings.resolved_database_url)
    try:
        count = store.revoke_user(name)
    finally:
        store.close()
    known = name in settings.user_passwords() or (not settings.users and name == "admin") or settings.header_auth
    print(f"ended every session of {name} (revocation {count}): their browsers are logged out now"
          + ("; they can log in again with their password" if known else
             f"; {name} is not among the password users (ASSISTANT_USERS) and cannot log in"))
    return 0


def cmd_sandbox_build(settings: Settings, args: argparse.Namespace) -> int:
    from .sandbox import SandboxConfig, SandboxError, build_image
    config = SandboxConfig.from_settings(settings)
    try:
        name = build_image(config, on_log=lambda line: _err(line), force=args.force and not args.lang)
        if args.lang:
            from .sandbox.toolchains import ensure_toolchain_image
            names = [part.strip() for part in args.lang.split(",") if part.strip()]
            name = ensure_toolchain_image(config.image, names, on_log=_err, force=args.force)
    except SandboxError as exc:
        _err(f"error: {exc}")
        return 1
    print(name)
    return 0


def cmd_sandbox_push(settings: Settings, args: argparse.Namespace) -> int:
    from .sandbox import SandboxError
    from .sandbox.pool import EnginePool
    if not settings.docker_hosts:
        _err("assistant sandbox push copies the sandbox image to an engine of ASSISTANT_DOCKER_HOSTS, which is not set")
        return 2
    pool = EnginePool.from_settings(settings, store=None)
    try:
        pool.push(args.engine, on_log=_err)
        if args.egress:
            pool.push(args.engine, on_log=_err, image=settings.egress_image)
    except SandboxError as exc:
        _err(f"error: {exc}")
        return 1
    return 0


def cmd_egress_build(settings: Settings, args: argparse.Namespace) -> int:
    from .egress.image import ensure_proxy_image
    from .sandbox import SandboxError
    try:
        name = ensure_proxy_image(settings.egress_image, settings.sandbox_image, on_log=_err, force=args.force)
    except SandboxError as exc:
        _err(f"error: {exc}")
        return 1
    print(name)
    return 0


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="assistant", description="A chat-first coding assistant that delegates.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the web app")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--no-workers", action="store_true",
                   help="with PostgreSQL: run no job worker in the web process (jobs wait for `assistant worker`)")
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="run queued jobs (PostgreSQL deployments)")
    w.add_argument("--concurrency", type=int, help="jobs at once (default ASSISTANT_MAX_CONCURRENT_JOBS)")
    w.add_argument("--name", help="the worker's name in logs and on its jobs (default host:pid)")
    w.set_defaults(func=cmd_worker)

    r = sub.add_parser("run", help="run one job and print its summary and diff")
    r.add_argument("--repo", required=True, help="local path or git URL")
    r.add_argument("--ref")
    r.add_argument("--setup", action="append", default=[], help="setup command (repeatable); runs with network")
    r.add_argument("--allow-domain", action="append", default=[], metavar="DOMAIN",
                   help="agent internet by allowlist for this job: a domain it may reach (repeatable; *.example.org)")
    r.add_argument("--allow-preset", action="append", default=[], metavar="PRESET",
                   help="agent internet by allowlist: python-packages, npm-packages, debian-packages, package-registries")
    r.add_argument("--allow-methods", metavar="METHODS", help="with an allowlist: read-only (default), all, or GET,POST,...")
    r.add_argument("--no-internet", action="store_true", help="agent internet off for this job, whatever the settings say")
    r.add_argument("--attempts", type=int, default=1, help="independent attempts, ranked (best of N)")
    r.add_argument("--include-uncommitted", action="store_true",
                   help="a local repository: start from its uncommitted changes too (tracked and new files), "
                        "not only from its last commit")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("task")
    r.set_defaults(func=cmd_run)

    rv = sub.add_parser("review", help="review a change (a branch, a patch or a job's diff); findings checked by "
                                       "proofs the product runs on the head and the base")
    rv.add_argument("--repo", help="local path or git URL (not needed with --job)")
    rv.add_argument("--base", help="what the change is reviewed against (default: the repository's HEAD; with "
                                   "--patch, the commit the patch applies to)")
    what = rv.add_mutually_exclusive_group(required=True)
    what.add_argument("--head", help="the branch, tag or commit under review")
    what.add_argument("--patch", metavar="FILE", help="a patch file (git diff) under review, applied on --base")
    what.add_argument("--job", metavar="ID", help="review a job's diff (its id or number)")
    rv.add_argument("--setup", action="append", default=[], help="setup command (repeatable); runs with network")
    rv.add_argument("--fix", metavar="FINDING", help="with --job naming a review job: start the follow-up job that "
                                                    "fixes one finding (its id, e.g. f1) or every blocker (blockers)")
    rv.add_argument("--json", action="store_true", help="print one JSON object")
    rv.set_defaults(func=cmd_review)

    a = sub.add_parser("ask", help="route a message like the chat does and print the answer or the job's result")
    a.add_argument("--repo", required=True)
    a.add_argument("--ref")
    a.add_argument("question")
    a.set_defaults(func=cmd_ask)

    j = sub.add_parser("jobs", help="list, show, logs, diff, tell, cancel")
    j.add_argument("action", choices=["list", "show", "logs", "diff", "tell", "cancel"])
    j.add_argument("id", nargs="?", help="the job: its id (or the start of it) or its number, as the web app's "
                                         "\"Job 2\" and `assistant jobs list` show it")
    j.add_argument("text", nargs="?", help="with tell: the message to the running job's agent (to a waiting job: "
                   "the answer to its agent's question)")
    j.add_argument("--now", action="store_true", help="with tell: also stop the command it is running, so it reads "
                   "the message at once")
    j.add_argument("--thread", metavar="CONVERSATION", help="the conversation whose job number ID is (its id, the "
                   "start of it, or its name); with list: only its jobs")
    j.add_argument("--chunk", help="with logs: print one chunk's numbered lines")
    j.add_argument("--patch", action="store_true", help="with diff: the git-apply-able patch")
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--json", action="store_true", help="with show: the job as one JSON object, as `run --json` "
                   "prints it (its self-review included)")
    j.set_defaults(func=cmd_jobs)

    d = sub.add_parser("doctor", help="what is ready, and the command that fixes what is not")
    d.set_defaults(func=cmd_doctor)

    g = sub.add_parser("gc", help="apply the retention limits to checkouts, setup-cache images, job files and repository mirrors")
    g.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    g.set_defaults(func=cmd_gc)

    u = sub.add_parser("users", help="web users: revoke NAME ends every session of that user at once")
    u.add_argument("action", choices=["revoke"])
    u.add_argument("name", help="the user name (as in ASSISTANT_USERS, or as the proxy header names it)")
    u.set_defaults(func=cmd_users)

    sb = sub.add_parser("sandbox", help="sandbox image")
    sbs = sb.add_subparsers(dest="sandbox_command", required=True)
    b = sbs.add_parser("build", help="build the default sandbox image (or a toolchain image) from Debian packages")
    b.add_argument("--force", action="store_true")
    b.add_argument("--lang", help="also build the toolchain image for these (comma-separated: node, go, rust, java, "
                                  "ruby, php; jobs build the one they need on first use)")
    b.set_defaults(func=cmd_sandbox_build)
    pu = sbs.add_parser("push", help="copy the sandbox image to an engine of ASSISTANT_DOCKER_HOSTS")
    pu.add_argument("engine", help="the engine's name in ASSISTANT_DOCKER_HOSTS")
    pu.add_argument("--egress", action="store_true", help="also copy the egress proxy image (agent internet by allowlist)")
    pu.set_defaults(func=cmd_sandbox_push)

    eg = sub.add_parser("egress", help="the agent-phase egress proxy")
    egs = eg.add_subparsers(dest="egress_command", required=True)
    eb = egs.add_parser("build", help="build the egress proxy image (Debian's squid on the sandbox image)")
    eb.add_argument("--force", action="store_true")
    eb.set_defaults(func=cmd_egress_build)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """The reader of the output went away (`assistant jobs logs ID | head`): stop without a traceback and with the
    status of a Unix tool that SIGPIPE ended (128 + 13), like `cat` or `grep` in the same place. The broken stream
    is pointed at /dev/null so that the final flush at exit does not complain either."""
    import signal
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError):
                pass
    return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        _err(f"assistant: {exc}")
        return 2
    import logging
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
