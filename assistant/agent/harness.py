"""Which harness drives a job: the free agent loop (the model navigates with shell and apply_patch) or the
guided one (the product localizes and validates, the model picks constrained edits).

A strong model does best on its own, and a small one only when guided, so `auto` guides exactly when the
endpoint is driven through grammar-constrained actions (the embedded model, or ASSISTANT_TOOL_PROTOCOL=grammar).
"""
from __future__ import annotations

import threading

from ..llm.client import ModelClient
from .guided import GuidedAgent
from .asking import Asker
from .loop import Agent, AgentBudgets, EventSink
from .steering import SteerInbox
from .tools import ToolEnv

HARNESSES = ("auto", "guided", "free")


def uses_guided(harness: str, tool_protocol: str) -> bool:
    if harness not in HARNESSES:
        raise ValueError(f"unknown agent harness {harness!r}; choose one of {', '.join(HARNESSES)}")
    return harness == "guided" or (harness == "auto" and tool_protocol == "grammar")


def make_agent(model: ModelClient, env: ToolEnv, limits, *, job_id: str | None, cancel: threading.Event,
               on_event: EventSink, steering: SteerInbox | None = None,
               asker: Asker | None = None) -> Agent | GuidedAgent:
    """The agent for one job, from its JobLimits (budgets, protocol, harness); `steering` carries the messages the
    user tells the job while it runs; `asker` lets the free agent ask the user (the guided harness picks among
    constrained edits the tests decide on: it has nothing to ask)."""
    budgets = AgentBudgets(max_steps=limits.max_steps, max_seconds=limits.max_seconds, max_tokens=limits.max_tokens,
                           context_window=limits.context_window)
    if uses_guided(limits.harness, limits.tool_protocol):
        return GuidedAgent(model, env, budgets=budgets, job_id=job_id, cancel=cancel, on_event=on_event,
                           candidates=limits.candidates, steering=steering)
    return Agent(model, env, budgets=budgets, protocol=limits.tool_protocol, job_id=job_id, cancel=cancel,
                 on_event=on_event, steering=steering, asker=asker)
