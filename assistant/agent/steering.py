"""Steering a running job: what the agent reads of the messages the user tells it while it works.

The agent asks its inbox (a SteerInbox: the store, through the jobs layer) at every step boundary, before its next
model call, for the messages not read yet; it appends them to the conversation (a user turn, kept verbatim through
compaction), says at which step they arrived, and quotes its next turn as their acknowledgement. A message sent with
`now` also stops the command running at that moment (ToolEnv.interrupt), wherever the run is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from ..prompts import render_prompt

ACK_CHARS = 200   # how much of the agent's next turn the receipt quotes


@dataclass(frozen=True)
class SteerNote:
    """One message of the user to the running job."""
    id: str
    text: str
    now: bool = False


class SteerInbox(Protocol):
    def take(self) -> list[SteerNote]:
        """The messages not delivered yet, oldest first (one cheap query: this runs at every step)."""

    def delivered(self, notes: list[SteerNote], step: int, how: str, stopped: str | None = None) -> None:
        """They reached the agent at `step` (`how`: "turn" or "guidance"; `stopped`: the command a message stopped)."""

    def acknowledged(self, notes: list[SteerNote], excerpt: str) -> None:
        """The agent's next turn after them, quoted."""


def _quoted(notes: list[SteerNote]) -> str:
    return "\n\n".join("> " + note.text.strip().replace("\n", "\n> ") for note in notes)


def steer_turn(notes: list[SteerNote]) -> str:
    """The user turn that carries the messages into the free agent's conversation."""
    return render_prompt("steer_message.md", messages=_quoted(notes)).strip()


def steer_guidance(notes: list[SteerNote]) -> str:
    """The same messages as extra guidance of the guided harness."""
    return render_prompt("steer_guidance.md", messages=_quoted(notes)).strip()


def stopped_note(seconds: float) -> str:
    """Added to the result of a command a `now` message stopped."""
    return render_prompt("steer_stopped.md", seconds=f"{seconds:.1f}").strip()


def excerpt_of(content: str | None, calls: list[tuple[str, str]] = ()) -> str:
    """The receipt's quote of a turn: its text, else its (first) tool call, in at most ACK_CHARS characters."""
    text = (content or "").strip()
    if not text and calls:
        name, raw = calls[0]
        try:
            args = json.loads(raw or "{}")
        except ValueError:
            args = None
        if isinstance(args, dict) and isinstance(args.get("command"), str):
            text = f"{name}: $ {args['command']}"
        else:
            text = f"{name} {raw}"
    text = " ".join(text.split())
    return text if len(text) <= ACK_CHARS else text[:ACK_CHARS - 1] + "…"
