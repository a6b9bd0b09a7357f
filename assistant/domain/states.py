"""The job state machine of DESIGN.md."""
from __future__ import annotations

QUEUED, PREPARING, SETTING_UP, RUNNING = "queued", "preparing", "setting_up", "running"
WAITING = "waiting"   # the agent asked the user something (its ask_user tool) and waits for the answer
SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = "succeeded", "failed", "cancelled", "interrupted"

ACTIVE = (QUEUED, PREPARING, SETTING_UP, RUNNING, WAITING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
ALL_STATES = ACTIVE + TERMINAL

_STOPS = {FAILED, CANCELLED, INTERRUPTED}
TRANSITIONS: dict[str, set[str]] = {
    QUEUED: {PREPARING} | _STOPS,
    PREPARING: {SETTING_UP, RUNNING} | _STOPS,
    SETTING_UP: {RUNNING} | _STOPS,
    RUNNING: {SUCCEEDED, WAITING} | _STOPS,
    WAITING: {RUNNING} | _STOPS,   # answered: running again; unanswered in time: failed
    SUCCEEDED: set(),
    FAILED: set(),
    CANCELLED: set(),
    INTERRUPTED: set(),
}


class IllegalTransition(ValueError):
    def __init__(self, job_id: str, current: str, wanted: str):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "none (it has ended)"
        super().__init__(f"job {job_id}: cannot go from {current} to {wanted}; allowed from {current}: {allowed}")
        self.current, self.wanted = current, wanted


def check_transition(job_id: str, current: str, wanted: str) -> None:
    if wanted not in TRANSITIONS.get(current, set()):
        raise IllegalTransition(job_id, current, wanted)
