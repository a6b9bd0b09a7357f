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
from ..store import Job, Store

# Symbols from the basic fonts every system has; emoji render as empty boxes where no emoji font is installed.
STATE_BADGES = {
    states.QUEUED: "○ queued", states.PREPARING: "◔ preparing", states.SETTING_UP: "◑ setting up",
    states.RUNNING: "◕ running", states.SUCCEEDED: "✓ succeeded", states.FAILED: "✗ failed",
    states.CANCELLED: "■ cancelled", states.INTERRUPTED: "⚠ interrupted",
}

MAX_STEPS_SHOWN = 12
MAX_DIFF_LINES_PER_FILE = 400


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


def _step_lines(job: Job, events: list) -> list[str]:
    lines = []
    for ev in events:
        data = ev.data or {}
        if ev.kind == "setup_command":
            ok = data.get("exit_code") == 0
            link = (f" · [log]({cite_url(job.id, data['chunk_id'], 1, max(int(data.get('lines') or 1), 1))})"
                    if data.get("chunk_id") else "")
            lines.append(f"{'✔' if ok else '✖'} setup {_inline_code(data.get('command', ''))} "
                         f"→ exit {data.get('exit_code')} in {data.get('duration_s', 0)} s{link}")
        elif ev.kind == "step":
            ok = data.get("ok", data.get("exit_code") in (0, None))
            test = " (tests)" if data.get("is_test") else ""
            link = f" · [log]({cite_url(job.id, data['chunk_id'], 1, 10**6)})" if data.get("chunk_id") else ""
            exit_code = f" → exit {data['exit_code']}" if data.get("exit_code") is not None else ""
            lines.append(f"{'✔' if ok else '✖'} step {data.get('step', '?')}: {data.get('tool', '')} "
                         f"{_inline_code(data.get('title') or '')}{exit_code}{test}{link}")
        elif ev.kind == "message" and data.get("text"):
            text = " ".join(str(data["text"]).split())
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


def _diff_section(diff: str) -> str:
    parts = []
    for path, body in split_diff(diff):
        added = sum(1 for ln in body.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
        removed = sum(1 for ln in body.splitlines() if ln.startswith("-") and not ln.startswith("---"))
        lines = body.splitlines()
        if len(lines) > MAX_DIFF_LINES_PER_FILE:
            body = "\n".join(lines[:MAX_DIFF_LINES_PER_FILE]) + f"\n… {len(lines) - MAX_DIFF_LINES_PER_FILE} more lines (download the patch)"
        parts.append(f"**`{path}`** (+{added} −{removed})\n\n{_fence(body, 'diff')}")
    return "\n\n".join(parts)


def _plain(text: str) -> str:
    """Markdown-inert text for headings and captions (titles come from user input)."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", " ".join(text.split()))


def render_job_card(store: Store, job_id: str, tail: str | None = None, current: str | None = None) -> str | None:
    try:
        job = store.get_job(job_id)
    except LookupError:
        return None
    events = store.list_events(job_id)
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
        section = _diff_section(diff)
        out.append("#### Diff\n\n" + (section or "*No changes.*"))
        if section and store.get_artifact(job.id, "patch"):
            out.append(f"[Download the patch](/jobs/{job.id}/patch)")
    return "\n\n".join(out)


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
