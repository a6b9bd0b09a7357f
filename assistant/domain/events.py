"""What happens to a job, as typed records with one encoding.

Every producer (the agent loop, the pipeline, the manager) emits these records; every consumer (the store, the CLI's
progress printer, the web relay and cards, the database channel between processes) reads them through
`decode`. The encoding is the `(kind, data)` pair stored in the job_event table since the first release,
so rows written before these classes existed decode unchanged: a missing field takes its default, an
unknown field is ignored, and an unknown kind decodes to `UnknownEvent` instead of failing.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class JobEventRecord:
    """Base of every job event. `kind` is the stored name; `stored` says whether the event is kept
    (ephemeral ones, such as live output, only travel to whoever listens now)."""

    kind: ClassVar[str] = ""
    stored: ClassVar[bool] = True

    def data(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class StateChanged(JobEventRecord):
    kind: ClassVar[str] = "state"
    state: str = ""
    reason: str | None = None
    attempt: int | None = None      # set when the job is queued: which of a best-of-N group
    attempts: int | None = None


@dataclass(frozen=True)
class SetupCommandRan(JobEventRecord):
    kind: ClassVar[str] = "setup_command"
    command: str = ""
    chunk_id: str | None = None
    exit_code: int | None = None
    duration_s: float = 0.0
    lines: int = 0


@dataclass(frozen=True)
class ToolStarted(JobEventRecord):
    kind: ClassVar[str] = "tool_start"
    stored: ClassVar[bool] = False
    step: int | None = None
    tool: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """"step 3: $ pytest -q" — what is under way now."""
        command = self.arguments.get("command")
        what = f"$ {command}" if command else self.tool
        return f"step {self.step if self.step is not None else '?'}: {what}"


@dataclass(frozen=True)
class StepFinished(JobEventRecord):
    kind: ClassVar[str] = "step"
    step: int | None = None
    tool: str = ""
    title: str = ""
    chunk_id: str | None = None
    exit_code: int | None = None
    duration_s: float | None = None
    ok: bool | None = None
    is_test: bool = False

    @property
    def succeeded(self) -> bool:
        return self.ok if self.ok is not None else self.exit_code in (0, None)


@dataclass(frozen=True)
class StepStopped(JobEventRecord):
    """A step that was under way when its job ended (a cancel stops its sandbox): no StepFinished follows it,
    and without this record the card would lose the step it was on."""
    kind: ClassVar[str] = "step_stopped"
    step: int | None = None
    tool: str = ""
    title: str = ""                 # "$ pytest -q" or the tool's name
    state: str = ""                 # how the job ended: cancelled, failed, interrupted


@dataclass(frozen=True)
class AgentMessage(JobEventRecord):
    kind: ClassVar[str] = "message"
    text: str = ""
    step: int | None = None


@dataclass(frozen=True)
class OutputDelta(JobEventRecord):
    kind: ClassVar[str] = "output"
    stored: ClassVar[bool] = False
    text: str = ""


@dataclass(frozen=True)
class Notice(JobEventRecord):
    kind: ClassVar[str] = "notice"
    text: str = ""
    level: str = "info"             # info | warning

    @property
    def warning(self) -> bool:
        return self.level == "warning"


@dataclass(frozen=True)
class SummaryWritten(JobEventRecord):
    kind: ClassVar[str] = "summary"
    summary: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class DiffComputed(JobEventRecord):
    kind: ClassVar[str] = "diff"
    files: list[list[str]] = field(default_factory=list)   # [status, path], e.g. ["modified", "a.py"]
    diff_lines: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GroupRanked(JobEventRecord):
    kind: ClassVar[str] = "group_ranked"
    group_id: str = ""
    order: list[str] = field(default_factory=list)
    recommended: str | None = None  # None: no attempt is recommended (none succeeded with a result)
    note: str = ""                  # the group's verdict in a sentence ("No attempt produced a change …")


@dataclass(frozen=True)
class SandboxReady(JobEventRecord):
    """The sandbox is prepared: facts the job row keeps and the card shows."""
    kind: ClassVar[str] = "sandbox_ready"
    backend: str = ""
    base_commit: str | None = None
    setup_network: str | None = None
    agent_network: str | None = None
    cache_hit: bool = False


@dataclass(frozen=True)
class SandboxPlaced(JobEventRecord):
    """Where the job's sandbox runs: the engine of a pool and the container on it."""
    kind: ClassVar[str] = "placed"
    engine: str = ""
    container: str | None = None


@dataclass(frozen=True)
class Routed(JobEventRecord):
    """Why the conversation made this message a job (the router's one-line reason)."""
    kind: ClassVar[str] = "routed"
    text: str = ""
    decided_by: str = ""


@dataclass(frozen=True)
class Finished(JobEventRecord):
    kind: ClassVar[str] = "finished"
    state: str = ""
    reason: str | None = None


@dataclass(frozen=True)
class SteerQueued(JobEventRecord):
    """The user told the running job something (`JobManager.tell`): kept until the agent's next step reads it.
    `now`: the command running at that moment is stopped for it."""
    kind: ClassVar[str] = "steer_queued"
    message_id: str = ""
    text: str = ""
    now: bool = False


@dataclass(frozen=True)
class SteerDelivered(JobEventRecord):
    """A steering message reached the agent at `step`: as a user turn of the conversation (`how` "turn"), as extra
    guidance of the guided harness ("guidance"). `stopped` names the command it stopped (a `now` message)."""
    kind: ClassVar[str] = "steer_delivered"
    message_id: str = ""
    step: int | None = None
    how: str = "turn"
    stopped: str | None = None


@dataclass(frozen=True)
class SteerAcknowledged(JobEventRecord):
    """The agent's next turn after a steering message, quoted (its text or its tool call): the receipt."""
    kind: ClassVar[str] = "steer_acknowledged"
    message_id: str = ""
    excerpt: str = ""


@dataclass(frozen=True)
class QuestionAsked(JobEventRecord):
    """The agent asked the user something (its ask_user tool) at `step`; the job waits in state `waiting` for the
    answer (a message told to the job) at most `timeout_s` seconds (ASSISTANT_ASK_TIMEOUT_S)."""
    kind: ClassVar[str] = "question_asked"
    question: str = ""
    choices: list[str] = field(default_factory=list)
    step: int | None = None
    timeout_s: float = 0.0


@dataclass(frozen=True)
class QuestionAnswered(JobEventRecord):
    """The user's answer reached the agent as its ask_user result after `waited_s` seconds (`message_ids`: the
    steering messages that made it)."""
    kind: ClassVar[str] = "question_answered"
    answer: str = ""
    waited_s: float = 0.0
    message_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QuestionTimedOut(JobEventRecord):
    """No answer came within the ask timeout: the job ends (failed) without one."""
    kind: ClassVar[str] = "question_timed_out"
    question: str = ""
    waited_s: float = 0.0


@dataclass(frozen=True)
class UnknownEvent(JobEventRecord):
    """A kind this release does not know (written by a newer one, or by another part of the app): kept as is."""
    raw_kind: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        return dict(self.raw)


EVENT_TYPES: dict[str, type[JobEventRecord]] = {cls.kind: cls for cls in (
    StateChanged, SetupCommandRan, ToolStarted, StepFinished, StepStopped, AgentMessage, OutputDelta, Notice,
    SummaryWritten, DiffComputed, GroupRanked, SandboxReady, SandboxPlaced, Routed, Finished, SteerQueued,
    SteerDelivered, SteerAcknowledged, QuestionAsked, QuestionAnswered, QuestionTimedOut)}


def kind_of(event: JobEventRecord) -> str:
    return event.raw_kind if isinstance(event, UnknownEvent) else event.kind


def encode(event: JobEventRecord) -> tuple[str, dict[str, Any]]:
    """The stored form: (kind, JSON-serialisable data)."""
    return kind_of(event), event.data()


def decode(kind: str, data: dict[str, Any] | None) -> JobEventRecord:
    cls = EVENT_TYPES.get(kind)
    data = dict(data or {})
    if cls is None:
        return UnknownEvent(raw_kind=kind, raw=data)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class JobUpdate:
    """One event of one job as subscribers receive it. `seq` is its place in the job's stored log (None for
    ephemeral events); `kind` and `data` are the encoded form, for consumers that only pass it on."""

    job_id: str
    thread_id: str | None
    event: JobEventRecord
    seq: int | None = None
    at: datetime | None = None

    @property
    def kind(self) -> str:
        return kind_of(self.event)

    @property
    def data(self) -> dict[str, Any]:
        return self.event.data()

    def to_json(self) -> str:
        """The form that crosses process boundaries (the database channel)."""
        kind, data = encode(self.event)
        return json.dumps({"job": self.job_id, "thread": self.thread_id, "kind": kind, "data": data, "seq": self.seq,
                           "at": self.at.isoformat() if self.at else None}, default=str)

    @classmethod
    def from_json(cls, text: str) -> "JobUpdate":
        raw = json.loads(text)
        at = datetime.fromisoformat(raw["at"]) if raw.get("at") else None
        return cls(raw["job"], raw.get("thread"), decode(raw["kind"], raw.get("data")), raw.get("seq"), at)


__all__ = ["JobEventRecord", "StateChanged", "SetupCommandRan", "ToolStarted", "StepFinished", "StepStopped",
           "AgentMessage", "OutputDelta", "Notice", "SummaryWritten", "DiffComputed", "GroupRanked", "SandboxReady",
           "SandboxPlaced", "Routed", "Finished", "SteerQueued", "SteerDelivered", "SteerAcknowledged", "QuestionAsked",
           "QuestionAnswered", "QuestionTimedOut", "UnknownEvent", "EVENT_TYPES",
           "kind_of", "encode", "decode", "JobUpdate"]
