"""The guided harness: the product navigates, the model edits, the tests decide.

A small model cannot find its way around a repository, but given the failing test and the code with line
numbers it proposes the right edit. So the harness does the navigation itself, in the shape of published
localize → repair → validate pipelines:

1. survey the repository and run its tests (the AGENTS.md command, else one detected from its files);
2. localize: file:line places from the failure output, definitions of the names the task and the failure
   mention, files the task names; show those code windows with line numbers;
3. repair: the model picks one constrained action per turn (JSON schema → a grammar on llama.cpp): replace a
   line range, replace a unique snippet, insert lines, create a file, view lines, run a command, finish;
4. validate: after each edit the tests run again and the model sees the result;
5. several candidates: an attempt whose edits leave the tests failing is rolled back and the next one starts
   from the original code with a note of what failed; the first passing candidate wins, else the one with
   the fewest failures (if it beats the original) is kept as a draft.

Every command and every edit goes through the job's ToolEnv (the sandbox's exec and patch engine) and is
logged as a citable chunk, exactly as the free agent's are; the summary is written from that log, never by
the model, so it cannot invent a result.
"""
from __future__ import annotations

import json
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..domain.events import AgentMessage, StepFinished, ToolStarted
from ..llm.client import ModelClient, ModelError
from ..llm.constrained import ModelOutputError
from ..llm.tokens import count_message_tokens, count_tokens
from ..prompts import load_prompt, render_prompt
from ..sandbox.workspace import Workspace
from .agents_md import commands_in
from .edits import (EditError, add_patch, changed_span, clean_path, delete_patch, insert_lines, replace_lines,
                    replace_snippet, update_patch)
from .evidence import is_test_command
from .localize import (Place, definition_pattern, identifiers, is_test_path, named_files, places_in_grep,
                       places_in_output, render_window, source_files, windows_for)
from .loop import AgentBudgets, AgentResult, EventSink
from .steering import SteerInbox, SteerNote, excerpt_of, steer_guidance
from .tools import ToolEnv, ToolOutcome

EDIT_ACTIONS = ("replace_lines", "replace_text", "insert_lines", "create_file")
MAX_FILE_BYTES = 1_000_000
SHOWN_OUTPUT_LINES = 40
VIEW_MAX_LINES = 80
EDIT_MAX_TOKENS = 700

_INT = {"type": "integer"}
_STR = {"type": "string"}


def _action(name: str, **fields: dict) -> dict:
    return {"type": "object", "properties": {"action": {"const": name}, **fields},
            "required": ["action", *fields], "additionalProperties": False}


ACTION_SCHEMA = {"anyOf": [
    _action("replace_lines", path=_STR, start=_INT, end=_INT, text=_STR),
    _action("replace_text", path=_STR, old=_STR, new=_STR),
    _action("insert_lines", path=_STR, after=_INT, text=_STR),
    _action("create_file", path=_STR, content=_STR),
    _action("view", path=_STR, start=_INT, end=_INT),
    _action("run", command=_STR),
    _action("finish", summary=_STR),
]}


@dataclass
class TestRun:
    command: str
    chunk_id: str
    exit_code: int | None
    output: str
    lines: int

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def score(self) -> int:
        """Lower is better: 0 passes; failures count once, errors (imports, syntax) ten times."""
        return failure_score(self.output, self.exit_code)


def failure_score(output: str, exit_code: int | None) -> int:
    if exit_code == 0:
        return 0
    unittest = re.findall(r"^FAILED \(([^)]*)\)", output, re.M)
    if unittest:
        counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", unittest[-1]))
        return counts.get("failures", 0) + 10 * counts.get("errors", 0) or 100
    summary = [line for line in output.splitlines() if re.search(r"\d+ (failed|errors?|passed)", line)]
    if summary:
        last = summary[-1]
        failed = sum(int(n) for n in re.findall(r"(\d+) failed", last))
        errors = sum(int(n) for n in re.findall(r"(\d+) errors?", last))
        return failed + 10 * errors or 100
    return 100


@dataclass
class Attempt:
    number: int
    originals: dict[str, str | None] = field(default_factory=dict)   # path -> text before the attempt (None: new)
    edits: list[str] = field(default_factory=list)                  # what each applied edit did, in words
    last_run: TestRun | None = None
    finished: str = ""

    @property
    def score(self) -> int | None:
        return self.last_run.score if self.edits and self.last_run else None


class Cancelled(Exception):
    pass


class OutOfBudget(Exception):
    pass


def strip_numbering(text: str) -> str:
    """The raw output inside a tool result (its head line dropped, its `N | ` line numbers removed)."""
    body = text.split("\n", 1)[1] if "\n" in text else ""
    if body == "(no output)":
        return ""
    return "\n".join(re.sub(r"^\s*\d+ \| ", "", line) for line in body.splitlines()
                     if not re.match(r"^\s+… \d+ lines elided", line))


def failure_excerpt(output: str, limit: int = SHOWN_OUTPUT_LINES) -> str:
    """The part of a test run a model needs: from the first failure marker on, plus the runner's last lines."""
    lines = [line[:300] for line in output.splitlines()]
    if len(lines) <= limit:
        return "\n".join(lines)
    marker = re.compile(r"Traceback|^FAIL|^ERROR|^E\s|_{3,} |AssertionError|Error:|^\s*at |panic:|--- FAIL")
    first = next((i for i, line in enumerate(lines) if marker.search(line)), max(0, len(lines) - limit))
    head = lines[max(0, first - 2): max(0, first - 2) + limit - 4]
    tail = [line for line in lines[-4:] if line not in head]
    return "\n".join(head + ["…"] + tail)


class GuidedAgent:
    """Runs one job the guided way; same inputs and result as the free Agent, so the pipeline can pick either."""

    def __init__(self, model: ModelClient, env: ToolEnv, *, budgets: AgentBudgets, job_id: str | None = None,
                 on_event: EventSink | None = None, cancel: threading.Event | None = None, candidates: int = 3,
                 turns_per_candidate: int = 4, steering: SteerInbox | None = None):
        self.model = model
        self.env = env
        self.budgets = budgets
        self.job_id = job_id
        self.on_event = on_event or (lambda _k, _d: None)
        self.cancel = cancel or threading.Event()
        self.candidates = max(1, candidates)
        self.turns = max(1, turns_per_candidate)
        self.step = 0
        self.messages: list[dict[str, Any]] = []   # the last model request, for inspection
        self._started = 0.0
        self._shown_code: list[str] = []   # code files (no tests) whose windows the model was shown
        self._finalizing = False   # rolling back or keeping a candidate: budgets no longer stop the harness
        self._result = AgentResult(status="failed", summary="")
        self.steering = steering
        self._guidance: list[str] = []   # the user's steering messages so far, given to every later candidate too

    # The harness's own commands (tests, survey) are what validates an edit: a `now` steering message does not stop
    # them; it is read as guidance before the next model turn, and its receipt says so (how="guidance").
    interruptible = False

    # ------------------------------------------------------------------ entry point
    def run(self, task: str, *, context: str = "", instructions: str = "") -> AgentResult:
        self._started = time.monotonic()
        result = self._result = AgentResult(status="failed", summary="",
                                            test_commands=tuple(getattr(self.env, "test_commands", ())))
        try:
            self._run(task, context, instructions)
        except Cancelled:
            result.status, result.reason = "cancelled", "cancelled by the user"
        except OutOfBudget as exc:
            result.status, result.reason = "failed", str(exc)
        except ModelError as exc:
            result.status, result.reason = "failed", f"model error: {exc}"
        except Exception as exc:  # the sandbox itself broke (container died, or the job was cancelled)
            if self.cancel.is_set():
                result.status, result.reason = "cancelled", "cancelled by the user"
            else:
                result.status = "failed"
                result.reason = f"the sandbox failed under the guided harness: {type(exc).__name__}: {exc}"
        result.steps = max(result.steps, 1)
        return result

    def _run(self, task: str, context: str, instructions: str) -> None:
        result = self._result
        files, has_pytest = self._survey()
        command = self._test_command(instructions, files, has_pytest)
        baseline = self._run_tests(command) if command else None
        if command is None:
            self._say("No test command was found (none in AGENTS.md, none detected); edits cannot be validated.")
        places = self._localize(task, baseline, files)
        texts = self._read([p.path for p in places])
        code = self._render_code(places, texts)
        best: tuple[int, dict[str, str | None], Attempt] | None = None
        notes: list[str] = []
        any_edit = False
        stopped = ""
        attempt = Attempt(0)
        try:
            for number in range(1, self.candidates + 1):
                attempt = Attempt(number)
                prompt = self._first_message(task, context, instructions, command, baseline, code, notes)
                self._attempt(attempt, prompt, command, files)
                any_edit = any_edit or bool(attempt.edits)
                if attempt.edits and (command is None or (attempt.last_run is not None and attempt.last_run.passed)):
                    self._succeed(attempt, baseline, command)
                    return
                best = self._better(best, attempt)
                notes.append(self._note(attempt))
                if attempt.edits:
                    self._restore(attempt.originals, f"roll back candidate {number}")
                if number < self.candidates:
                    self._say(f"Candidate {number} did not make the tests pass; trying another from the original code.")
        except OutOfBudget as exc:
            # Out of time or tokens in the middle of a candidate: its edits are judged like a finished one's,
            # and the workspace is left as the candidates' outcome says (the budget no longer applies to that).
            stopped = str(exc)
            self._finalizing = True
            any_edit = any_edit or bool(attempt.edits)
            best = self._better(best, attempt)
            if attempt.edits:
                self._restore(attempt.originals, f"roll back candidate {attempt.number}")
        self._finalizing = True
        baseline_score = baseline.score if baseline else 100
        result.status = "failed"
        prefix = f"{stopped}; " if stopped else ""
        if best is not None and best[0] < baseline_score:
            _score, texts_after, kept = best
            self._restore(texts_after, f"keep candidate {kept.number}")
            kept.last_run = self._run_tests(command) if command else kept.last_run
            result.summary = self._summary(kept, baseline, command, kept_failing=True)
            result.reason = (f"{prefix}no candidate made the tests pass; candidate {kept.number} (fewest failures) is "
                             "kept as a draft")
            return
        result.reason = prefix + ("no candidate edit made the tests pass; the code is left as it was" if any_edit else
                                  "the model proposed no applicable change; the code is left as it was")

    def _better(self, best, attempt: Attempt):
        """The best candidate so far: (score, the files' texts after it, the attempt)."""
        if attempt.score is not None and (best is None or attempt.score < best[0]):
            return attempt.score, self._read(list(attempt.originals)), attempt
        return best

    # ------------------------------------------------------------------ survey and tests
    def _survey(self) -> tuple[set[str], bool]:
        outcome = self._shell("git ls-files -co --exclude-standard | head -5000; "
                              "python3 -c 'import pytest' 2>/dev/null && echo '# pytest available'")
        lines = strip_numbering(outcome.text).splitlines()
        return {line for line in lines if line and not line.startswith("# ")}, "# pytest available" in lines

    def _test_command(self, instructions: str, files: set[str], has_pytest: bool) -> str | None:
        """The AGENTS.md test command, else one guessed from what the repository holds."""
        for command in commands_in(instructions):
            if is_test_command(command):
                return command
        if "package.json" in files:
            return "npm test 2>&1"
        if "go.mod" in files:
            return "go test ./... 2>&1"
        if "Cargo.toml" in files:
            return "cargo test 2>&1"
        tests = [f for f in files if f.endswith(".py") and is_test_path(f)]
        if not tests:
            return None
        if has_pytest:
            return "python3 -m pytest -q 2>&1"
        folders = {f.split("/")[0] for f in tests if "/" in f}
        if folders and not any("/" not in f for f in tests) and len(folders) == 1:
            folder = folders.pop()
            if f"{folder}/__init__.py" not in files:
                return f"python3 -m unittest discover -v -s {shlex.quote(folder)} 2>&1"
        return "python3 -m unittest discover -v 2>&1"

    def _run_tests(self, command: str) -> TestRun:
        outcome = self._shell(command)
        output = strip_numbering(outcome.text)
        match = re.search(r"· (\d+) lines?", outcome.text.split("\n", 1)[0])
        return TestRun(command, outcome.chunk_id, outcome.exit_code, output, int(match.group(1)) if match else 0)

    # ------------------------------------------------------------------ localization
    def _localize(self, task: str, baseline: TestRun | None, files: set[str]) -> list[Place]:
        failing = baseline.output if baseline and not baseline.passed else ""
        from_output = places_in_output(failing, files)
        names = identifiers(task, failure_excerpt(failing, 30) if failing else "")
        definitions: list[Place] = []
        if names:
            grep = self._shell(f"grep -rnIE --exclude-dir=.git --exclude-dir=node_modules --exclude-dir=.venv "
                               f"--exclude-dir=__pycache__ -e {shlex.quote(definition_pattern(names))} . | head -40")
            definitions = places_in_grep(strip_numbering(grep.text), files)
        named = named_files(task, files)
        code_first = [p for p in from_output + definitions + named if not is_test_path(p.path)]
        tests = [p for p in from_output + definitions + named if is_test_path(p.path)]
        overview = [Place(path, 1, "overview") for path in source_files(files)[:8] if not is_test_path(path)]
        # Tests are shown only when nothing else was found: the failure output already quotes the failing line,
        # and a small model shown a test file tends to edit the test instead of the code.
        shown_tests = [] if code_first or overview else tests
        ordered: list[Place] = []
        for place in code_first + shown_tests + overview:
            if all((p.path, p.line) != (place.path, place.line) for p in ordered):
                ordered.append(place)
        shown = ", ".join(f"{p.path}:{p.line}" for p in (code_first + tests)[:6]) or "nothing specific"
        self._say(f"Localized from the failure and the task: {shown}.")
        return ordered

    def _render_code(self, places: list[Place], texts: dict[str, str | None]) -> str:
        present = {k: v for k, v in texts.items() if v is not None}
        chosen = windows_for(places, present)
        self._shown_code = [path for path in chosen if not is_test_path(path)]
        parts = [render_window(path, present[path], first, last)
                 for path in chosen for first, last in chosen[path]]
        return "\n\n".join(parts) or "(no code could be located; use view or run to look around)"

    # ------------------------------------------------------------------ one candidate
    def _first_message(self, task: str, context: str, instructions: str, command: str | None,
                       baseline: TestRun | None, code: str, notes: list[str]) -> list[dict[str, Any]]:
        if baseline is None:
            tests = "No test command is known for this repository."
        elif baseline.passed:
            tests = (f"The tests (`{command}`) pass now; the task asks for a change they do not cover yet. "
                     "To add new code, use insert_lines after the last line of a file, so the code there stays "
                     "as it is.")
        else:
            tests = f"The tests (`{command}`) fail:\n```\n{failure_excerpt(baseline.output)}\n```"
        extra = context
        if instructions:
            extra = (extra + "\n\nRepository instructions (AGENTS.md):\n" + instructions[:1500]).strip()
        note_text = "\n".join(notes)
        if note_text:
            note_text = "Earlier candidates (all rolled back; try something different):\n" + note_text
        if self._guidance:
            note_text = "\n\n".join([note_text, *self._guidance]).strip()
        user = render_prompt("guided_task.md", task=task.strip(), context=extra, tests=tests, code=code,
                             notes=note_text)
        return [{"role": "system", "content": load_prompt("guided_system.md").strip()},
                {"role": "user", "content": re.sub(r"\n{3,}", "\n\n", user).strip()}]

    def _attempt(self, attempt: Attempt, prompt: list[dict[str, Any]], command: str | None, files: set[str]) -> None:
        turns: list[dict[str, Any]] = []
        for _turn in range(self.turns):
            messages = prompt + turns
            steered = self._steer(messages)
            action, raw = self._ask(messages)
            if steered:
                self.steering.acknowledged(steered, excerpt_of(raw))
            if action is None:
                turns += [{"role": "assistant", "content": raw[:2000]},
                          {"role": "user", "content": "That was not one well-formed action. Reply with one JSON action."}]
                continue
            kind = action["action"]
            if kind == "finish":
                attempt.finished = action.get("summary", "")
                return
            if kind in EDIT_ACTIONS:
                reply = self._edit(attempt, action, command, files)
                if attempt.last_run is not None and attempt.last_run.passed and attempt.edits:
                    return
                if attempt.edits and command is None:
                    return
            elif kind == "view":
                reply = self._view(action)
            else:
                outcome = self._shell(action["command"])
                reply = (outcome.text.split("\n", 1)[0] + "\n" +
                         failure_excerpt(strip_numbering(outcome.text)))
            turns += [{"role": "assistant", "content": json.dumps(action)}, {"role": "user", "content": reply}]

    def _steer(self, messages: list[dict[str, Any]]) -> list[SteerNote]:
        """Before a model turn: the user's messages not read yet join the turn's last (user) message as extra
        guidance, and stay with every later candidate's first message."""
        if self.steering is None:
            return []
        notes = self.steering.take()
        if not notes:
            return []
        text = steer_guidance(notes)
        self._guidance.append(text)
        messages[-1]["content"] = f"{messages[-1].get('content') or ''}\n\n{text}"
        self.steering.delivered(notes, self.step, "guidance")
        return notes

    def _ask(self, messages: list[dict[str, Any]]) -> tuple[dict | None, str]:
        self._check_budget()
        self._result.steps += 1
        self.messages = messages
        model_name = self.model.model_for("agent")
        self._result.prompt_tokens += count_message_tokens(messages, model_name)
        try:
            value = self.model.constrained_json("agent", messages, ACTION_SCHEMA, max_tokens=EDIT_MAX_TOKENS)
        except ModelOutputError as exc:
            self._result.completion_tokens += count_tokens(exc.raw or "", model_name)
            self._say(f"The model's reply was no well-formed action ({exc.problem[:200]}).")
            return None, exc.raw or ""
        raw = json.dumps(value)
        self._result.completion_tokens += count_tokens(raw, model_name)
        return value, raw

    def _edit(self, attempt: Attempt, action: dict, command: str | None, files: set[str]) -> str:
        kind = action["action"]
        try:
            path = clean_path(action["path"])
            if kind == "replace_text":
                path = self._file_holding(path, action["old"])
            if is_test_path(path) and path in files:
                raise EditError(f"{path} is a test file: change the code under test, not the tests")
            before = self._read([path]).get(path)
            if kind == "create_file":
                if before is not None:
                    raise EditError(f"{path} exists already; use replace_lines or insert_lines on it")
                after = action["content"] if action["content"].endswith("\n") else action["content"] + "\n"
                patch = add_patch(path, after)
            else:
                if before is None:
                    raise EditError(f"{path} does not exist; use a path shown after ### or create_file")
                if kind == "replace_lines":
                    after = replace_lines(before, action["start"], action["end"], action["text"])
                elif kind == "insert_lines":
                    after = insert_lines(before, action["after"], action["text"])
                else:
                    after = replace_snippet(before, action["old"], action["new"])
                patch = update_patch(path, before, after)
        except EditError as exc:
            self._say(f"Edit refused: {exc}")
            return f"The edit was not applied: {exc}"
        outcome = self._apply(patch)
        if not outcome.ok:
            return "The edit was not applied: " + strip_numbering(outcome.text)[:1000]
        attempt.originals.setdefault(path, before)
        first, _old_last, new_first, new_last = changed_span(before or "", after)
        attempt.edits.append(f"{path} lines {new_first}-{max(new_first, new_last)}")
        window = self._window_after(path, after, new_first, new_last)
        if command is None:
            return f"Edit applied.\n{window}\nNo test command is known: finish when the task is done."
        run = attempt.last_run = self._run_tests(command)
        if run.passed:
            return "Edit applied; the tests pass."
        return (f"Edit applied:\n{window}\nThe tests still fail:\n```\n{failure_excerpt(run.output)}\n```\n"
                "Fix the code further, or finish if you cannot.")

    def _file_holding(self, path: str, old: str) -> str:
        """Where a snippet edit belongs. A small model often copies the path from the traceback (the test file)
        while its snippet is the code under test it was shown: when the snippet is not in the named file (or
        that is a test) but in exactly one shown code file, that file is meant."""
        texts = self._read([path, *self._shown_code])
        named = texts.get(path)
        if named is not None and not is_test_path(path) and _holds(named, old):
            return path
        holders = [p for p in self._shown_code if p != path and texts.get(p) is not None and _holds(texts[p], old)]
        if len(holders) == 1:
            self._say(f"The edit named {path}, but its text is in {holders[0]}: applied there.")
            return holders[0]
        return path

    def _window_after(self, path: str, text: str, first: int, last: int) -> str:
        count = len(text.splitlines())
        lo, hi = max(1, first - 3), min(count, max(first, last) + 3)
        return render_window(path, text, lo, hi) if count else f"### {path}\n(empty file)"

    def _view(self, action: dict) -> str:
        try:
            path = clean_path(action["path"])
        except EditError as exc:
            return str(exc)
        text = self._read([path]).get(path)
        if text is None:
            return f"{path} does not exist (or is not a readable text file)."
        count = len(text.splitlines())
        first = min(max(1, action["start"]), max(count, 1))
        last = min(max(first, action["end"]), count, first + VIEW_MAX_LINES - 1)
        return render_window(path, text, first, last)

    def _note(self, attempt: Attempt) -> str:
        if not attempt.edits:
            return f"Candidate {attempt.number} made no change."
        result = "the tests still failed" if attempt.last_run else "nothing was validated"
        tail = ""
        if attempt.last_run is not None:
            lines = [line for line in attempt.last_run.output.splitlines() if line.strip()]
            tail = ": " + " / ".join(lines[-3:])[:300]
        return f"Candidate {attempt.number} changed {', '.join(attempt.edits)}; {result}{tail}"

    # ------------------------------------------------------------------ the workspace
    def _read(self, paths: list[str]) -> dict[str, str | None]:
        unique = list(dict.fromkeys(paths))
        if not unique:
            return {}
        return Workspace(self.env.sandbox).read_files(unique, max_bytes=MAX_FILE_BYTES).texts

    def _restore(self, wanted: dict[str, str | None], why: str) -> None:
        """Bring the touched files to the wanted texts (None: absent), through the patch engine."""
        now = self._read(list(wanted))
        for path, text in wanted.items():
            current = now.get(path)
            if current == text:
                continue
            if text is None:
                patch = delete_patch(path)
            elif current is None:
                patch = add_patch(path, text)
            else:
                patch = update_patch(path, current, text)
            outcome = self._apply(patch, title=why)
            if not outcome.ok:
                raise RuntimeError(f"could not {why} on {path}: {strip_numbering(outcome.text)[:300]}")

    # ------------------------------------------------------------------ the result
    def _succeed(self, attempt: Attempt, baseline: TestRun | None, command: str | None) -> None:
        self._result.status = "succeeded"
        self._result.summary = self._summary(attempt, baseline, command, kept_failing=False)
        self._result.reason = ""

    def _summary(self, attempt: Attempt, baseline: TestRun | None, command: str | None, *, kept_failing: bool) -> str:
        """What was changed and what the tests said, from the log alone, with citations the checks can verify."""
        final = self._read(list(attempt.originals))
        changes = []
        for path, before in attempt.originals.items():
            after = final.get(path)
            if after is None:
                changes.append(f"deleted `{path}`")
                continue
            if before is None:
                count = max(1, len(after.splitlines()))
                changes.append(f"created `{path}` 【F:{path}†L1-L{count}】")
                continue
            _first, _old_last, new_first, new_last = changed_span(before, after)
            count = len(after.splitlines())
            lo = min(max(1, new_first), max(count, 1))
            hi = min(max(lo, new_last), max(count, 1))
            changes.append(f"changed `{path}` 【F:{path}†L{lo}-L{hi}】")
        how = f" (candidate {attempt.number} of up to {self.candidates})" if attempt.number > 1 else ""
        parts = [f"The harness located the code from the task and the test output; the model {'; '.join(changes)}{how}."]
        if baseline is not None:
            state = "passed already" if baseline.passed else "failed"
            parts.append(f"Before the change, `{baseline.command}` {'ran' if baseline.passed else state} "
                         f"{_cite(baseline)}.")
        last = attempt.last_run
        if last is None:
            parts.append("No test command is known for this repository, so the change was not validated by tests.")
        elif last.passed:
            parts.append(f"After the change, the tests pass: `{last.command}` {_cite(last)}.")
        else:
            parts.append(f"After the change, `{last.command}` still failed {_cite(last)}; this is a draft.")
        if kept_failing:
            parts.append("No candidate made the tests pass; the one with the fewest failures is kept.")
        return "\n\n".join(parts)

    # ------------------------------------------------------------------ tools, budgets, events
    def _shell(self, command: str) -> ToolOutcome:
        self._check_cancel()
        self.step += 1
        self.on_event(ToolStarted(self.step, "shell", {"command": command}))
        outcome = self.env.shell(command)
        # The harness's own survey and grep mention test words; only a real test run counts as one.
        is_test = is_test_command(command, self._result.test_commands)
        if is_test:
            self._result.tests.append({"command": command, "exit_code": outcome.exit_code,
                                       "chunk_id": outcome.chunk_id})
        self.on_event(StepFinished(self.step, "shell", outcome.title, chunk_id=outcome.chunk_id,
                                   exit_code=outcome.exit_code, duration_s=round(outcome.duration_s, 3),
                                   ok=outcome.ok, is_test=is_test))
        return outcome

    def _apply(self, patch: str, title: str = "") -> ToolOutcome:
        self._check_cancel()
        self.step += 1
        self.on_event(ToolStarted(self.step, "apply_patch", {"patch": patch}))
        outcome = self.env.apply_patch(patch)
        self.on_event(StepFinished(self.step, "apply_patch", f"{title}: {outcome.title}" if title else outcome.title,
                                   chunk_id=outcome.chunk_id, exit_code=outcome.exit_code,
                                   duration_s=round(outcome.duration_s, 3), ok=outcome.ok, is_test=False))
        return outcome

    def _say(self, text: str) -> None:
        self.on_event(AgentMessage(text, self.step))

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def _check_budget(self) -> None:
        """Before a model turn (the expensive part): an answer already paid for is still applied and tested."""
        self._check_cancel()
        if self._finalizing:
            return
        elapsed = time.monotonic() - self._started
        if elapsed > self.budgets.max_seconds:
            raise OutOfBudget(f"time budget exhausted ({self.budgets.max_seconds:.0f} s; ASSISTANT_JOB_MAX_SECONDS)")
        used = self._result.prompt_tokens + self._result.completion_tokens
        if used > self.budgets.max_tokens:
            raise OutOfBudget(f"token budget exhausted ({used} of {self.budgets.max_tokens} tokens; "
                              "ASSISTANT_JOB_MAX_TOKENS)")
        if self._result.steps > self.budgets.max_steps:
            raise OutOfBudget(f"step budget exhausted ({self.budgets.max_steps} model turns; ASSISTANT_JOB_MAX_STEPS)")


def _holds(text: str, snippet: str) -> bool:
    try:
        replace_snippet(text, snippet, snippet + "\u0000")
        return True
    except EditError:
        return False


def _cite(run: TestRun) -> str:
    if run.lines <= 0:
        return f"(chunk {run.chunk_id})"
    return f"【{run.chunk_id}†L{max(1, run.lines - 7)}-L{run.lines}】"
