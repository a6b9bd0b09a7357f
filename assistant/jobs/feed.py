"""Job updates between processes, through the database (PostgreSQL LISTEN/NOTIFY).

Whoever records an event (a worker, a web process cancelling a job) publishes it on one channel after the
store has it; every process listens and hands each update to its own subscribers, so a conversation open on
any web replica follows a job running on any worker.

A notification carries the encoded update when it fits PostgreSQL's payload limit, else only its reference
(job, seq), and the listener reads the stored event. Stored events are numbered per job, so a listener that
sees a gap (a notification lost while it reconnected after a database restart) reads the missing events
from the store before going on: nothing stored is lost or repeated. Live output is not stored: it is
coalesced per job for OUTPUT_FLUSH_S and dropped when the database is away.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import psycopg

from ..store import Store
from ..domain.events import Finished, JobUpdate, OutputDelta, decode

log = logging.getLogger(__name__)

CHANNEL = "assistant_job_events"
PAYLOAD_LIMIT = 7800          # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
OUTPUT_FLUSH_S = 0.1
OUTPUT_KEEP_CHARS = 4000      # live output beyond this per flush is cut to its tail (the card shows 40 lines)
TRACKED_JOBS = 5000           # per-job sequence numbers kept for gap detection


def _conninfo(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


class DatabaseFeed:
    def __init__(self, url: str, store: Store):
        self.conninfo = _conninfo(url)
        self.store = store
        self._publisher: psycopg.Connection | None = None
        self._publish_lock = threading.Lock()
        self._output: dict[str, tuple[str | None, list[str]]] = {}
        self._output_lock = threading.Lock()
        self._last_seq: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connected = threading.Event()  # the listener is listening (tests and benchmarks wait for it)

    # ------------------------------------------------------------------ publishing
    def publish(self, update: JobUpdate) -> None:
        if isinstance(update.event, OutputDelta):
            with self._output_lock:
                thread_id, pieces = self._output.setdefault(update.job_id, (update.thread_id, []))
                pieces.append(update.event.text)
            return
        self._flush_output(update.job_id)  # output before the event that follows it
        self._notify(_payload(update))

    def _flush_output(self, job_id: str | None = None) -> None:
        with self._output_lock:
            ids = [job_id] if job_id is not None else list(self._output)
            taken = [(jid, self._output.pop(jid)) for jid in ids if jid in self._output]
        for jid, (thread_id, pieces) in taken:
            text = "".join(pieces)[-OUTPUT_KEEP_CHARS:]
            self._notify(_payload(JobUpdate(jid, thread_id, OutputDelta(text))))

    def _notify(self, payload: str) -> None:
        for attempt in range(2):
            with self._publish_lock:
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
                    self._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    return
                except psycopg.OperationalError as exc:
                    self._publisher = None
                    if attempt:  # listeners catch stored events up by their numbers; live output is let go
                        log.warning("could not publish a job update (%s)", exc)

    # ------------------------------------------------------------------ listening
    def start(self, dispatch: Callable[[JobUpdate], None]) -> None:
        for target, name in ((lambda: self._listen(dispatch), "job-feed-listen"), (self._flush_loop, "job-feed-flush")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _flush_loop(self) -> None:
        while not self._stop.wait(OUTPUT_FLUSH_S):
            self._flush_output()

    def _listen(self, dispatch: Callable[[JobUpdate], None]) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    delay = 0.2
                    self._catch_up(dispatch)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._receive(note.payload, dispatch)
            except psycopg.OperationalError as exc:
                self.connected.clear()
                if self._stop.is_set():
                    return
                log.warning("the job feed lost the database (%s); listening again in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
            except Exception:  # a bad payload or a failing subscriber must not end the feed
                log.exception("the job feed failed; listening again")
                self._stop.wait(1.0)

    def _receive(self, payload: str, dispatch: Callable[[JobUpdate], None]) -> None:
        raw = json.loads(payload)
        job_id, seq = raw["job"], raw.get("seq")
        if seq is None:
            self._deliver(JobUpdate.from_json(payload), dispatch)
            return
        last = self._last_seq.get(job_id)
        if last is not None and seq <= last:
            return  # already delivered (read from the store while catching up)
        if last is not None and seq > last + 1:
            self._read_stored(job_id, last, seq - 1, raw.get("thread"), dispatch)
        if "kind" in raw:
            self._deliver(JobUpdate.from_json(payload), dispatch)
        else:
            self._read_stored(job_id, seq - 1, seq, raw.get("thread"), dispatch)

    def _read_stored(self, job_id: str, after: int, upto: int, thread_id: str | None, dispatch) -> None:
        for row in self.store.list_events(job_id, after_seq=after):
            if row.seq > upto:
                break
            self._deliver(JobUpdate(job_id, thread_id, decode(row.kind, row.data), row.seq, row.created_at), dispatch)

    def _catch_up(self, dispatch) -> None:
        """After (re)connecting: what was stored while nobody listened, for every job being followed."""
        for job_id, last in list(self._last_seq.items()):
            try:
                thread_id = self.store.get_job(job_id).thread_id
            except LookupError:
                continue
            self._read_stored(job_id, last, 1 << 62, thread_id, dispatch)

    def _deliver(self, update: JobUpdate, dispatch) -> None:
        if isinstance(update.event, Finished):
            self._last_seq.pop(update.job_id, None)  # nothing more to follow
        elif update.seq is not None:
            self._last_seq[update.job_id] = update.seq
            if len(self._last_seq) > TRACKED_JOBS:
                self._last_seq.pop(next(iter(self._last_seq)))
        try:
            dispatch(update)
        except Exception:
            log.exception("a job feed subscriber failed")

    def close(self) -> None:
        self._flush_output()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._publish_lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None


def _payload(update: JobUpdate) -> str:
    payload = update.to_json()
    if len(payload.encode()) <= PAYLOAD_LIMIT:
        return payload
    if update.seq is not None:  # the listener reads it from the store
        return json.dumps({"job": update.job_id, "thread": update.thread_id, "seq": update.seq})
    text = update.event.text if isinstance(update.event, OutputDelta) else ""
    return JobUpdate(update.job_id, update.thread_id, OutputDelta(text[-2000:])).to_json()
