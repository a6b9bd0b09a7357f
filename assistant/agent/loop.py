"""The agent: send the conversation and the tools to the model, run the calls it makes, repeat; the
job ends when the model answers without a tool call, and that answer is the summary.

Kept small on purpose (mini-swe-agent's spirit): one class over a model client and a ToolEnv. The
safety nets live here because they are about the conversation: budgets, compaction, repeated failing
calls, malformed calls, and the text protocol for endpoints without native tools.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..domain.events import AgentMessage, JobEventRecord, StepFinished, ToolStarted
from ..llm import textproto
from ..llm.client import Completion, ModelClient, ModelError, ToolCall, ToolsUnsupported
from ..llm.constrained import ModelOutputError
from ..llm.tokens import count_message_tokens
from ..prompts import load_prompt, render_prompt
from ..sandbox.base import SandboxLimitReached
from .asking import ASK_USER, ASK_USER_SPEC, Asker, answer_result, parse_question, unanswered_reason
from .steering import SteerInbox, SteerNote, excerpt_of, steer_turn
from .tools import TOOL_SPECS, ToolEnv, parse_arguments

REPEAT_LIMIT = 3          # the same failing call this many times in a row stops the job
NUDGE_AFTER = 3           # the same successful call this many times in a row gets a nudge to do something else
SAME_CALL_LIMIT = 6       # … and this many stops the job (a small model can list a directory forever)
COMPACT_AT = 0.75         # share of the context window that triggers compaction
KEEP_RECENT = 6           # messages never compacted
INVALID_ACTION = "invalid_action"
MALFORMED = "error: malformed call"
NOT_RUN = "not run: the user's message stopped this turn; read it below and decide what to do next"


@dataclass
class AgentBudgets:
    max_steps: int = 60
    max_seconds: float = 3600
    max_tokens: int = 3_000_000
    context_window: int = 128_000


@dataclass
class AgentResult:
    status: str                      # "succeeded" | "failed" | "cancelled"
    summary: str
    reason: str = ""
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tests: list[dict] = field(default_factory=list)   # {"command", "exit_code", "chunk_id"} of test runs
    test_commands: tuple[str, ...] = ()               # the test commands the repository's AGENTS.md names


class Cancelled(Exception):
    pass


class _Unanswered(Exception):
    """The agent's question got no answer in time: the job ends here (the text is the reason)."""


def _call_key(name: str, raw_args: str) -> str:
    """A call as comparable text: the same arguments with other spacing or key order are the same call."""
    try:
        return f"{name} {json.dumps(json.loads(raw_args or '{}'), sort_keys=True)}"
    except ValueError:
        return f"{name} {raw_args}"


def _trailing_repeats(keys: list[str]) -> int:
    count = 0
    for key in reversed(keys):
        if key != keys[-1]:
            break
        count += 1
    return count


EventSink = Callable[[JobEventRecord], None]  # the job's typed events (assistant/domain/events.py)


class Agent:
    def __init__(self, model: ModelClient, env: ToolEnv, *, budgets: AgentBudgets, protocol: str = "auto",
                 job_id: str | None = None, on_event: EventSink | None = None,
                 cancel: threading.Event | None = None, steering: SteerInbox | None = None,
                 asker: Asker | None = None):
        self.model = model
        self.env = env
        self.budgets = budgets
        self.protocol = "native" if protocol == "auto" else protocol  # native | text | grammar
        self.auto_protocol = protocol == "auto"
        self.job_id = job_id
        self.on_event = on_event or (lambda _event: None)
        self.cancel = cancel or threading.Event()
        self.messages: list[dict[str, Any]] = []
        self.steering = steering
        self._steered: list[dict[str, Any]] = []   # the turns that carry steering messages: never compacted
        self.asker = asker                          # with one, the agent may ask the user (its ask_user tool)
        self.tools = TOOL_SPECS + [ASK_USER_SPEC] if asker is not None else TOOL_SPECS
        self.paused_s = 0.0                         # time spent waiting for the user's answers: not the job's
        self._answered: list[SteerNote] = []        # the messages that answered a question, acknowledged next turn

    interruptible = True  # a `now` steering message may stop its command (ToolEnv.interrupt)

    # ------------------------------------------------------------------ entry point
    def run(self, task: str, *, context: str = "", instructions: str = "",
            system_prompt: str = "agent_system.md") -> AgentResult:
        """`system_prompt` names the prompt file the agent works under (a review job's reviewer has its own)."""
        system = load_prompt(system_prompt)
        if instructions:
            system += "\n\nInstructions from the repository (AGENTS.md), to follow:\n" + instructions
        self.messages = [{"role": "system", "content": system},
                         {"role": "user", "content": render_prompt("agent_task.md", task=task, context=context).strip()}]
        if self.protocol == "text":
            self._switch_to_text()
        started = time.monotonic()
        result = AgentResult(status="failed", summary="", test_commands=tuple(getattr(self.env, "test_commands", ())))
        last_failures: list[str] = []
        same_calls: list[str] = []
        worked = False           # a tool call ran (whatever its outcome)
        told_to_work = False
        for step in range(1, self.budgets.max_steps + 1):
            result.steps = step
            stop = self._over_budget(started, result)
            if stop:
                result.reason = stop
                return result
            if self.cancel.is_set():
                return self._cancelled(result)
            steered = self._deliver_steering(step)
            self._compact_if_needed()
            try:
                completion = self._ask()
            except ModelError as exc:
                result.reason = f"model error: {exc}"
                return result
            steered, self._answered = steered + self._answered, []
            if steered and self.steering is not None:
                self.steering.acknowledged(steered, excerpt_of(
                    completion.content, [(c.name, c.arguments) for c in completion.tool_calls]))
            result.prompt_tokens += completion.prompt_tokens
            result.completion_tokens += completion.completion_tokens
            calls, protocol_error = self._calls_of(completion)
            if completion.content and (calls or protocol_error):
                self.on_event(AgentMessage(completion.content, step))
            if protocol_error is not None:
                self.messages.append({"role": "assistant", "content": completion.content or ""})
                self.messages.append({"role": "user", "content": protocol_error})
                continue
            if not calls and not worked:
                # A final answer before any command ran or any file changed can only be invented: a small
                # model's first reply often "reports" a fix. It is sent back to work once, then the job fails.
                if not told_to_work:
                    told_to_work = True
                    self.messages.append({"role": "assistant", "content": completion.content or ""})
                    self.messages.append({"role": "user", "content": load_prompt("loop_no_work.md").strip()})
                    self.on_event(AgentMessage("The agent answered before running any command; it was "
                                               "told to do the work first.", step))
                    continue
                result.reason = ("the agent ended without running a command or changing a file; its final answer "
                                 "was dropped, since nothing in the log could support it")
                return result
            if not calls:
                result.status, result.summary = "succeeded", (completion.content or "").strip()
                if not result.summary:
                    result.status, result.reason = "failed", "the model ended with an empty summary"
                return result
            self.messages.append(self._assistant_message(completion, calls))
            nudge = ""
            stopped_turn = False
            for call_id, name, raw_args in calls:
                if self.cancel.is_set():
                    return self._cancelled(result)
                if stopped_turn:  # every call gets its result; the rest of a stopped turn does not run
                    self._append_result(call_id, name, NOT_RUN)
                    continue
                try:
                    outcome_text, key, failed = self._run_call(step, name, raw_args, result)
                except _Unanswered as exc:
                    if self.cancel.is_set():
                        return self._cancelled(result)
                    result.reason = str(exc)
                    return result
                except Exception as exc:  # the sandbox itself broke (container died, or the job was cancelled)
                    if self.cancel.is_set():
                        return self._cancelled(result)
                    result.reason = (str(exc) if isinstance(exc, SandboxLimitReached)  # e.g. its disk cap
                                     else f"the sandbox failed while running {name}: {type(exc).__name__}: {exc}")
                    return result
                self._append_result(call_id, name, outcome_text)
                worked = worked or (name != ASK_USER and not outcome_text.startswith(MALFORMED))
                if getattr(self.env, "stopped", None):  # a `now` message stopped it: the message comes next
                    stopped_turn = True
                    continue
                last_failures = last_failures + [key] if failed else []
                if len(last_failures) >= REPEAT_LIMIT and len(set(last_failures[-REPEAT_LIMIT:])) == 1:
                    result.reason = (f"stopped: the agent repeated the same failing call {REPEAT_LIMIT} times in a row "
                                     f"({key[:200]})")
                    return result
                same_calls = same_calls + [_call_key(name, raw_args)] if not failed else []
                repeats = _trailing_repeats(same_calls)
                if repeats >= SAME_CALL_LIMIT:
                    result.reason = (f"stopped: the agent repeated the same call {SAME_CALL_LIMIT} times in a row "
                                     f"({same_calls[-1][:200]})")
                    return result
                if repeats == NUDGE_AFTER:
                    nudge = render_prompt("loop_nudge.md", count=str(repeats), call=same_calls[-1][:200],
                                          limit=str(SAME_CALL_LIMIT)).strip()
            if nudge:  # after every result of the turn: tool results must follow their call directly
                self.messages.append({"role": "user", "content": nudge})
                self.on_event(AgentMessage(f"The agent repeated the same call {NUDGE_AFTER} times; "
                                           "it was told to do something else.", step))
        result.reason = f"step budget exhausted ({self.budgets.max_steps} model turns; ASSISTANT_JOB_MAX_STEPS)"
        return result

    # ------------------------------------------------------------------ steering
    def _deliver_steering(self, step: int) -> list[SteerNote]:
        """At a step boundary, before the model call: the user's messages not read yet join the conversation as a
        user turn (merged into the last message when that is the user's already, since some chat templates want
        the roles to alternate), kept verbatim through compaction."""
        take_stopped = getattr(self.env, "take_stopped", None)
        stopped = take_stopped() if take_stopped else None
        if self.steering is None:
            return []
        notes = self.steering.take()
        if not notes:
            return []
        turn = steer_turn(notes)
        last = self.messages[-1]
        if last.get("role") == "user":
            last["content"] = f"{last.get('content') or ''}\n\n{turn}"
            if not any(m is last for m in self._steered):
                self._steered.append(last)
        else:
            self.messages.append({"role": "user", "content": turn})
            self._steered.append(self.messages[-1])
        self.steering.delivered(notes, step, "turn", stopped)
        return notes

    # ------------------------------------------------------------------ model turns
    def _ask(self) -> Completion:
        if self.protocol == "grammar":
            try:
                return self.model.next_action("agent", self.messages, self.tools, job_id=self.job_id)
            except ModelOutputError as exc:
                return Completion(content=exc.raw or "", finish_reason=INVALID_ACTION,
                                  tool_calls=[ToolCall("invalid", "", exc.problem)])
        tools = self.tools if self.protocol == "native" else None
        try:
            return self.model.complete("agent", self.messages, tools=tools, job_id=self.job_id)
        except ToolsUnsupported:
            if not self.auto_protocol:
                raise
            self.on_event(AgentMessage("The endpoint rejects native tool calls; switching to the text protocol."))
            self._switch_to_text()
            return self.model.complete("agent", self.messages, job_id=self.job_id)

    def _switch_to_text(self) -> None:
        self.protocol = "text"
        self.messages[0] = {**self.messages[0],
                            "content": self.messages[0]["content"] + "\n\n" + textproto.render_tool_instructions(self.tools)}

    def _calls_of(self, completion: Completion) -> tuple[list[tuple[str, str, str]], str | None]:
        if completion.finish_reason == INVALID_ACTION:
            return [], (f"Your reply was not a well-formed action ({completion.tool_calls[0].arguments}). "
                        "Reply with one JSON action: a tool call or your final answer.")
        if self.protocol in ("native", "grammar"):
            return [(c.id, c.name, c.arguments) for c in completion.tool_calls], None
        try:
            parsed = textproto.parse_tool_calls(completion.content or "", self.tools)
        except textproto.TextProtocolError as exc:
            return [], exc.reminder
        return [(f"text_{i}", p.name, json.dumps(p.arguments)) for i, p in enumerate(parsed)], None

    def _assistant_message(self, completion: Completion, calls: list[tuple[str, str, str]]) -> dict[str, Any]:
        if self.protocol == "native":
            return completion.as_message()
        return {"role": "assistant", "content": completion.content or ""}

    def _append_result(self, call_id: str, name: str, text: str) -> None:
        if self.protocol == "native":
            self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            call = textproto.ParsedCall(name=name, arguments={}, raw="")
            self.messages.append({"role": "user", "content": textproto.render_tool_result(call, text)})

    # ------------------------------------------------------------------ tools
    def _run_call(self, step: int, name: str, raw_args: str, result: AgentResult) -> tuple[str, str, bool]:
        key = f"{name} {raw_args}"
        try:
            args = parse_arguments(raw_args)
            if name == ASK_USER and self.asker is not None:
                return self._ask_user(step, args), key, False
            if name not in ("shell", "apply_patch"):
                raise ValueError(f"there is no tool {name!r}; the tools are "
                                 + ("shell, apply_patch and ask_user" if self.asker is not None
                                    else "shell and apply_patch"))
            self.on_event(ToolStarted(step, name, args))
            outcome = self.env.run(name, args)
        except (ValueError, TypeError) as exc:
            text = f"{MALFORMED} to {name}: {exc}. Fix the call and try again."
            self.on_event(StepFinished(step, name, f"malformed {name} call", ok=False))
            return text, key, True
        if outcome.is_test:
            result.tests.append({"command": args.get("command", ""), "exit_code": outcome.exit_code,
                                 "chunk_id": outcome.chunk_id})
        self.on_event(StepFinished(step, name, outcome.title, outcome.chunk_id, outcome.exit_code,
                                   round(outcome.duration_s, 3), outcome.ok, outcome.is_test))
        return outcome.text, key, not outcome.ok

    def _ask_user(self, step: int, args: dict[str, Any]) -> str:
        """Put the question to the user and wait (the asker blocks): the answer is the tool's result. The wait
        does not count against the time budget. No answer in time (or a cancel) ends the job: _Unanswered."""
        question = parse_question(args, step)   # a ValueError: a malformed call the model can fix
        self.on_event(ToolStarted(step, ASK_USER, args))
        reply = self.asker.ask(question)
        self.paused_s += reply.waited_s
        if reply.answer is None:
            self.on_event(StepFinished(step, ASK_USER, f"asked: {question.text[:160]} (no answer)", ok=False))
            raise _Unanswered("cancelled by the user" if reply.ended == "cancelled"
                              else unanswered_reason(question, reply))
        if self.steering is not None and reply.message_ids:
            self._answered.extend(SteerNote(i, "") for i in reply.message_ids)
        self.on_event(StepFinished(step, ASK_USER, f"asked: {question.text[:160]}", ok=True))
        return answer_result(reply)

    # ------------------------------------------------------------------ safety nets
    def _over_budget(self, started: float, result: AgentResult) -> str | None:
        elapsed = time.monotonic() - started - self.paused_s   # waiting for the user is not the job's time
        if elapsed > self.budgets.max_seconds:
            return f"time budget exhausted ({self.budgets.max_seconds:.0f} s; ASSISTANT_JOB_MAX_SECONDS)"
        used = result.prompt_tokens + result.completion_tokens
        if used > self.budgets.max_tokens:
            return f"token budget exhausted ({used} of {self.budgets.max_tokens} tokens; ASSISTANT_JOB_MAX_TOKENS)"
        return None

    def _cancelled(self, result: AgentResult) -> AgentResult:
        result.status, result.reason = "cancelled", "cancelled by the user"
        return result

    def _compact_if_needed(self) -> None:
        """Near the context window, older tool results shrink to a one-line digest that keeps the chunk id,
        so the job goes on and the model can still cite or re-read them."""
        limit = int(self.budgets.context_window * COMPACT_AT)
        if count_message_tokens(self.messages, self.model.model_for("agent")) <= limit:
            return
        compacted = 0
        for msg in self.messages[2:-KEEP_RECENT]:
            if any(m is msg for m in self._steered):  # the user's own words stay as they were
                continue
            content = msg.get("content") or ""
            if msg.get("role") in ("tool", "user") and len(content) > 400 and not content.startswith("[compacted"):
                first = content.splitlines()[0][:300]
                msg["content"] = f"[compacted to save context; the full output is stored] {first}"
                compacted += 1
            elif msg.get("role") == "assistant" and msg.get("tool_calls"):
                for call in msg["tool_calls"]:
                    args = call["function"]["arguments"]
                    if len(args) > 2000:
                        call["function"]["arguments"] = json.dumps({"patch": "[compacted: a patch that was applied]"})
                        compacted += 1
        if compacted:
            self.on_event(AgentMessage(f"Compacted {compacted} older tool results to stay within the context window."))
