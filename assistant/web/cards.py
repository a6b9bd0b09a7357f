"""A job card as Markdown, rendered from the store alone: state, steps, live tail, summary, diff.

Being a function of stored data is what lets a reopened thread show a job as it is now.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from urllib.parse import quote

from ..agent.citations import CITATION_RE, render_markdown
from ..jobs import states
from ..jobs.events import AgentMessage, JobEventRecord, Notice, SetupCommandRan, StepFinished
from ..store import Job, Store

# Symbols from the basic fonts every system has; emoji render as empty boxes where no emoji font is installed.
STATE_BADGES = {
    states.QUEUED: "○ queued", states.PREPARING: "◔ preparing", states.SETTING_UP: "◑ setting up",
    states.RUNNING: "◕ running", states.SUCCEEDED: "✓ succeeded", states.FAILED: "✗ failed",
    states.CANCELLED: "■ cancelled", states.INTERRUPTED: "⚠ interrupted",
}

MAX_STEPS_SHOWN = 12
MAX_DIFF_LINES_PER_FILE = 400
MAX_DIFF_LINE_CHARS = 500
MAX_DIFF_FILES = 150
# A file starts expanded when it is this small and the card's expanded lines stay within the budget.
OPEN_MAX_LINES_PER_FILE = 40
OPEN_LINES_BUDGET = 120


def cite_url(job_id: str, target: str, start: int, end: int) -> str:
    return f"/cite/{job_id}/{quote(target, safe='')}?L={start}-{end}"


def _fence(text: str, language: str = "") -> str:
    """A code fence longer than any backtick run inside, so file content cannot close it early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"


def _inline_code(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > 90:
        text = text[:87] + "…"
    ticks = "``" if "`" in text else "`"
    return f"{ticks} {text} {ticks}" if ticks == "``" else f"`{text}`"


def job_links(job_id: str) -> Callable[[str, str, int, int], str]:
    return lambda _kind, target, start, end: cite_url(job_id, target, start, end)


def link_citations(text: str, citations: list[dict], url_for: Callable[[str, str, int, int], str]) -> str:
    """Checked citations as links to the web app's cite routes (the rendering itself is the core's)."""
    def link(c: dict) -> str:
        target = f"F:{c['target']}" if c["kind"] == "file" else c["target"]
        return url_for(c["kind"], target, c["start"], c["end"])
    return render_markdown(text, citations or [], link)


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


def _step_lines(job: Job, events: list[JobEventRecord]) -> list[str]:
    lines = []
    for ev in events:
        if isinstance(ev, SetupCommandRan):
            link = (f" · [log]({cite_url(job.id, ev.chunk_id, 1, max(int(ev.lines or 1), 1))})"
                    if ev.chunk_id else "")
            lines.append(f"{'✔' if ev.exit_code == 0 else '✖'} setup {_inline_code(ev.command)} "
                         f"→ exit {ev.exit_code} in {ev.duration_s} s{link}")
        elif isinstance(ev, StepFinished):
            test = " (tests)" if ev.is_test else ""
            link = f" · [log]({cite_url(job.id, ev.chunk_id, 1, 10**6)})" if ev.chunk_id else ""
            exit_code = f" → exit {ev.exit_code}" if ev.exit_code is not None else ""
            lines.append(f"{'✔' if ev.succeeded else '✖'} step {ev.step if ev.step is not None else '?'}: {ev.tool} "
                         f"{_inline_code(ev.title)}{exit_code}{test}{link}")
        elif isinstance(ev, AgentMessage) and ev.text:
            text = " ".join(str(ev.text).split())
            lines.append(f"» {text[:200]}{'…' if len(text) > 200 else ''}")
    if len(lines) > MAX_STEPS_SHOWN:
        hidden = len(lines) - MAX_STEPS_SHOWN
        lines = [f"… {hidden} earlier steps"] + lines[-MAX_STEPS_SHOWN:]
    return lines


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


_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _git_path(text: str, side: str) -> str | None:
    """A path as git prints it: maybe C-quoted (non-ASCII as octal bytes), with an a/ or b/ prefix, or /dev/null."""
    text = text.rstrip("\t")
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        raw, body, i = bytearray(), text[1:-1], 0
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body):
                octal = re.match(r"[0-7]{3}", body[i + 1:])
                if octal:
                    raw.append(int(octal.group(0), 8))
                    i += 4
                    continue
                raw.append(_C_ESCAPES.get(body[i + 1], ord(body[i + 1])))
                i += 2
                continue
            raw.extend(body[i].encode())
            i += 1
        text = raw.decode("utf-8", "replace")
    if text == "/dev/null":
        return None
    return text[2:] if text.startswith(side + "/") else text


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
            old_path = _git_path(line.split(" ", 2)[2], "a")
        elif line.startswith(("rename to ", "copy to ")):
            path = _git_path(line.split(" ", 2)[2], "b")
        elif line.startswith("+++ "):
            path = _git_path(line[4:], "b") or path
        elif line.startswith("--- ") and path is None:
            path = _git_path(line[4:], "a")
        elif line.startswith("Binary files ") or line.startswith("GIT binary patch"):
            binary = True
            match = re.match(r"Binary files (.*) and (.*) differ$", line)
            if match and path is None:
                path = _git_path(match.group(2), "b") or _git_path(match.group(1), "a")
        elif line.startswith("old mode") and status == "modified" and not lines:
            status = "mode changed"
    added = sum(1 for ln in lines if ln.startswith("+"))
    removed = sum(1 for ln in lines if ln.startswith("-"))
    shown = [ln if len(ln) <= MAX_DIFF_LINE_CHARS else ln[:MAX_DIFF_LINE_CHARS] + "…"
             for ln in lines[:MAX_DIFF_LINES_PER_FILE]]
    return {"path": path or _git_path(path_from_header, "b") or path_from_header, "old_path": old_path,
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


def _plain(text: str) -> str:
    """Markdown-inert text for headings and captions (titles come from user input)."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", " ".join(text.split()))


def render_job_card(store: Store, job_id: str, tail: str | None = None, current: str | None = None,
                    diff_inline: bool = True) -> str | None:
    """The card's Markdown; with ``diff_inline`` false the per-file diff is left to the DiffView element."""
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
    out = [f"### Job {job.number} · {_plain(job.title or job.task[:60])}",
           f"**{badge}** · {_duration(job)}{attempt} · `{job.id}`",
           f"*{_plain(where)}{' · ' + ' · '.join(_plain(f) for f in facts) if facts else ''}*"]
    if job.parent_job_id:
        try:
            parent = store.get_job(job.parent_job_id)
            out.append(f"Starts from the result of job {parent.number}.")
        except LookupError:
            pass
    for ev in events:  # notices (a weaker sandbox than configured, setup touching tracked files) stay visible
        if isinstance(ev, Notice) and ev.text:
            out.append(f"{'⚠' if ev.warning else 'ℹ'} {_plain(str(ev.text))}")
    steps = _step_lines(job, events)
    if steps:
        out.append("\n".join(f"- {s}" for s in steps))
    if job.state in states.ACTIVE and current:
        out.append(f"▸ now: {_inline_code(current)}")
    if job.state in states.ACTIVE and tail:
        tail_lines = tail.rstrip().splitlines()[-12:]
        out.append("Live output:\n\n" + _fence("\n".join(tail_lines), "text"))
    if job.reason and job.state in (states.FAILED, states.CANCELLED, states.INTERRUPTED):
        out.append(f"> {link_citations(job.reason, _reason_citations(store, job), job_links(job.id))}")
    if job.summary:
        out.append("#### Summary\n\n" + link_citations(job.summary, job.citations, job_links(job.id)))
    outcome = job.outcome or {}
    if outcome.get("rank"):
        pick = " — **recommended**" if outcome.get("recommended") else ""
        out.append(f"Rank {outcome['rank']} of {job.attempts}{pick}")
    diff = store.get_artifact(job.id, "diff")
    if job.state in states.TERMINAL and diff is not None:
        if not split_diff(diff):  # no change, or a note that the diff could not be computed
            out.append("#### Diff\n\n" + (_fence(diff, "text") if diff.strip() else "*No changes.*"))
        else:
            out.append("#### Diff\n\n" + (_diff_section(diff) if diff_inline else _diff_summary(diff)))
            out.extend(f"⚠ {_plain(note)}" for note in outcome.get("diff_notes") or [])
            if store.get_artifact(job.id, "patch"):
                out.append(f"[Download the patch](/jobs/{job.id}/patch)")
    return "\n\n".join(out)


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
