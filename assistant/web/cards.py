"""A job card as Markdown, rendered from the store alone: state, steps, live tail, summary, diff.

Being a function of stored data is what lets a reopened thread show a job as it is now.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from urllib.parse import quote

from ..agent.citations import CITATION_RE, render_markdown
from ..agent.claims import mark_claims, markdown_mark, markdown_reason
from ..agent.review import git_path
from ..domain.review import SELF_REVIEW_ARTIFACT, SelfReview
from ..llm.pricing import Cost, format_cost, format_tokens
from ..jobs import states
from ..jobs.asking import pending_question
from ..jobs.events import (AgentMessage, GroupRanked, JobEventRecord, Notice, QuestionAnswered, QuestionAsked,
                           QuestionTimedOut, Routed, SetupCommandRan, SteerAcknowledged, SteerDelivered, SteerQueued,
                           StepFinished, StepStopped)
from ..jobs.uncommitted import notice_text
from ..jobs.uncommitted import read as read_uncommitted
from ..store import Job, Store

# Symbols from the basic fonts every system has; emoji render as empty boxes where no emoji font is installed.
STATE_BADGES = {
    states.QUEUED: "○ queued", states.PREPARING: "◔ preparing", states.SETTING_UP: "◑ setting up",
    states.RUNNING: "◕ running", states.WAITING: "◇ waiting for you", states.SUCCEEDED: "✓ succeeded",
    states.FAILED: "✗ failed", states.CANCELLED: "■ cancelled", states.INTERRUPTED: "⚠ interrupted",
}

MAX_STEPS_SHOWN = 12
MAX_DIFF_LINES_PER_FILE = 400
MAX_DIFF_LINE_CHARS = 500
MAX_DIFF_FILES = 150
# A file starts expanded when it is this small and the card's expanded lines stay within the budget.
OPEN_MAX_LINES_PER_FILE = 40
OPEN_LINES_BUDGET = 120


# A job event the web app writes when it starts a job: how the message was routed ({"text": ...}).


def cite_url(job_id: str, target: str, start: int, end: int) -> str:
    return f"/cite/{job_id}/{quote(target, safe='')}?L={start}-{end}"


def _fence(text: str, language: str = "") -> str:
    """A code fence longer than any backtick run inside, so file content cannot close it early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"


LANGUAGES = {".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".jsx": "jsx",
             ".ts": "typescript", ".tsx": "tsx", ".json": "json", ".md": "markdown", ".sh": "bash", ".bash": "bash",
             ".yml": "yaml", ".yaml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".rs": "rust",
             ".go": "go", ".java": "java", ".kt": "kotlin", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp",
             ".hpp": "cpp", ".cs": "csharp", ".rb": "ruby", ".php": "php", ".html": "html", ".css": "css",
             ".sql": "sql", ".xml": "xml", ".swift": "swift", ".scala": "scala", ".lua": "lua", ".r": "r"}


def language_of(path: str) -> str:
    """The code fence language for a file, by its extension ("text" when unknown)."""
    name = str(path or "").rsplit("/", 1)[-1].lower()
    if name in ("dockerfile", "makefile"):
        return name
    dot = name.rfind(".")
    return LANGUAGES.get(name[dot:], "text") if dot > 0 else "text"


def tool_output_block(tool: str, args: dict | None, output: str) -> str:
    """A read tool's output as the step of a quick answer shows it: verbatim in a code block (file content is
    not Markdown: `__future__` must not turn bold, indentation must stay), fenced past any fence inside."""
    path = (args or {}).get("path") if tool == "read_file" else None
    return _fence(output or "", language_of(path) if path else "text")


def _inline_code(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > 90:
        text = text[:87] + "…"
    ticks = "``" if "`" in text else "`"
    return f"{ticks} {text} {ticks}" if ticks == "``" else f"`{text}`"


def job_links(job_id: str) -> Callable[[str, str, int, int], str]:
    return lambda _kind, target, start, end: cite_url(job_id, target, start, end)


def link_citations(text: str, citations: list[dict], url_for: Callable[[str, str, int, int], str]) -> str:
    """Checked citations as links to the web app's cite routes (the rendering itself is the core's).
    The model's own links are made plain text first: only a checked citation may look like one."""
    def link(c: dict) -> str:
        target = f"F:{c['target']}" if c["kind"] == "file" else c["target"]
        return url_for(c["kind"], target, c["start"], c["end"])
    return render_markdown(unlinked(text), citations or [], link)


_FENCED_BLOCK = re.compile(r"^( {0,3})(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\2[`~]*[ \t]*$|\Z)", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
_MD_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*[\"')])?\s*\)")
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto|file):[^>\s]+)>", re.I)
_BARE_URL = re.compile(r"(?<![\w/`])((?:https?|ftp|file)://[^\s<>`]+|www\.[^\s<>`]+)", re.I)
_LINK_DEFINITION = re.compile(r"^( {0,3})\[([^\]]+)\]:", re.M)


def _code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def unlinked(text: str) -> str:
    """Markdown with every link, image and bare URL the model wrote turned into plain text (the address as
    code), so nothing it invented is clickable or looks like a checked citation. Code is left as it is."""
    text = (text or "").replace("\x00", "")
    out, last = [], 0
    for block in _FENCED_BLOCK.finditer(text):
        out.append(_unlink_outside_code(text[last:block.start()]))
        out.append(block.group(0))
        last = block.end()
    out.append(_unlink_outside_code(text[last:]))
    return "".join(out)


def _unlink_outside_code(text: str) -> str:
    kept: list[str] = []  # code spans (the model's and ours) stand aside while links are rewritten

    def keep(code: str) -> str:
        kept.append(code)
        return f"\x00{len(kept) - 1}\x00"

    def url_text(url: str) -> str:
        trail = re.search(r"[.,;:!?)\]]+$", url)
        tail = trail.group(0) if trail and not (trail.group(0).startswith(")") and "(" in url) else ""
        return keep(_code(url[:len(url) - len(tail)])) + tail

    def link(m: re.Match) -> str:
        label, url = m.group(1).strip(), m.group(2)
        if not url:
            return label
        return url_text(url) if label in ("", url) else f"{label} ({url_text(url)})"

    text = _CODE_SPAN.sub(lambda m: keep(m.group(0)), text)
    text = _MD_LINK.sub(link, text)
    text = _AUTOLINK.sub(lambda m: url_text(m.group(1)), text)
    text = _BARE_URL.sub(lambda m: url_text(m.group(1)), text)
    text = _LINK_DEFINITION.sub(lambda m: f"{m.group(1)}\\[{m.group(2)}]:", text)
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)


def _duration(job: Job) -> str:
    start = job.preparing_at or job.created_at
    end = job.finished_at or datetime.now(timezone.utc)
    if start is None:
        return ""
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _note(text: str) -> str:
    """The model's words beside a tool call, without the call itself (a text-protocol block or a JSON action)."""
    text = _TOOL_BLOCK.sub("", str(text))
    text = " ".join(text.split())
    if text.startswith("{") and text.endswith("}"):
        return ""
    return text[:200] + ("…" if len(text) > 200 else "")


_TOOL_BLOCK = re.compile(r"^(`{3,})[ \t]*tool\b.*?(?:^\1[ \t]*$|\Z)", re.M | re.S | re.I)


def _progress(job: Job, events: list[JobEventRecord]) -> list[tuple[str, str]]:
    """(kind, Markdown line) for each setup command, agent step and note, in order."""
    entries = []
    for ev in events:
        if isinstance(ev, SetupCommandRan):
            link = (f" · [log]({cite_url(job.id, ev.chunk_id, 1, max(int(ev.lines or 1), 1))})"
                    if ev.chunk_id else "")
            entries.append(("setup", f"{'✔' if ev.exit_code == 0 else '✖'} setup {_inline_code(ev.command)} "
                                     f"→ exit {ev.exit_code} in {ev.duration_s} s{link}"))
        elif isinstance(ev, StepFinished):
            entries.append(("step", _step_line(job, ev)))
        elif isinstance(ev, StepStopped):
            entries.append(("step", _stopped_line(ev)))
        elif isinstance(ev, AgentMessage) and _note(ev.text or ""):
            entries.append(("note", f"» {plain(_note(ev.text))}"))
    return entries


def _step_line(job: Job, ev: StepFinished) -> str:
    title = str(ev.title or ev.tool or "")
    if title.startswith("$ "):
        what = _inline_code(title)
    elif title.startswith("apply_patch: "):
        what = "apply_patch · " + plain(title.removeprefix("apply_patch: "))
    else:
        what = plain(title)
    test = " (tests)" if ev.is_test else ""
    link = f" · [log]({cite_url(job.id, ev.chunk_id, 1, 10**6)})" if ev.chunk_id else ""
    exit_code = f" → exit {ev.exit_code}" if ev.exit_code is not None else ""
    step = ev.step if ev.step is not None else "?"
    return f"{'✔' if ev.succeeded else '✖'} step {step}: {what}{exit_code}{test}{link}"


STOPPED_BY = {states.CANCELLED: "stopped by the cancel", states.INTERRUPTED: "stopped when the server went down"}


def _stopped_line(ev: StepStopped) -> str:
    """The step a job was on when it ended: it has no exit code, only how it was stopped."""
    title = str(ev.title or ev.tool or "")
    what = _inline_code(title) if title.startswith("$ ") else plain(title)
    step = ev.step if ev.step is not None else "?"
    return f"■ step {step}: {what} — {STOPPED_BY.get(ev.state, 'stopped when the job ended')}"


def _no_diff_line(job: Job, events: list[JobEventRecord], diff: str) -> str:
    """A finished job without a diff, said plainly: a cancelled job's sandbox is gone before its diff could be
    read, and the error that leaves in the diff artifact is an internal detail, not news for the user."""
    if job.state == states.CANCELLED and (not diff.strip() or diff.startswith(DIFF_FAILED)):
        edited = sum(1 for ev in events if isinstance(ev, StepFinished) and ev.tool == "apply_patch" and ev.succeeded)
        if not edited:
            return "*No diff: the job was cancelled before it changed anything.*"
        return (f"*No diff: the job was cancelled after {edited} edit{'s' if edited != 1 else ''}, and its sandbox "
                "was stopped before the changes could be collected.*")
    return _fence(diff, "text") if diff.strip() else "*No changes.*"


DIFF_FAILED = "(the diff could not be computed"  # how jobs/pipeline.py records a diff it could not read


_KIND_WORDS = {"step": ("step", "steps"), "setup": ("setup command", "setup commands"), "note": ("note", "notes")}


def _counted(entries: list[tuple[str, str]]) -> str:
    """"7 earlier steps, 2 setup commands and 1 note": what was left out, by kind."""
    parts = []
    for kind, (one, many) in _KIND_WORDS.items():
        n = sum(1 for k, _ in entries if k == kind)
        if n:
            parts.append(f"{n} {'earlier ' if not parts else ''}{one if n == 1 else many}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _step_lines(job: Job, events: list[JobEventRecord], expanded: bool = False) -> list[str]:
    entries = _progress(job, events)
    if expanded or len(entries) <= MAX_STEPS_SHOWN:
        return [line for _, line in entries]
    hidden = entries[:-MAX_STEPS_SHOWN]
    return [f"… {_counted(hidden)} not shown (**Show all steps** below the card)"] + \
        [line for _, line in entries[-MAX_STEPS_SHOWN:]]


def progress_count(store: Store, job_id: str) -> int:
    """How many setup commands, steps and notes the card could list; above MAX_STEPS_SHOWN it folds them."""
    try:
        job = store.get_job(job_id)
    except LookupError:
        return 0
    return len(_progress(job, store.read_events(job_id)))


def split_diff(diff: str) -> list[tuple[str, str]]:
    """(path, diff text) per file of a git diff."""
    files: list[tuple[str, list[str]]] = []
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            match = re.match(r"diff --git a/(.*?) b/(.*)$", line)
            files.append((match.group(2) if match else line[11:], [line]))
        elif files:
            files[-1][1].append(line)
    return [(path, "\n".join(body)) for path, body in files]


def _file_view(path_from_header: str, body: str) -> dict:
    """One file of a diff as plain data for the DiffView element: no markup, only text and counts."""
    header, lines, in_hunks = [], [], False
    for line in body.splitlines()[1:]:
        if not in_hunks and line.startswith("@@"):
            in_hunks = True
        (lines if in_hunks else header).append(line)
    status, path, old_path, binary = "modified", None, None, False
    for line in header:
        if line.startswith("new file mode"):
            status = "added"
        elif line.startswith("deleted file mode"):
            status = "deleted"
        elif line.startswith(("rename from ", "copy from ")):
            status = "renamed" if line.startswith("rename") else "copied"
            old_path = git_path(line.split(" ", 2)[2], "a")
        elif line.startswith(("rename to ", "copy to ")):
            path = git_path(line.split(" ", 2)[2], "b")
        elif line.startswith("+++ "):
            path = git_path(line[4:], "b") or path
        elif line.startswith("--- ") and path is None:
            path = git_path(line[4:], "a")
        elif line.startswith("Binary files ") or line.startswith("GIT binary patch"):
            binary = True
            match = re.match(r"Binary files (.*) and (.*) differ$", line)
            if match and path is None:
                path = git_path(match.group(2), "b") or git_path(match.group(1), "a")
        elif line.startswith("old mode") and status == "modified" and not lines:
            status = "mode changed"
    added = sum(1 for ln in lines if ln.startswith("+"))
    removed = sum(1 for ln in lines if ln.startswith("-"))
    shown = [ln if len(ln) <= MAX_DIFF_LINE_CHARS else ln[:MAX_DIFF_LINE_CHARS] + "…"
             for ln in lines[:MAX_DIFF_LINES_PER_FILE]]
    return {"path": path or git_path(path_from_header, "b") or path_from_header, "old_path": old_path,
            "status": status, "binary": binary, "added": added, "removed": removed, "lines": shown,
            "hidden_lines": len(lines) - len(shown), "open": False}


def diff_view_props(diff: str) -> dict:
    """Props of the DiffView element: files in diff order; small files start expanded until a budget of lines is spent."""
    views = [_file_view(path, body) for path, body in split_diff(diff)]
    files = views[:MAX_DIFF_FILES]
    budget = OPEN_LINES_BUDGET
    for view in files:
        size = len(view["lines"])
        if size <= OPEN_MAX_LINES_PER_FILE and size <= budget:
            view["open"] = True
            budget -= size
    return {"files": files, "hidden_files": len(views) - len(files),
            "added": sum(f["added"] for f in views), "removed": sum(f["removed"] for f in views)}


def _diff_section(diff: str) -> str:
    parts = []
    for path, body in split_diff(diff):
        view = _file_view(path, body)
        lines = body.splitlines()
        if len(lines) > MAX_DIFF_LINES_PER_FILE:
            body = "\n".join(lines[:MAX_DIFF_LINES_PER_FILE]) + f"\n… {len(lines) - MAX_DIFF_LINES_PER_FILE} more lines (download the patch)"
        parts.append(f"**`{view['path']}`** (+{view['added']} −{view['removed']})\n\n{_fence(body, 'diff')}")
    return "\n\n".join(parts)


def _diff_summary(diff: str) -> str:
    """The line above the DiffView element: how much changed, in words."""
    props = diff_view_props(diff)
    count = len(props["files"]) + props["hidden_files"]
    return f"{count} file{'s' if count != 1 else ''} changed · +{props['added']} −{props['removed']}"


def plain(text: str) -> str:
    """Markdown-inert text for headings and captions (titles come from user input)."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", " ".join(text.split()))


def render_review(*args, **kwargs) -> str:
    from .review_card import render_review as render  # it builds on this module's helpers
    return render(*args, **kwargs)


def render_job_card(store: Store, job_id: str, tail: str | None = None, current: str | None = None,
                    diff_inline: bool = True, all_steps: bool = False) -> str | None:
    """The card's Markdown; with ``diff_inline`` false the per-file diff is left to the DiffView element;
    with ``all_steps`` every step is listed, not only the last MAX_STEPS_SHOWN."""
    try:
        job = store.get_job(job_id)
    except LookupError:
        return None
    events = store.read_events(job_id)
    badge = STATE_BADGES.get(job.state, job.state)
    attempt = f" · attempt {job.attempt}/{job.attempts}" if job.attempts > 1 else ""
    where = f"{job.repo}" + (f" @ {job.ref}" if job.ref else "")
    facts = [f for f in (job.backend and f"sandbox: {job.backend}", job.model and f"model: {job.model}",
                         job.agent_network and f"agent network: {job.agent_network}") if f]
    out = [f"### Job {job.number} · {plain(job.title or job.task[:60])}",
           f"**{badge}**{_kind_badge(job)} · {_duration(job)}{attempt} · `{job.id}`",
           f"*{plain(where)}{' · ' + ' · '.join(plain(f) for f in facts) if facts else ''}*"]
    routed = next((ev.text for ev in events if isinstance(ev, Routed)), None)
    if routed:
        out.append(f"*{plain(routed)}*")
    if job.parent_job_id:
        try:
            parent = store.get_job(job.parent_job_id)
            out.append(f"Starts from the result of job {parent.number} · {plain(parent.title or parent.task[:60])}")
        except LookupError:
            pass
    working_copy = uncommitted_notice(store, job)
    if working_copy:
        out.append(working_copy)
    for ev in events:  # notices (a weaker sandbox than configured, setup touching tracked files) stay visible
        if isinstance(ev, Notice) and ev.text:
            out.append(f"{'⚠' if ev.warning else 'ℹ'} {plain(str(ev.text))}")
    steps = _step_lines(job, events, all_steps)
    if steps:
        out.append("\n".join(f"- {s}" for s in steps))
    out += question_lines(job, events)
    receipts = steer_receipts(job, events)
    if receipts:
        out.append("**Your messages to the job**\n\n" + "\n".join(f"- {line}" for line in receipts))
    if job.state in states.ACTIVE and current:
        out.append(f"▸ now: {_inline_code(current)}")
    if job.state in states.ACTIVE and tail:
        tail_lines = tail.rstrip().splitlines()[-12:]
        out.append("Live output:\n\n" + _fence("\n".join(tail_lines), "text"))
    if job.reason and job.state in (states.FAILED, states.CANCELLED, states.INTERRUPTED):
        out.append(f"> {link_citations(job.reason, _reason_citations(store, job), job_links(job.id))}")
    outcome = job.outcome or {}
    review = review_of(store, job)
    if review is not None:  # the verdict and the findings are the card's result and summary
        out.append(render_review(job.id, review, job_links(job.id), lambda chunk_id: _chunk_text(store, job, chunk_id),
                                 _review_describe(store, job)))
    elif job.state in states.TERMINAL:
        out += _result_sections(job, outcome)
        self_reviewed = self_review_of(store, job)
        if self_reviewed is not None:
            out.append(render_self_review(job.id, self_reviewed, job_links(job.id),
                                          lambda chunk_id: _chunk_text(store, job, chunk_id)))
    if job.summary and review is None:
        source = SUMMARY_SOURCES.get(outcome.get("summary_source", ""), "")
        marked = mark_claims(job.summary, outcome.get("claims") or [], markdown_mark)
        out.append(f"#### Summary{source}\n\n" + link_citations(marked, job.citations, job_links(job.id)))
    if job.state in states.TERMINAL:
        out += _usage_lines(store, job, outcome)
    if outcome.get("rank"):
        pick = " — **recommended**" if outcome.get("recommended") else ""
        if not pick and outcome.get("rank") == 1:
            pick = " — none of the attempts is recommended"
        out.append(f"Rank {outcome['rank']} of {job.attempts}{pick}")
        note = next((ev.note for ev in events if isinstance(ev, GroupRanked) and ev.note), "")
        if note:
            out.append(f"*{plain(note)}*")
    diff = store.get_artifact(job.id, "diff")
    if diff is None and job.state == states.CANCELLED and _progress(job, events):
        diff = ""  # cancelled with its sandbox gone before a diff was read: still say why there is none
    if job.state in states.TERMINAL and outcome.get("flags"):
        out.append(_flags_section(outcome["flags"]))
    if job.state in states.TERMINAL and diff is not None:
        if not split_diff(diff):  # no change, or a note that the diff could not be computed
            out.append("#### Diff\n\n" + _no_diff_line(job, events, diff))
        else:
            heading = "#### Diff" if review is None else (
                "#### Patch: the proof tests" + ("" if review.mode == "branch" else " on top of the change under review")
                + " (what a fix starts from)")
            out.append(f"{heading}\n\n" + (_diff_section(diff) if diff_inline else _diff_summary(diff)))
            out.extend(f"⚠ {plain(note)}" for note in outcome.get("diff_notes") or [])
            if store.has_artifact(job.id, "patch"):
                out.append(f"[Download the patch](/jobs/{job.id}/patch)")
    return "\n\n".join(out)


def review_of(store: Store, job: Job):
    """A finished review job's ReviewResult, or None (another job, or a review that has no result)."""
    if job.state != states.SUCCEEDED:
        return None
    from ..jobs.review import load_review
    return load_review(store, job.id)


def self_review_of(store: Store, job: Job):
    """A coding job's self-review (jobs/self_review.py), done or not, or None when none ran."""
    raw = store.get_artifact(job.id, SELF_REVIEW_ARTIFACT)
    return SelfReview.from_dict(json.loads(raw)) if raw else None


def render_self_review(*args, **kwargs) -> str:
    from .review_card import render_self_review as render  # it builds on this module's helpers
    return render(*args, **kwargs)


def _review_describe(store: Store, job: Job) -> str:
    from ..jobs.review import REVIEW_REQUEST, ReviewRequest
    raw = store.get_artifact(job.id, REVIEW_REQUEST)
    return f"Review of {ReviewRequest.from_json(raw).describe()}" if raw else ""


def _chunk_text(store: Store, job: Job, chunk_id: str) -> str | None:
    chunk = store.get_chunk(chunk_id)
    return chunk.text if chunk is not None and chunk.job_id == job.id else None


STEER_QUOTE_CHARS = 160


def _quoted(text: str, limit: int = STEER_QUOTE_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return "\u201c" + plain(text if len(text) <= limit else text[:limit - 1] + "\u2026") + "\u201d"


_PATCHED_FILE = re.compile(r"\*\*\* (Update|Add|Delete) File: ([^\\\n\"]+)")


def _ack_words(excerpt: str) -> str:
    """The agent's turn as the receipt quotes it: its words, or its command; a patch by the files it touches (its
    raw JSON says nothing to a reader)."""
    if excerpt.startswith("apply_patch {"):
        files = [f"{verb.lower()} {path.strip()}" for verb, path in _PATCHED_FILE.findall(excerpt)]
        return "apply_patch: " + ", ".join(files) if files else "apply_patch"
    return excerpt


def steer_receipts(job: Job, events: list[JobEventRecord]) -> list[str]:
    """Each steering message of the job with its receipt, from its stored events (so a reopened thread shows the
    same): queued → delivered (step N) → acknowledged: “the agent's next turn”. A message still queued when the
    job ended was never read: said so."""
    order: list[str] = []
    sent: dict[str, SteerQueued] = {}
    delivered: dict[str, SteerDelivered] = {}
    acked: dict[str, SteerAcknowledged] = {}
    for ev in events:
        if isinstance(ev, SteerQueued) and ev.message_id not in sent:
            sent[ev.message_id] = ev
            order.append(ev.message_id)
        elif isinstance(ev, SteerDelivered):
            delivered[ev.message_id] = ev
        elif isinstance(ev, SteerAcknowledged):
            acked[ev.message_id] = ev
    lines = []
    for message_id in order:
        queued = sent[message_id]
        head = f"{'**now** ' if queued.now else ''}{_quoted(queued.text)}"
        got = delivered.get(message_id)
        if got is None:
            receipt = ("not delivered: the job ended before its agent read it" if job.state in states.TERMINAL
                       else "queued" + (", stopping the command under way" if queued.now else
                                        ": the agent reads it at its next step"))
        else:
            step = got.step if got.step is not None else "?"
            receipt = f"delivered (step {step})" + {"guidance": " as guidance", "answer": " as the answer"}.get(
                got.how or "", "")
            if got.stopped:
                receipt += f", stopped {_inline_code(got.stopped)}"
            ack = acked.get(message_id)
            if ack is not None:
                receipt += f" · acknowledged: {_quoted(_ack_words(ack.excerpt))}"
        lines.append(f"{head} — {receipt}")
    return lines


ANSWER_HINT = "Your next message in this conversation answers it."


def question_lines(job: Job, events: list[JobEventRecord]) -> list[str]:
    """The agent's questions (its ask_user tool), from the stored events: the one it waits on, quoted, with what
    answers it (its choices are buttons on the card); an answered or timed-out one as history."""
    lines: list[str] = []
    pending: QuestionAsked | None = None
    for ev in events:
        if isinstance(ev, QuestionAsked):
            pending = ev
        elif isinstance(ev, QuestionAnswered) and pending is not None:
            lines.append(f"Asked: {_quoted(pending.question)} — answered: {_quoted(ev.answer)}")
            pending = None
        elif isinstance(ev, QuestionTimedOut) and pending is not None:
            lines.append(f"Asked: {_quoted(pending.question)} — no answer within "
                         f"{_wait_words(pending.timeout_s or ev.waited_s)}")
            pending = None
    if pending is not None:
        if job.state == states.WAITING:
            choices = " Pick one of the buttons below, or type your answer." if pending.choices else ""
            lines.append(f"**The agent asks:**\n\n> {plain(pending.question)}\n\n{ANSWER_HINT}{choices}")
        else:  # it ended (cancelled) while waiting
            lines.append(f"Asked: {_quoted(pending.question)} — not answered")
    return lines


def _wait_words(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def waiting_choices(job: Job, events: list[JobEventRecord]) -> list[str]:
    """The choices of the question a waiting job's agent asked (its card's buttons); none when it does not wait."""
    if job.state != states.WAITING:
        return []
    pending = pending_question(events)
    return list(pending.choices) if pending is not None else []


def uncommitted_notice(store: Store, job: Job) -> str | None:
    """The card's line on the local working copy's uncommitted changes when the job was created (jobs/uncommitted.py)."""
    info = read_uncommitted(store, job.id)
    return f"{'ℹ' if info.get('included') else '⚠'} {plain(notice_text(info))}" if info else None


KIND_BADGES = {"fix": "✔ fix", "draft": "✎ draft", "findings": "⌕ findings", "no result": "∅ no result"}
SUMMARY_SOURCES = {"summary model": " (written from the log by the summary model)",
                   "log digest": " (a digest of the log: no model summary)"}


def _kind_badge(job: Job) -> str:
    kind = (job.outcome or {}).get("kind") if job.state in states.TERMINAL else None
    return f" · **{KIND_BADGES.get(kind, plain(kind))}**" if kind else ""


def _result_sections(job: Job, outcome: dict) -> list[str]:
    """The kind of result as the card's headline, with the test runs it rests on (linked to their logs)."""
    kind = outcome.get("kind")
    if not kind:
        return []
    lines = [f"### Result: {KIND_BADGES.get(kind, plain(kind))}\n\n*{markdown_reason(outcome.get('kind_reason') or '')}*"]
    runs = []
    for e in outcome.get("evidence") or []:
        mark = "✔" if e.get("passed") else "✖"
        when = "after the last edit" if e.get("after_last_edit") else "before the last edit (stale)"
        runs.append(f"- {mark} {_inline_code(e.get('command') or '')} → exit {e.get('exit_code')}, {when} · "
                    f"[log]({cite_url(job.id, e.get('chunk_id') or '', 1, 10**6)})")
    return lines + (["\n".join(runs)] if runs else [])


def _flags_section(flags: list[dict]) -> str:
    lines = [f"- ⚠ **{plain(f.get('path') or '')}** — {plain(f.get('detail') or '')}" for f in flags]
    return f"#### Review flags ({len(flags)})\n\n" + "\n".join(lines)


def _usage_lines(store: Store, job: Job, outcome: dict) -> list[str]:
    """Tokens and model of the job (money with a price table), and the conversation's tokens so far."""
    usage = outcome.get("usage") or {}
    prompt = usage.get("prompt_tokens") or job.prompt_tokens
    completion = usage.get("completion_tokens") or job.completion_tokens
    if not prompt and not completion:
        return []
    models = ", ".join(m["model"] for m in usage.get("models") or []) or job.model or ""
    text = f"Tokens: {format_tokens(prompt)} prompt + {format_tokens(completion)} completion"
    text += f" · model: {plain(models)}" if models else ""
    cost = usage.get("cost")
    if cost:
        text += " · " + plain(format_cost(Cost(cost["amount"], cost["currency"], tuple(cost.get("unpriced_models") or ()))))
    if job.thread_id:
        jobs = [j.id for j in store.list_jobs(thread_id=job.thread_id, limit=10_000)]
        rows = store.usage_by_model(job_ids=jobs, thread_id=job.thread_id)
        total = sum(r[2] + r[3] for r in rows)
        if total:
            text += f" · conversation so far: {format_tokens(total)} tokens"
    return [f"*{text}*"]


def job_diff_view(store: Store, job_id: str) -> dict | None:
    """Props for a finished job's DiffView element, or None while it runs or when it changed nothing."""
    try:
        job = store.get_job(job_id)
    except LookupError:
        return None
    diff = store.get_artifact(job_id, "diff") if job.state in states.TERMINAL else None
    if not diff or not split_diff(diff):
        return None
    return diff_view_props(diff)


def _reason_citations(store: Store, job: Job) -> list[dict]:
    """A failure reason may cite the setup log; such citations are checked here against the stored chunk."""
    checked = []
    for match in CITATION_RE.finditer(job.reason or ""):
        if match["chunk"]:
            chunk = store.get_chunk(match["chunk"])
            end = int(match["end"] or match["start"])
            valid = chunk is not None and chunk.job_id == job.id and 1 <= int(match["start"]) <= end <= max(chunk.line_count, 1)
            checked.append({"text": match[0], "valid": valid, "reason": "" if valid else "no such log lines"})
    return checked
