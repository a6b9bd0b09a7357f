"""The agent can ask: its `ask_user` tool, for when it is blocked or needs a decision only the user can make.

The agent hands the question to an Asker (the jobs layer's: the job waits in state `waiting`, its sandbox kept and
its time budget paused, until a message told to the job answers it or the ask timeout passes) and the answer comes
back as the tool's result. Without an Asker (no user to ask) the tool is not offered at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..prompts import load_prompt, render_prompt

ASK_USER = "ask_user"
MAX_QUESTION_CHARS = 2000
MAX_CHOICES = 10
MAX_CHOICE_CHARS = 200
UNANSWERED = "for an answer that did not come"   # in the reason of a job whose question got no answer in time

ASK_USER_SPEC = {"type": "function", "function": {
    "name": ASK_USER,
    "description": " ".join(load_prompt("ask_user_tool.md").split()),
    "parameters": {"type": "object", "properties": {
        "question": {"type": "string", "description": "The question, short and specific."},
        "choices": {"type": "array", "items": {"type": "string"},
                    "description": "Optional: the answers to choose from, when it is one of a few."},
    }, "required": ["question"], "additionalProperties": False}}}


@dataclass(frozen=True)
class Question:
    text: str
    choices: tuple[str, ...] = ()
    step: int | None = None


@dataclass(frozen=True)
class Reply:
    """How a question ended: `answer` (the user's words) or, without one, `ended` says why: "timeout" (no answer
    within the ask timeout) or "cancelled" (the job was stopped while it waited)."""
    answer: str | None
    waited_s: float
    ended: str = ""
    timeout_s: float = 0.0
    message_ids: list[str] = field(default_factory=list)


class Asker(Protocol):
    def ask(self, question: Question) -> Reply:
        """Put the question to the user and block until it is answered, times out or the job is cancelled."""


def parse_question(arguments: dict[str, Any], step: int | None = None) -> Question:
    """The tool call's arguments as a Question, or a ValueError the model can act on."""
    text = arguments.get("question")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("`question` must be a non-empty string")
    text = text.strip()
    if len(text) > MAX_QUESTION_CHARS:
        raise ValueError(f"the question has {len(text)} characters; ask it in at most {MAX_QUESTION_CHARS}")
    choices = arguments.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError("`choices`, when given, must be a list of non-empty strings")
    if len(choices) > MAX_CHOICES:
        raise ValueError(f"give at most {MAX_CHOICES} choices")
    extra = set(arguments) - {"question", "choices"}
    if extra:
        raise ValueError(f"unknown argument(s) {', '.join(sorted(extra))}; ask_user takes question and choices")
    return Question(text, tuple(c.strip()[:MAX_CHOICE_CHARS] for c in choices), step)


def answer_result(reply: Reply) -> str:
    """The tool's result the model reads: the user's answer."""
    quoted = "> " + (reply.answer or "").strip().replace("\n", "\n> ")
    return render_prompt("ask_user_answer.md", answer=quoted).strip()


def unanswered_reason(question: Question, reply: Reply) -> str:
    """Why the job ends when its question got no answer in time: what it asked, how long it waited, what to do."""
    minutes = reply.waited_s / 60
    waited = f"{minutes:.0f} min" if minutes >= 2 else f"{reply.waited_s:.0f} s"
    return (f"the agent asked \u201c{_clip(question.text, 300)}\u201d and waited {waited} {UNANSWERED} "
            f"(ASSISTANT_ASK_TIMEOUT_S is {reply.timeout_s:.0f} s); it stopped there without finishing "
            "the task. Retry the job with the answer in its task, or ask a follow-up that answers it")


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"
