"""Schema migration from the first release, and the fence that refuses writes of a run that lost its job,
on SQLite and on a real PostgreSQL server."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from assistant.domain import events as ev
from assistant.store import StaleRun, Store
from assistant.store.db import make_engine
from assistant.store.models import SCHEMA_VERSION
from tests.jobs.queue_harness import fresh_database, private_postgres  # noqa: F401


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'a.db'}"
    return fresh_database(request.getfixturevalue("private_postgres"), "fence_" + request.node.name[5:30].lower()
                          .replace("[", "_").replace("]", ""))


def _make_first_release_database(url: str) -> str:
    """A database as release 1 left it: no fence, engine or container on jobs, no revocation count on users, no
    notification or steer_message table, schema version 1, one job and one user."""
    store = Store(url)
    job = store.create_job(task="old", repo="/r")
    store.get_or_create_user("ada")
    store.close()
    engine = make_engine(url)
    with engine.begin() as conn:
        for column in ("fence", "engine", "container"):
            conn.execute(text(f"ALTER TABLE job DROP COLUMN {column}"))
        conn.execute(text('ALTER TABLE "user" DROP COLUMN revoked'))
        conn.execute(text("DROP TABLE notification"))
        conn.execute(text("DROP TABLE steer_message"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    engine.dispose()
    return job.id


def test_a_first_release_database_is_migrated(url):
    old_job = _make_first_release_database(url)
    store = Store(url)
    try:
        assert store.schema_version == SCHEMA_VERSION == 5
        assert {"notification", "steer_message"} <= set(inspect(store.engine).get_table_names())
        assert "ix_steer_message_job_state" in {i["name"] for i in inspect(store.engine).get_indexes("steer_message")}
        told = store.add_steer_message(old_job, "use the v2 API")
        assert [m.id for m in store.queued_steer_messages(old_job)] == [told.id]
        assert store.add_notifications(old_job, "ended", ["https://h.example.org/x"], {"event": "ended"})
        assert {"fence", "engine", "container"} <= {c["name"] for c in inspect(store.engine).get_columns("job")}
        job = store.get_job(old_job)
        assert job.fence == 1 and job.engine is None and job.task == "old"
        assert store.user_revocations("ada") == 0 and store.user_revocations("nobody") == 0
        assert store.revoke_user("ada") == 1 and store.revoke_user("ada") == 2 and store.user_revocations("ada") == 2
        assert store.revoke_user("newcomer") == 1  # a user who never logged in can be revoked ahead
    finally:
        store.close()
    again = Store(url)  # a second start finds nothing to do
    assert again.schema_version == 5 and again.user_revocations("ada") == 2
    again.close()


def test_a_newer_database_is_refused(url):
    Store(url).close()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
    engine.dispose()
    from assistant.store.db import SchemaError
    with pytest.raises(SchemaError, match="newer than this release"):
        Store(url)


def test_writes_of_a_run_that_lost_its_job_are_refused(url):
    store = Store(url)
    try:
        job = store.create_job(task="t", repo="/r")
        store.transition(job.id, "preparing")
        run1 = store.fenced(job.id, 1)
        run1.append_event(job.id, ev.Notice("run 1 works"))
        run1.add_chunk(job_id=job.id, command="ls", text="a\n", exit_code=0)
        requeued = store.requeue_lost(job.id, 1, "its worker stopped answering", max_runs=2)
        assert requeued.state == "queued" and requeued.fence == 2 and requeued.reason.startswith("its worker")
        for write in (lambda: run1.append_event(job.id, ev.Notice("run 1 again")),
                      lambda: run1.add_chunk(job_id=job.id, command="ls", text="b\n", exit_code=0),
                      lambda: run1.put_artifact(job.id, "diff", "stale"),
                      lambda: run1.transition(job.id, "preparing"),
                      lambda: run1.update_job(job.id, summary="stale")):
            with pytest.raises(StaleRun):
                write()
        assert [e.text for e in store.read_events(job.id)] == ["run 1 works"]
        assert len(store.list_chunks(job.id)) == 1 and store.get_artifact(job.id, "diff") is None
        assert store.get_job(job.id).state == "queued" and store.get_job(job.id).summary is None
        run2 = store.fenced(job.id, 2)
        run2.transition(job.id, "preparing")
        assert store.requeue_lost(job.id, 1, "late news of run 1", max_runs=2) is None  # run 1 is old news
        ended = store.requeue_lost(job.id, 2, "lost again", max_runs=2)
        assert ended.state == "interrupted" and ended.finished_at is not None  # retried once, not twice
    finally:
        store.close()
