"""How a command's stored output is shown to a model: head and tail, the elided middle counted."""

from __future__ import annotations


def head_and_tail(text: str, max_chars: int = 10_000, head_share: float = 0.4) -> str:
    if len(text) <= max_chars:
        return text
    head = text[: int(max_chars * head_share)]
    tail = text[len(text) - (max_chars - len(head)):]
    # Cut at line boundaries so the model never sees half a line on either side of the gap.
    if "\n" in head:
        head = head[: head.rfind("\n") + 1]
    if "\n" in tail:
        tail = tail[tail.find("\n") + 1:]
    middle = text[len(head): len(text) - len(tail)]
    lines = middle.count("\n")
    return f"{head}[... {lines} lines ({len(middle)} characters) elided ...]\n{tail}"
