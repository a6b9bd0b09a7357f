"""Store.thread_jobs: a thread's jobs, events, diffs and patches in a fixed number of queries, the same
facts the per-job reads give; on SQLite and on PostgreSQL (when the test command started one)."""
import os
import uuid
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from assistant.store import Store

POSTGRES_URL = os.environ.get("ASSISTANT_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(request, data_dir):
    if request.param == "postgres" and not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: ASSISTANT_TEST_POSTGRES_URL is unset")
    store = Store(f"sqlite:///{data_dir / 'test.db'}" if request.param == "sqlite" else POSTGRES_URL)
    yield store
    store.close()


@contextmanager
def statements(store: Store):
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def seed(store: Store, thread_id: str, jobs: int) -> list[str]:
    """Jobs as a conversation leaves them: some with events, diffs and patches, some without."""
    ids = []
    for n in range(jobs):
        job = store.create_job(task=f"task {n}", repo="/r", thread_id=thread_id, title=f"job {n}")
        ids.append(job.id)
        if n % 3 == 0:
            continue  # queued: no events, no artifacts
        store.transition(job.id, "preparing")
        store.add_event(job.id, "state", {"state": "preparing"})
        store.add_event(job.id, "step", {"step": 1, "title": f"$ ls {n}", "exit_code": 0})
        if n % 3 == 1:
            store.put_artifact(job.id, "diff", f"diff --git a/f{n} b/f{n}\n+{n}\n")
            store.put_artifact(job.id, "patch", f"patch {n}")
            store.put_artifact(job.id, "log", "not read by cards")
        else:
            store.put_artifact(job.id, "diff", "")   # the job changed nothing
            store.put_artifact(job.id, "patch", "")
    return ids


def test_thread_jobs_gives_what_the_per_job_reads_give(any_store):
    store = any_store
    thread = store.create_thread(user_id=None, thread_id=str(uuid.uuid4()))
    other = store.create_thread(user_id=None, thread_id=str(uuid.uuid4()))
    ids = seed(store, thread.id, 7)
    stranger = seed(store, other.id, 2)
    store.add_event(ids[1], "finished", {"state": "preparing"})  # events of jobs interleave in the table

    loaded = store.thread_jobs(thread.id)

    assert [j.id for j in loaded.jobs] == [j.id for j in store.list_jobs(thread_id=thread.id)] == ids
    assert [j.model_dump() for j in loaded.jobs] == [store.get_job(i).model_dump() for i in ids]
    for job_id in ids:
        assert [e.model_dump() for e in loaded.events.get(job_id, [])] == \
            [e.model_dump() for e in store.list_events(job_id)]
        assert loaded.diffs.get(job_id) == store.get_artifact(job_id, "diff")
        assert (job_id in loaded.patched) == bool(store.get_artifact(job_id, "patch")) \
            == store.has_artifact(job_id, "patch")
    assert not set(stranger) & ({j.id for j in loaded.jobs} | set(loaded.events) | set(loaded.diffs))


def test_thread_jobs_takes_three_queries_whatever_the_number_of_jobs(any_store):
    store = any_store
    counts = []
    for jobs in (1, 12):
        thread = store.create_thread(user_id=None, thread_id=str(uuid.uuid4()))
        seed(store, thread.id, jobs)
        with statements(store) as seen:
            store.thread_jobs(thread.id)
        counts.append(len(seen))
    assert counts == [3, 3]


def test_thread_jobs_of_a_thread_without_jobs_is_empty(any_store):
    thread = any_store.create_thread(user_id=None, thread_id=str(uuid.uuid4()))
    loaded = any_store.thread_jobs(thread.id)
    assert (loaded.jobs, loaded.events, loaded.diffs, loaded.patched) == ([], {}, {}, set())
