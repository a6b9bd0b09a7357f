"""The same store code on a real PostgreSQL server (started by the test command; skipped with the reason otherwise)."""
import os

import pytest

from assistant.store import Store

URL = os.environ.get("ASSISTANT_TEST_POSTGRES_URL")

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not URL, reason="no PostgreSQL server: ASSISTANT_TEST_POSTGRES_URL is unset "
                                 "(the README's test command starts one from Debian's postgresql package)")]


def test_round_trip_on_postgres():
    store = Store(URL)
    try:
        user = store.get_or_create_user("pg-user")
        thread = store.create_thread(user_id=user.id, name="pg")
        job = store.create_job(task="t", repo="/r", thread_id=thread.id, setup=["pip install -e ."])
        store.transition(job.id, "preparing")
        store.add_event(job.id, "state", {"state": "preparing"})
        chunk = store.add_chunk(job_id=job.id, command="ls", text="x\n", exit_code=0)
        assert store.get_job(job.id).setup == ["pip install -e ."]
        assert store.get_chunk(chunk.id).text == "x\n"
        assert [e.seq for e in store.list_events(job.id)] == [1]
        store.upsert_message(f"pg-{thread.id}", thread.id, output="first", meta={"metadata": {"job_id": job.id}})
        store.upsert_message(f"pg-{thread.id}", thread.id, output="second")
        assert [(m.output, m.meta) for m in store.list_messages(thread.id)] == [
            ("second", {"metadata": {"job_id": job.id}})]
    finally:
        store.close()
