"""SQLModel tables: users, threads, messages (Chainlit steps), jobs, job events, log chunks, artifacts, usage,
notifications."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 5  # 2: job.fence, job.engine, job.container; the sandbox_engine table (scale-out); 3: user.revoked;
                    # 4: the notification table (job webhooks); 5: the steer_message table (steering a running job)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return str(uuid.uuid4())


class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


class User(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    identifier: str = Field(index=True, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    revoked: int = 0  # `assistant users revoke` counts up: every login token made before it stops working


class Thread(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    user_id: Optional[str] = Field(default=None, index=True, foreign_key="user.id")
    name: Optional[str] = None
    repo: Optional[str] = None
    ref: Optional[str] = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Message(SQLModel, table=True):
    """A Chainlit step: user and assistant messages, tool steps, job cards."""
    id: str = Field(default_factory=new_id, primary_key=True)
    thread_id: str = Field(index=True, foreign_key="thread.id")
    parent_id: Optional[str] = None
    name: str = ""
    type: str = "assistant_message"
    input: Optional[str] = Field(default=None, sa_column=Column(Text))
    output: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    start: Optional[datetime] = None
    end: Optional[datetime] = None
    is_error: bool = False
    language: Optional[str] = None
    show_input: Optional[str] = None
    job_id: Optional[str] = Field(default=None, index=True)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Element(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    thread_id: Optional[str] = Field(default=None, index=True)
    for_id: Optional[str] = None
    type: str = "text"
    name: str = ""
    display: str = "inline"
    mime: Optional[str] = None
    url: Optional[str] = None
    content: Optional[str] = Field(default=None, sa_column=Column(Text))
    language: Optional[str] = None
    props: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)


class Feedback(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    for_id: str = Field(index=True)
    thread_id: Optional[str] = None
    value: int = 0
    comment: Optional[str] = None


class Job(SQLModel, table=True):
    id: str = Field(primary_key=True)
    thread_id: Optional[str] = Field(default=None, index=True)
    user_id: Optional[str] = Field(default=None, index=True)
    number: int = 0                      # 1, 2, … within its thread ("job 2")
    title: str = ""
    task: str = Field(sa_column=Column(Text))
    repo: str = ""
    ref: Optional[str] = None
    setup: Optional[list[str]] = Field(default=None, sa_column=Column(JSON))
    parent_job_id: Optional[str] = None  # follow-up jobs start from this job's result
    group_id: Optional[str] = Field(default=None, index=True)  # best-of-N attempts share one
    attempt: int = 1
    attempts: int = 1
    state: str = Field(default="queued", index=True)
    reason: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    queued_at: Optional[datetime] = None
    preparing_at: Optional[datetime] = None
    setting_up_at: Optional[datetime] = None
    running_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    backend: Optional[str] = None
    base_commit: Optional[str] = None
    setup_network: Optional[str] = None
    agent_network: Optional[str] = None
    cache_hit: bool = False
    summary: Optional[str] = Field(default=None, sa_column=Column(Text))
    citations: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    outcome: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # tests run/passed, diff size, rank
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: Optional[str] = None
    runner: Optional[str] = None         # "host:pid" of the process that runs it; a dead runner's jobs are interrupted
    fence: int = 1                       # which run of the job may write; bumped when a lost run is retried
    engine: Optional[str] = None         # the sandbox engine of a pool that runs it, and its container there
    container: Optional[str] = None


class SandboxEngine(SQLModel, table=True):
    """A Docker engine of the pool as the workers last found it: up (takes jobs) or down (gets none), and why."""
    name: str = Field(primary_key=True)
    state: str = "up"
    reason: Optional[str] = Field(default=None, sa_column=Column(Text))
    checked_at: datetime = Field(default_factory=utcnow)


class JobEvent(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("job_id", "seq"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: str = Field(index=True)
    seq: int
    kind: str
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)


class LogChunk(SQLModel, table=True):
    """One command's output, citable as 【<id>†Lx-Ly】."""
    id: str = Field(primary_key=True, max_length=6)
    job_id: Optional[str] = Field(default=None, index=True)
    phase: str = "agent"                 # setup | agent
    command: str = Field(sa_column=Column(Text))
    exit_code: Optional[int] = None
    timed_out: bool = False
    duration_s: float = 0.0
    text: str = Field(default="", sa_column=Column(Text))
    line_count: int = 0
    truncated: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Artifact(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: str = Field(index=True)
    kind: str                            # diff | patch | summary | files
    content: str = Field(default="", sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class TokenUsage(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: Optional[str] = Field(default=None, index=True)
    thread_id: Optional[str] = Field(default=None, index=True)
    role: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class Notification(SQLModel, table=True):
    """One notification of one job event to one webhook URL, and how its delivery went (assistant/notify).
    The unique (job, event, url) is what makes a delivery happen at most once, whichever process records it.
    state: pending (due at next_at), sending (an attempt is under way: claimed_by, claimed_at), delivered, failed."""
    __table_args__ = (UniqueConstraint("job_id", "event", "url"),)
    id: str = Field(default_factory=new_id, primary_key=True)
    job_id: str = Field(index=True)
    event: str                           # ended (a job's end), or waiting:<run>.<step> (its agent asks the user)
    url: str = Field(sa_column=Column(Text, nullable=False))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    state: str = Field(default="pending", index=True)
    attempts: int = 0
    next_at: Optional[datetime] = Field(default_factory=utcnow, index=True)
    claimed_by: Optional[str] = None
    claimed_at: Optional[datetime] = None
    last_status: Optional[int] = None    # the HTTP status of the last answer (None: no answer)
    last_error: Optional[str] = Field(default=None, sa_column=Column(Text))
    delivered_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)


class SteerMessage(SQLModel, table=True):
    """A message the user told a running job (`assistant jobs tell`, JobManager.tell), and its receipt.
    state: queued (waiting for the agent's next step), delivered (at delivered_step), acknowledged (the agent's next
    turn, quoted in ack_excerpt), dropped (the job ended before its agent read it). The run polls its job's queued
    messages once per step through the (job_id, state) index."""
    __tablename__ = "steer_message"
    __table_args__ = (Index("ix_steer_message_job_state", "job_id", "state"),)
    id: str = Field(default_factory=new_id, primary_key=True)
    job_id: str
    user_id: Optional[str] = None
    text: str = Field(sa_column=Column(Text, nullable=False))
    now: bool = False                    # stop the command running when it arrives
    state: str = "queued"
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: Optional[datetime] = None
    delivered_step: Optional[int] = None
    delivered_how: Optional[str] = None  # turn (the free agent's conversation) | guidance (the guided harness)
    stopped: Optional[str] = Field(default=None, sa_column=Column(Text))  # the command a `now` message stopped
    acknowledged_at: Optional[datetime] = None
    ack_excerpt: Optional[str] = Field(default=None, sa_column=Column(Text))
