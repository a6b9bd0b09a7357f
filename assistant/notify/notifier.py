"""Outgoing webhook notifications of job events, delivered from the store on a background thread.

`Notifier.job_ended` is the job recorder's end hook (jobs/recorder.py, `JobRecorder.announce_end`), so it runs in
whichever process ends a job: the web server's job threads, a queue worker, a cancel. It only records one pending
row per URL (store `notification`, unique per job, event and URL) and wakes the delivery thread; the job's end
never waits for a receiver.

The delivery thread takes due rows from the store (its own and those any other process left), claims each for one
attempt with a conditional update (so two processes never send the same one), and POSTs it from a small pool of
sender threads, so one slow receiver holds one sender, not the others. A connection error, a timeout or an
answer other than 2xx is tried again after 1 s, 2 s, 4 s, … up to ASSISTANT_WEBHOOK_ATTEMPTS tries; each try is
counted on the row before it is sent, with its outcome (`assistant jobs show`). An attempt whose process stopped
during it is never repeated: the receiver may have had it, and a delivery is made at most once.
"""
from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from ..config import Settings
from ..procs import process_tag
from ..store import Job, Notification, Store
from .payload import ENDED, WAITING, job_notification
from .signing import DELIVERY_HEADER, EVENT_HEADER, signed_headers

log = logging.getLogger(__name__)

BACKOFF_S = 1.0          # the wait before the second try; doubled before each further one
POLL_S = 30.0            # the longest the delivery thread sleeps: rows another process recorded are found by then
SENDERS = 4              # attempts under way at once in one process
ANSWER_KEEP = 200        # characters of a refusing receiver's answer kept as the error


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime) -> datetime:
    """The store gives naive UTC back (SQLite, PostgreSQL timestamp columns)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def shown_url(url: str) -> str:
    """A URL as shown and logged: scheme, host and first path segment only (a Slack-style URL's path is its key)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    segments = [p for p in parts.path.split("/") if p]
    path = f"/{segments[0]}" if segments else ""
    return f"{parts.scheme}://{host}{path}" + ("/…" if len(segments) > 1 or parts.query else "")


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    status: int | None = None
    error: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an answer other than 2xx, not a new target
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> AttemptResult:
    """One POST; never raises."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "assistant-notifications", **headers})
    try:
        with _opener.open(request, timeout=timeout_s) as answer:
            answer.read(65536)
            if 200 <= answer.status < 300:
                return AttemptResult(True, answer.status)
            return AttemptResult(False, answer.status, f"HTTP {answer.status}")
    except urllib.error.HTTPError as exc:
        try:
            said = " ".join(exc.read(ANSWER_KEEP).decode("utf-8", "replace").split())
        except Exception:
            said = ""
        return AttemptResult(False, exc.code, f"HTTP {exc.code} {exc.reason}" + (f": {said}" if said else ""))
    except urllib.error.URLError as exc:
        return AttemptResult(False, None, f"could not connect: {exc.reason}")
    except TimeoutError:
        return AttemptResult(False, None, f"no answer within {timeout_s:g} s")
    except OSError as exc:
        return AttemptResult(False, None, f"connection failed: {exc}")


class Notifier:
    """`deliver=False` only records (a short-lived command: a running server or worker sends them)."""

    def __init__(self, settings: Settings, store: Store, *, deliver: bool = True, backoff_s: float = BACKOFF_S,
                 poll_s: float = POLL_S):
        self.store = store
        self.urls = settings.webhook_targets()
        self.secret = settings.webhook_secret or None
        self.attempts = settings.webhook_attempts
        self.timeout_s = settings.webhook_timeout_s
        self.public_url = settings.public_base_url
        self.deliver = deliver
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self.name = process_tag()
        # An attempt claimed this long ago has no process behind it any more (one attempt takes at most about
        # twice the timeout: connecting, then the answer).
        self.lease = timedelta(seconds=max(60.0, 4 * self.timeout_s))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._senders: ThreadPoolExecutor | None = None
        self._free = threading.Semaphore(SENDERS)
        self._in_flight: set[str] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    # ------------------------------------------------------------------ recording
    def job_ended(self, job: Job, state: str, reason: str) -> None:
        """The recorder's end hook: the job (as the store has it, ended and assessed) is notified as ended."""
        self.notify(job, ENDED)

    def job_waiting(self, job: Job, question) -> None:
        """The asker's wait hook (jobs/asking.py): the job (as stored, now waiting) asks the user `question` (an
        agent.asking.Question). Each question of a run is notified once: its key is the run and the step."""
        self.notify(job, WAITING, question=question.text, key=f"{job.fence}.{question.step}")

    def notify(self, job: Job, event: str, *, question: str | None = None, key: str | None = None) -> list[str]:
        """Record the event's notification for every URL (once per job, event — with `key`, once per key of that
        event — and URL, whoever asks again) and have it sent; the ids of the rows recorded now."""
        if not self.urls:
            return []
        body = job_notification(job, event, self.public_url, question=question).to_dict()
        made = self.store.add_notifications(job.id, event if key is None else f"{event}:{key}", self.urls, body)
        if made:
            self.start()
            self._wake.set()
        return made

    def jobs_interrupted(self, job_ids) -> None:
        """Jobs found interrupted at start-up (their process died, so nothing announced their end): notified
        as ended."""
        for job_id in job_ids:
            try:
                self.job_ended(self.store.get_job(job_id), "interrupted", "")
            except Exception:
                log.exception("notifying the interrupted job %s", job_id)

    # ------------------------------------------------------------------ delivering
    def flush(self, job_id: str, wait_s: float) -> bool:
        """Have the job's notifications tried once before a short-lived command exits: wait up to wait_s while any
        is untried or under way. True when none is; those left pending are sent by the next server or worker."""
        if not self.urls:
            return True
        self.start()
        self._wake.set()
        deadline = _utcnow() + timedelta(seconds=wait_s)
        while True:
            rows = self.store.list_notifications(job_id)
            if not any(r.state == "sending" or (r.state == "pending" and r.attempts == 0) for r in rows):
                return True
            if _utcnow() >= deadline:
                return False
            self._closed.wait(0.05)

    def start(self) -> None:
        """Start the delivery thread (once; not after close, not without URLs, not for a recording-only one)."""
        if not self.urls or not self.deliver or self._closed.is_set():
            return
        with self._lock:
            if self._thread is None:
                self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="notify-send")
                self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
                self._thread.start()

    def close(self, wait_s: float | None = None) -> None:
        """Stop taking rows; wait up to wait_s (default: one attempt's timeout) for attempts under way. Rows not
        yet tried stay pending for the next process."""
        self._closed.set()
        self._wake.set()
        with self._lock:
            thread, senders = self._thread, self._senders
        if thread is not None:
            thread.join(timeout=5)
        if senders is not None:
            senders.shutdown(wait=False, cancel_futures=True)
            deadline = threading.Event()
            limit = self.timeout_s if wait_s is None else wait_s
            waited = 0.0
            while self._in_flight and waited < limit:
                deadline.wait(0.05)
                waited += 0.05

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.clear()
            wait = self.poll_s
            try:
                self.store.abandon_notifications(
                    _utcnow() - self.lease,
                    "the process sending this attempt stopped before it was answered; not sent again (at most once)")
                full = self._take_due()
                upcoming = self.store.next_notification_due()
                if upcoming is not None and not full:
                    wait = min(self.poll_s, max(0.02, (_aware(upcoming) - _utcnow()).total_seconds()))
            except Exception:
                log.exception("delivering notifications")
            self._wake.wait(wait)

    def _take_due(self) -> bool:
        """Claim and send what is due, as senders are free; True when every sender is busy."""
        for row in self.store.due_notifications(_utcnow(), limit=4 * SENDERS):
            if self._closed.is_set():
                return False
            if row.id in self._in_flight:
                continue
            if not self._free.acquire(blocking=False):
                return True
            claimed = self.store.claim_notification(row.id, self.name, _utcnow())
            if claimed is None:  # another process took it
                self._free.release()
                continue
            self._in_flight.add(claimed.id)
            try:
                self._senders.submit(self._attempt, claimed)
            except RuntimeError:  # closing: the attempt was counted but never made; it is tried again later
                self._in_flight.discard(claimed.id)
                self._free.release()
                self.store.end_notification_attempt(claimed.id, state="pending", now=_utcnow(),
                                                    error="not sent: the process stopped")
                return False
        return False

    def _attempt(self, row: Notification) -> None:
        try:
            body = json.dumps(row.payload, ensure_ascii=False, separators=(",", ":")).encode()
            event = row.payload.get("event") or row.event.split(":")[0]   # the row's event carries its key
            headers = {**signed_headers(self.secret, body), EVENT_HEADER: event, DELIVERY_HEADER: row.id}
            result = post(row.url, body, headers, self.timeout_s)
            now = _utcnow()
            if result.ok:
                self.store.end_notification_attempt(row.id, state="delivered", now=now, status=result.status)
            elif row.attempts >= self.attempts:
                log.warning("notification of job %s to %s failed after %d tries: %s", row.job_id, shown_url(row.url),
                            row.attempts, result.error)
                self.store.end_notification_attempt(row.id, state="failed", now=now, status=result.status,
                                                    error=result.error)
            else:
                delay = self.backoff_s * 2 ** (row.attempts - 1)
                self.store.end_notification_attempt(row.id, state="pending", now=now, status=result.status,
                                                    error=result.error, next_at=now + timedelta(seconds=delay))
        except Exception:
            log.exception("sending notification %s", row.id)
        finally:
            self._in_flight.discard(row.id)
            self._free.release()
            self._wake.set()


def delivery_line(row: Notification) -> str:
    """One notification as `assistant jobs show` prints it."""
    tries = f"{row.attempts} attempt{'s' if row.attempts != 1 else ''}"
    where = f"{row.event} → {shown_url(row.url)}"
    if row.state == "delivered":
        return f"{where}: delivered at {_aware(row.delivered_at):%Y-%m-%d %H:%M:%S} UTC after {tries}"
    error = f"; last error: {row.last_error}" if row.last_error else ""
    if row.state == "failed":
        return f"{where}: failed after {tries}{error}"
    if row.state == "sending":
        return f"{where}: attempt {row.attempts} under way{error}"
    due = f", next at {_aware(row.next_at):%H:%M:%S} UTC" if row.attempts and row.next_at else ""
    return f"{where}: pending, {tries}{due}{error}"
