"""The store as the card code reads it, for every job of one thread at once.

Rendering a card reads its job, events, diff and whether it has a patch; for a reopened thread with many
jobs that is four queries per card. ThreadJobsView loads them for the whole thread with Store.thread_jobs
(three queries) and answers the card code's reads from that load; anything else goes to the store.
It is a snapshot: build one per rendering pass, not one per process.
"""
from __future__ import annotations

from typing import Any

from ..jobs.events import JobEventRecord, decode
from ..store import Element, Job, JobEvent, Store
from ..store.store import REVIEW_KINDS


class ThreadJobsView:
    def __init__(self, store: Store, thread_id: str):
        self.store = store
        self.thread_id = thread_id
        self.loaded = store.thread_jobs(thread_id)
        self._jobs = {job.id: job for job in self.loaded.jobs}
        self._usage: dict[tuple, list] = {}
        self._elements: dict[str, Element] | None = None

    @property
    def jobs(self) -> list[Job]:
        return self.loaded.jobs

    def get_job(self, job_id: str) -> Job:
        return self._jobs.get(job_id) or self.store.get_job(job_id)

    def list_events(self, job_id: str, after_seq: int = 0) -> list[JobEvent]:
        if job_id not in self._jobs:
            return self.store.list_events(job_id, after_seq)
        return [ev for ev in self.loaded.events.get(job_id, []) if ev.seq > after_seq]

    def read_events(self, job_id: str, after_seq: int = 0) -> list[JobEventRecord]:
        """Store.read_events from the load: the job's events, decoded."""
        return [decode(row.kind, row.data) for row in self.list_events(job_id, after_seq)]

    def get_artifact(self, job_id: str, kind: str) -> str | None:
        if job_id in self._jobs and kind == "diff":
            return self.loaded.diffs.get(job_id)
        if job_id in self._jobs and kind == "uncommitted":
            return self.loaded.uncommitted.get(job_id)
        if job_id in self._jobs and kind in REVIEW_KINDS:
            return self.loaded.reviews.get((job_id, kind))
        return self.store.get_artifact(job_id, kind)

    def has_artifact(self, job_id: str, kind: str) -> bool:
        if job_id in self._jobs and kind == "patch":
            return job_id in self.loaded.patched
        return self.store.has_artifact(job_id, kind)

    def list_jobs(self, *, thread_id: str | None = None, limit: int = 200, **filters: Any) -> list[Job]:
        if thread_id == self.thread_id and not filters:
            return self.loaded.jobs[:limit]
        return self.store.list_jobs(thread_id=thread_id, limit=limit, **filters)

    def usage_by_model(self, *, job_ids=(), thread_id: str | None = None) -> list[tuple[str, str, int, int]]:
        """Every finished card shows the conversation's usage: one query for all of them."""
        key = (tuple(job_ids), thread_id)
        if key not in self._usage:
            self._usage[key] = self.store.usage_by_model(job_ids=key[0], thread_id=thread_id)
        return self._usage[key]

    def get_element(self, element_id: str) -> Element | None:
        """An element of this thread (a card's diff element is checked for each job): one query for all."""
        if self._elements is None:
            self._elements = {e.id: e for e in self.store.list_elements(self.thread_id)}
        return self._elements.get(element_id)

    def __getattr__(self, name: str):
        return getattr(self.store, name)
