"""The job state machine of DESIGN.md."""
from __future__ import annotations

QUEUED, PREPARING, SETTING_UP, RUNNING = "queued", "preparing", "setting_up", "running"
SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = "succeeded", "failed", "cancelled", "interrupted"

ACTIVE = (QUEUED, PREPARING, SETTING_UP, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
ALL_STATES = ACTIVE + TERMINAL

_STOPS = {FAILED, CANCELLED, INTERRUPTED}
TRANSITIONS: dict[str, set[str]] = {
    QUEUED: {PREPARING} | _STOPS,
    PREPARING: {SETTING_UP, RUNNING} | _STOPS,
    SETTING_UP: {RUNNING} | _STOPS,
    RUNNING: {SUCCEEDED} | _STOPS,
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
