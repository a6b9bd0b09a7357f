"""`assistant serve`: the Chainlit server as a supervised child that stops cleanly and leaves nothing behind.

A service manager, `docker stop` or Ctrl-C sends SIGTERM or SIGINT to this process. It forwards SIGTERM to
the server (its own process group, so a terminal's Ctrl-C reaches only us): uvicorn stops, and the app's
shutdown hook interrupts running jobs (retryable), removes their containers and stops the embedded model.
A server that has not exited after STOP_GRACE_S is killed, and then this process does what its hook could
not: it marks the server's jobs interrupted and removes their containers. A second signal kills at once.
The server also gets SIGTERM if this process dies however it dies (PR_SET_PDEATHSIG).

Retention (assistant/retention.py) runs here, every ASSISTANT_RETENTION_INTERVAL_MIN, beside the server.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import Settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 7.0            # the server's own shutdown must fit in it; the whole stop stays under 10 s
FIRST_RETENTION_AFTER_S = 60.0
_PR_SET_PDEATHSIG = 1


def serve(settings: Settings, command: list[str], env: dict[str, str], cwd: Path) -> int:
    # Chainlit reads CI=true as its --ci flag, which plants a fake OPENAI_API_KEY: the embedded model would
    # then never start, and every request would go to a real endpoint with a key that is not one.
    env = {key: value for key, value in env.items() if key != "CI"}
    server = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
    stopping = _forward_stop_signals(server)
    retention = _RetentionLoop(settings)
    retention.start()
    # The clean-up after a kill assesses and notifies the jobs it interrupts: its modules take seconds to import
    # on a busy machine, time a stop cannot spare. They are loaded while the server runs.
    threading.Thread(target=_load_clean_up, name="load-clean-up", daemon=True).start()
    try:
        code, killed = _wait(server, stopping)
    finally:
        retention.stop()
    _clean_up_after(settings)
    if stopping.is_set() and not killed:
        return 0
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (even by SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _forward_stop_signals(server: subprocess.Popen) -> threading.Event:
    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stopping.is_set():  # asked twice: no more waiting
            _signal_group(server.pid, signal.SIGKILL)
            return
        stopping.set()
        print(f"assistant: {signal.Signals(signum).name}: stopping (running jobs are interrupted; retry them later)",
              file=sys.stderr, flush=True)
        _signal_group(server.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopping


def _wait(server: subprocess.Popen, stopping: threading.Event) -> tuple[int, bool]:
    """The server's exit code, and whether it had to be killed."""
    deadline = None
    while True:
        try:
            return server.wait(timeout=0.1), False
        except subprocess.TimeoutExpired:
            pass
        if stopping.is_set():
            deadline = deadline or time.monotonic() + STOP_GRACE_S
            if time.monotonic() > deadline:
                log.warning("the server did not stop within %.0f s; killing it", STOP_GRACE_S)
                _signal_group(server.pid, signal.SIGKILL)
                return server.wait(), True


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _load_clean_up() -> None:
    try:
        from .jobs import manager, results  # noqa: F401
        from .sandbox import sweep_orphans  # noqa: F401
    except Exception:  # the clean-up imports them again and says what fails
        log.debug("preloading the clean-up failed", exc_info=True)


def _clean_up_after(settings: Settings) -> None:
    """Whatever the server's shutdown hook did not get to (it was killed, or it crashed): its jobs are
    interrupted, its containers go. After a clean stop there is nothing left to do."""
    from .sandbox import sweep_orphans
    from .store import Store

    store = Store(settings.resolved_database_url)
    try:
        from .jobs.manager import interrupt_orphans  # assessed, and their end notified by the next start
        interrupted = interrupt_orphans(settings, store, "the server stopped while this job was active; retry it")
    finally:
        store.close()
    if interrupted:
        print(f"assistant: marked {len(interrupted)} jobs interrupted: {', '.join(interrupted)}", file=sys.stderr)
    try:
        sweep_orphans()
    except Exception as exc:  # no engine: no containers either
        log.info("no container sweep: %s", exc)


class _RetentionLoop:
    """Retention passes in a thread of this (otherwise idle) process, so the web server never waits on them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> None:
        if self.settings.retention_interval_min > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        interval = self.settings.retention_interval_min * 60
        wait = min(FIRST_RETENTION_AFTER_S, interval)
        while not self._stop.wait(wait):
            wait = interval
            try:
                self._pass()
            except Exception:  # a failed pass must not stop the next one
                log.exception("retention pass failed")

    def _pass(self) -> None:
        from . import retention
        from .store import Store

        store = Store(self.settings.resolved_database_url)
        try:
            report = retention.run(self.settings, store)
        finally:
            store.close()
        for removal in report.removals:
            if not removal.error:
                print(f"assistant: retention removed {removal.item.kind} {removal.item.label} "
                      f"({retention.human_size(removal.item.size)}): {removal.reason}", file=sys.stderr, flush=True)
