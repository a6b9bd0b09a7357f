"""A summary for jobs that ended without one (failed, cancelled, out of budget): the log excerpt the
summary model writes from, and the plain factual digest used when there is no usable model.

Both cite log lines that exist by construction: only chunk ids and line ranges taken from the records.
"""
from __future__ import annotations

from collections.abc import Sequence

from .asking import UNANSWERED
from .evidence import LogRecord, is_test_command, last_edit, verdict

TAIL_LINES = 12
EXCERPT_CHARS = 7000
LISTED_COMMANDS = 40


def cite_tail(record: LogRecord, lines: int = TAIL_LINES) -> str:
    """A citation of the last lines of a record's output, or "" when it printed nothing."""
    if record.line_count < 1:
        return ""
    first = max(1, record.line_count - lines + 1)
    return f"【{record.chunk_id}†L{first}-L{record.line_count}】"


def _command(record: LogRecord, width: int = 100) -> str:
    text = " ".join(record.command.split())
    return f"`{text[:width]}{'…' if len(text) > width else ''}`"


def _status(record: LogRecord) -> str:
    return "timed out" if record.timed_out else f"exit {record.exit_code}"


def _tail(record: LogRecord, lines: int = TAIL_LINES) -> str:
    body = record.text.splitlines()
    first = max(0, len(body) - lines)
    return "\n".join(f"    {i + 1:>5} | {body[i][:300]}" for i in range(first, len(body)))


def log_excerpt(records: Sequence[LogRecord], named_tests: Sequence[str] = (), limit: int = EXCERPT_CHARS) -> str:
    """Every command with its chunk id and exit code, and the numbered tails of the ones that matter
    (failures, test runs, the last few), newest kept first when the excerpt must be cut."""
    edit = last_edit(records)
    notable = {r.chunk_id for r in records[-3:]}
    notable |= {r.chunk_id for r in records if not verdict(r).passed or is_test_command(r.command, named_tests)}
    blocks = []
    for record in records:
        marks = []
        if edit is not None and record.chunk_id == edit.chunk_id:
            marks.append("last edit")
        if is_test_command(record.command, named_tests):
            marks.append("test run")
        head = (f"chunk {record.chunk_id} · {record.phase} · {_status(record)} · {record.line_count} lines"
                f"{' · ' + ', '.join(marks) if marks else ''}\n  $ {' '.join(record.command.split())[:300]}")
        tail = _tail(record) if record.chunk_id in notable and record.command != "apply_patch" else ""
        blocks.append(head + ("\n" + tail if tail else ""))
    kept: list[str] = []
    used = 0
    for block in reversed(blocks):
        if used + len(block) > limit and kept:
            kept.append(f"… {len(blocks) - len(kept)} earlier commands left out")
            break
        kept.append(block)
        used += len(block)
    return "\n".join(reversed(kept)) if kept else "(nothing was logged)"


def _next_step(state: str, reason: str, failing_test: LogRecord | None, failed_setup: LogRecord | None) -> str:
    low = (reason or "").lower()
    if failed_setup is not None:
        return (f"Next: make the setup command {_command(failed_setup)} work (or give other setup commands), "
                "then retry.")
    if state == "cancelled":
        return "Next: retry the job when it is wanted again; a follow-up starts from its changes, if any."
    if state == "interrupted":
        return "Next: retry the job; the server stopped under it."
    if "repeated the same" in low:
        return "Next: retry with a task that says where to look or what to run; the agent was going round in circles."
    if "budget" in low:
        return "Next: narrow the task, or raise the budget named above, and retry."
    if UNANSWERED in low:  # the agent stopped at its question: the log has nothing more to read
        return "Next: retry the job with the answer to its question in the task, or ask a follow-up that answers it."
    if "model error" in low:
        return "Next: check the model endpoint (`assistant doctor`), then retry."
    if failing_test is not None:
        return f"Next: a follow-up job can start from this result and make {_command(failing_test)} pass."
    return "Next: read the log from the last command on, then retry with a more precise task."


def plain_digest(*, state: str, reason: str, records: Sequence[LogRecord], files: Sequence[Sequence[str]] = (),
                 named_tests: Sequence[str] = ()) -> str:
    """What happened, from the log alone: how the job ended, what ran, what changed, what to try next."""
    lines = [f"The job {'was ' if state in ('cancelled', 'interrupted') else ''}{state}"
             + (f": {reason.strip()}" if reason else ".").rstrip()]
    if not lines[0].endswith("."):
        lines[0] += "."
    setup = [r for r in records if r.phase == "setup"]
    agent = [r for r in records if r.phase == "agent"]
    failed_setup = next((r for r in setup if not verdict(r).passed), None)
    if failed_setup is not None:
        lines.append(f"- Setup stopped at {_command(failed_setup)} ({_status(failed_setup)}) {cite_tail(failed_setup)}".rstrip())
    elif setup:
        lines.append(f"- Setup ran {len(setup)} command{'s' if len(setup) != 1 else ''} without error.")
    if not agent:
        lines.append("- No command of the agent finished." if failed_setup is None else "- The agent did not start.")
    else:
        edits = [r for r in agent if r.command == "apply_patch" and r.exit_code == 0]
        lines.append(f"- The agent ran {len(agent)} command{'s' if len(agent) != 1 else ''} and applied "
                     f"{len(edits)} patch{'es' if len(edits) != 1 else ''}; the last was {_command(agent[-1])} "
                     f"({_status(agent[-1])}) {cite_tail(agent[-1])}".rstrip())
    tests = [r for r in agent if is_test_command(r.command, named_tests)]
    edit = last_edit(records)
    failing_test = None
    if tests:
        last = tests[-1]
        when = "after" if edit is None or last.order > edit.order else "before"
        passed = verdict(last).passed
        failing_test = None if passed else last
        lines.append(f"- The last test run, {_command(last)}, {'passed' if passed else 'failed'} ({_status(last)}, "
                     f"{when} the last edit) {cite_tail(last)}".rstrip())
    elif agent:
        lines.append("- No test command was run.")
    if files:
        names = [f"`{f[1]}`" for f in files[:8]]
        more = f" and {len(files) - 8} more" if len(files) > 8 else ""
        lines.append(f"- Files changed (the diff is kept): {', '.join(names)}{more}.")
    # Its own paragraph: a line right after a Markdown list item would continue the item's text.
    return "\n".join(lines) + "\n\n" + _next_step(state, reason, failing_test, failed_setup)
