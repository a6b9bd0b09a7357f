"""What a quick answer streams, as one typed union: a consumer matches on the class, never on a string.

`kind`, `text` and `data` remain as a uniform view of each event, for a consumer that still reads them so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union


@dataclass(frozen=True)
class AnswerAbout:
    """The answer is about an earlier job (a follow-up question): shown above the reply."""
    kind: ClassVar[str] = "about"
    job_id: str
    number: int
    title: str | None = None
    task: str = ""

    @property
    def text(self) -> str:
        return f"About job {self.number} · {self.title or self.task[:60]}"

    @property
    def data(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "number": self.number, "title": self.title}


@dataclass(frozen=True)
class _Text:
    text: str

    @property
    def data(self) -> dict[str, Any]:
        return {}


class AnswerToken(_Text):
    """A piece of the streamed reply."""
    kind: ClassVar[str] = "token"


@dataclass(frozen=True)
class AnswerLookup:
    """A read-only tool the answer used (list, search, read, read_log), with what it returned."""
    kind: ClassVar[str] = "tool"
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    output: str = ""

    @property
    def text(self) -> str:
        return self.tool

    @property
    def data(self) -> dict[str, Any]:
        return {"arguments": self.arguments, "output": self.output}


@dataclass(frozen=True)
class AnswerDone:
    """The final reply with its checked citations; `job_files`/`repo_root` let the adapter link them."""
    kind: ClassVar[str] = "done"
    text: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    job_id: str | None = None
    job_files: list[str] = field(default_factory=list)
    repo_root: str = ""

    @property
    def data(self) -> dict[str, Any]:
        return {"citations": self.citations, "job_id": self.job_id, "job_files": self.job_files,
                "repo_root": self.repo_root}


class AnswerError(_Text):
    """The answer could not be given; the text says why and what to do."""
    kind: ClassVar[str] = "error"


@dataclass(frozen=True)
class AnswerRetract(_Text):
    """The reply streamed so far is unusable (an echo, a loop, degenerate text): drop it; `text` says why.
    Another reply follows (a retry, or the search result)."""
    kind: ClassVar[str] = "retract"


AnswerEvent = Union[AnswerAbout, AnswerToken, AnswerLookup, AnswerRetract, AnswerDone, AnswerError]
