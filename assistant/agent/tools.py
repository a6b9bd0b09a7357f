"""The agent's two tools, `shell` and `apply_patch`, and how their results read to the model.

Every result is stored as a citable log chunk; the model sees the exit code, the duration, the chunk id
and numbered lines — head and tail of long output with the elided middle counted, line numbers kept so
that a citation into the middle still points at the stored chunk.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..sandbox.base import ExecResult, Sandbox
from ..sandbox.workspace import Workspace
from ..store import Store
from .steering import stopped_note

SHELL_SPEC = {"type": "function", "function": {
    "name": "shell",
    "description": "Run a bash command in the job's sandbox (working directory /workspace, no network). "
                   "Returns the exit code and the numbered output, headed by its chunk id for citations.",
    "parameters": {"type": "object", "properties": {
        "command": {"type": "string", "description": "The bash command line."},
        "timeout_s": {"type": "integer", "description": "Seconds before the command's whole process tree is killed."},
        "workdir": {"type": "string", "description": "Directory to run in, relative to /workspace or absolute inside it."},
    }, "required": ["command"], "additionalProperties": False}}}

APPLY_PATCH_SPEC = {"type": "function", "function": {
    "name": "apply_patch",
    "description": "Edit files with a patch in the apply_patch format (*** Begin Patch … *** End Patch; "
                   "Add File / Delete File / Update File with @@ context hunks, *** Move to:). "
                   "Paths are relative to /workspace. All hunks apply or none does.",
    "parameters": {"type": "object", "properties": {
        "patch": {"type": "string", "description": "The whole patch, from *** Begin Patch to *** End Patch."},
    }, "required": ["patch"], "additionalProperties": False}}}

TOOL_SPECS = [SHELL_SPEC, APPLY_PATCH_SPEC]

# Bytecode caches go stale when a patch keeps a file's size within the same second (Python compares
# mtime and size), and they would litter the diff besides.
AGENT_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}

# Models often write the container's absolute path; the patch grammar wants paths relative to the workspace.
WORKSPACE_PREFIX = re.compile(r"^(\s*\*\*\* (?:Add File|Delete File|Update File|Move to): )/workspace/", re.M)

HEAD_LINES = 80
TAIL_LINES = 80

TEST_HINTS = ("pytest", "unittest", "npm test", "npm run test", "yarn test", "go test", "cargo test", "make test",
              "make check", "tox", "nox", "jest", "vitest", "mvn test", "gradle test", "ctest", "rspec")


MAX_LINE_CHARS = 2000


def _clip(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return line[:MAX_LINE_CHARS] + f" … ({len(line) - MAX_LINE_CHARS} more characters on this line)"


def number_lines(text: str, head: int = HEAD_LINES, tail: int = TAIL_LINES) -> str:
    lines = [_clip(line) for line in text.splitlines()]
    width = len(str(len(lines))) if lines else 1
    fmt = lambda i: f"{i + 1:>{width}} | {lines[i]}"  # noqa: E731
    if len(lines) <= head + tail:
        return "\n".join(fmt(i) for i in range(len(lines)))
    elided = len(lines) - head - tail
    return "\n".join([*(fmt(i) for i in range(head)),
                      f"{'':>{width}} … {elided} lines elided (L{head + 1}-L{len(lines) - tail}); "
                      f"read them with sed -n or grep …",
                      *(fmt(i) for i in range(len(lines) - tail, len(lines)))])


def format_result(chunk_id: str, exit_code: int | None, duration_s: float, text: str, *, timed_out: bool = False,
                  truncated: bool = False) -> str:
    status = "timed out (process tree killed)" if timed_out else f"exit code {exit_code}"
    count = len(text.splitlines())
    head = f"{status} · {duration_s:.2f} s · chunk {chunk_id} · {count} line{'s' if count != 1 else ''}"
    if truncated:
        head += " · output capped (the rest was dropped)"
    body = number_lines(text)
    return head + ("\n" + body if body else "\n(no output)")


def looks_like_tests(command: str, extra: tuple[str, ...] = ()) -> bool:
    low = command.lower()
    return any(h in low for h in TEST_HINTS + extra)


@dataclass
class ToolOutcome:
    text: str               # what the model reads
    ok: bool                # for loop detection and ranking
    chunk_id: str
    title: str              # one line for progress displays
    exit_code: int | None = None
    duration_s: float = 0.0
    is_test: bool = False
    stopped: bool = False   # a `now` steering message stopped it (agent/steering.py)


class ToolEnv:
    """Runs tool calls for one job, both inside its sandbox; stores every output."""

    def __init__(self, sandbox: Sandbox, store: Store, job_id: str, *, command_timeout_s: int,
                 on_output: Callable[[str], None] | None = None, test_commands: tuple[str, ...] = ()):
        self.sandbox = sandbox
        self.store = store
        self.job_id = job_id
        self.command_timeout_s = command_timeout_s
        self.on_output = on_output
        self.test_commands = test_commands
        self._lock = threading.Lock()
        self._running: str | None = None    # the shell command under way
        self._interrupted = False
        self.stopped: str | None = None     # the last command a steering message stopped, until taken

    def interrupt(self) -> str | None:
        """Stop the shell command under way (a steering message sent with `now`): its result says the user's
        message stopped it and the agent goes on. The command, or None when none runs."""
        with self._lock:
            command = self._running
            if command is None:
                return None
            self._interrupted = True
        interrupt = getattr(self.sandbox, "interrupt", None)
        if interrupt is not None:
            interrupt()
        return command

    def take_stopped(self) -> str | None:
        """The command a steering message stopped since the last call (for the message's receipt)."""
        with self._lock:
            command, self.stopped = self.stopped, None
            return command

    def run(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        if name == "shell":
            return self.shell(**arguments)
        if name == "apply_patch":
            return self.apply_patch(**arguments)
        raise ValueError(f"unknown tool {name!r}")

    def shell(self, command: str, timeout_s: int | None = None, workdir: str | None = None) -> ToolOutcome:
        if not isinstance(command, str) or not command.strip():
            raise ValueError("`command` must be a non-empty string")
        timeout = min(int(timeout_s or self.command_timeout_s), 4 * self.command_timeout_s)
        if workdir and not workdir.startswith("/"):
            workdir = "/workspace/" + workdir
        started = datetime.now(timezone.utc)
        with self._lock:
            self._running, self._interrupted = command, False
        try:
            result: ExecResult = self.sandbox.exec(command, timeout_s=timeout, workdir=workdir, env=AGENT_ENV,
                                                   on_output=self.on_output)
        finally:
            with self._lock:
                stopped, self._running, self._interrupted = self._interrupted, None, False
                if stopped:
                    self.stopped = command
        chunk = self.store.add_chunk(job_id=self.job_id, command=command, text=result.output, exit_code=result.exit_code,
                                     duration_s=result.duration_s, truncated=result.truncated,
                                     timed_out=result.timed_out)
        text = format_result(chunk.id, result.exit_code, result.duration_s, result.output,
                             timed_out=result.timed_out, truncated=result.truncated)
        if stopped:
            text += "\n" + stopped_note(result.duration_s)
        text += self._blocked_during(command, started)
        return ToolOutcome(text, result.exit_code == 0 and not result.timed_out and not stopped, chunk.id,
                           f"$ {command}" + (" (stopped by the user's message)" if stopped else ""),
                           result.exit_code, result.duration_s, looks_like_tests(command, self.test_commands),
                           stopped=stopped)

    def _blocked_during(self, command: str, started: datetime) -> str:
        """Requests the job's egress proxy refused while the command ran: stored as a citable chunk of their own
        (time, method, host, target, why) and told to the model, so it can say so instead of guessing."""
        egress = self.sandbox.egress
        if egress is None:
            return ""
        from ..egress.report import blocked_lines

        blocked = egress.blocked_requests(since=started)
        if not blocked:
            return ""
        text = blocked_lines(blocked)
        chunk = self.store.add_chunk(job_id=self.job_id, command=f"egress proxy: requests blocked during `{command[:300]}`",
                                     text=text, exit_code=None, duration_s=0.0)
        return (f"\n\n{len(blocked)} request{'s' if len(blocked) != 1 else ''} blocked by the egress proxy "
                f"(chunk {chunk.id}; only the allowlisted hosts are reachable):\n" + number_lines(text))

    def apply_patch(self, patch: str) -> ToolOutcome:
        if not isinstance(patch, str):
            raise ValueError("`patch` must be a string")
        started = time.monotonic()
        patch = WORKSPACE_PREFIX.sub(r"\1", patch)
        # The patch engine runs inside the sandbox as the sandbox user: a path check made here and a write made
        # later would race the agent's background processes (and follow their symlinks) on the host.
        applied = Workspace(self.sandbox).apply_patch(patch)
        if applied.ok:
            text, ok, code = "Patch applied.\n" + applied.summary, True, 0
            title = "apply_patch: " + ", ".join(applied.summary.splitlines())[:200]
        else:
            text, ok, code = f"Patch refused: {applied.error}", False, 1
            title = "apply_patch refused"
        duration = time.monotonic() - started
        chunk = self.store.add_chunk(job_id=self.job_id, command="apply_patch", text=text, exit_code=code,
                                     duration_s=duration)
        return ToolOutcome(format_result(chunk.id, code, duration, text), ok, chunk.id, title, code, duration)


def parse_arguments(raw: str) -> dict[str, Any]:
    """Tool-call arguments as a dict, or a ValueError the model can act on."""
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"the arguments are not valid JSON ({exc.msg} at position {exc.pos}); "
                         'send an object such as {"command": "ls"}') from None
    if not isinstance(value, dict):
        raise ValueError("the arguments must be a JSON object")
    return value
