"""The sandbox's wall clock (ChannelSandbox, both backends): paused while the job waits for its user's answer, it
neither expires nor counts the pause; resumed, it goes on with the time that was left. No engine needed: the
clock is the base class's own."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from assistant.sandbox.base import SandboxError
from assistant.sandbox.channel import ChannelSandbox


@dataclass
class _Config:
    job_wall_clock_s: float
    output_cap_bytes: int = 1 << 20


class ClockOnly(ChannelSandbox):
    """A sandbox with the wall clock and nothing behind it (no command server)."""
    backend = "clock-only"

    def __init__(self, wall_clock_s: float):
        self._config = _Config(wall_clock_s)
        self._channel = None
        self._expired = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._torn_down = threading.Event()
        self._deadline = time.monotonic() + wall_clock_s
        self._wall_clock = threading.Timer(wall_clock_s, self._expire)
        self._wall_clock.daemon = True
        self._wall_clock.start()

    def _teardown(self) -> None:
        pass


def test_a_paused_wall_clock_does_not_expire_and_resumes_with_what_was_left():
    sandbox = ClockOnly(1.0)
    sandbox.pause_wall_clock()
    time.sleep(2.0)                                   # twice the whole limit, paused
    assert not sandbox._expired and not sandbox._torn_down.is_set()
    sandbox.resume_wall_clock()
    left = sandbox._deadline - time.monotonic()
    assert 0 < left <= 1.0                            # what was left when paused, not a fresh limit
    assert sandbox._torn_down.wait(30)                # then it runs out as before
    assert sandbox._expired
    with pytest.raises(SandboxError, match="wall-clock limit of 1.0 s"):
        sandbox.exec("true")


def test_an_unpaused_clock_expires_and_a_resume_after_close_starts_nothing():
    running = ClockOnly(0.5)
    assert running._torn_down.wait(30) and running._expired   # the control: without a pause it expires
    closed = ClockOnly(60)
    closed.pause_wall_clock()
    closed.close()
    closed.resume_wall_clock()
    closed._wall_clock.join(5)
    assert not closed._wall_clock.is_alive() and closed._wall_clock.finished.is_set()   # the paused one, cancelled
    closed.resume_wall_clock()                        # a second resume (or one without a pause) does nothing
