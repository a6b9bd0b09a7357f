import threading

import pytest

from assistant.domain.states import IllegalTransition
from assistant.store import NotFound, Store
from assistant.store.models import SCHEMA_VERSION


def test_thread_message_round_trip(store):
    user = store.get_or_create_user("alice")
    assert store.get_or_create_user("alice").id == user.id
    thread = store.create_thread(user_id=user.id, name="first", repo="/src/x", ref="main")
    store.upsert_message("m1", thread.id, type="user_message", name="alice", output="hello", meta={"k": [1, 2]})
    store.upsert_message("m1", thread.id, output="hello again")
    msgs = store.list_messages(thread.id)
    assert [(m.id, m.output, m.meta) for m in msgs] == [("m1", "hello again", {"k": [1, 2]})]
    assert [t.id for t in store.list_threads(user.id)] == [thread.id]
    assert store.list_threads(store.get_or_create_user("bob").id) == []


def test_job_lifecycle_records_each_transition(store):
    thread = store.create_thread(user_id=None)
    job = store.create_job(task="fix it", repo="/r", thread_id=thread.id)
    job2 = store.create_job(task="again", repo="/r", thread_id=thread.id)
    assert (job.number, job2.number, job.state) == (1, 2, "queued")
    for state in ("preparing", "setting_up", "running", "succeeded"):
        store.transition(job.id, state)
    done = store.get_job(job.id)
    assert done.state == "succeeded"
    assert done.preparing_at <= done.setting_up_at <= done.running_at <= done.finished_at


@pytest.mark.parametrize("path,illegal", [
    ((), "running"), ((), "succeeded"), (("preparing", "setting_up", "running", "succeeded"), "running"),
    (("cancelled",), "preparing"), (("preparing", "failed"), "succeeded"),
])
def test_illegal_transition_is_refused_and_changes_nothing(store, path, illegal):
    job = store.create_job(task="t", repo="/r")
    for state in path:
        store.transition(job.id, state)
    before = store.get_job(job.id)
    with pytest.raises(IllegalTransition) as err:
        store.transition(job.id, illegal)
    assert f"cannot go from {before.state} to {illegal}" in str(err.value)
    assert store.get_job(job.id).state == before.state


def test_interrupt_orphaned_jobs_on_restart(data_dir):
    url = f"sqlite:///{data_dir / 'restart.db'}"
    first = Store(url)
    running = first.create_job(task="a", repo="/r")
    first.transition(running.id, "preparing")
    done = first.create_job(task="b", repo="/r")
    first.transition(done.id, "cancelled")
    first.close()
    second = Store(url)  # "after a restart"
    assert second.interrupt_orphaned_jobs() == [running.id]
    assert second.get_job(running.id).state == "interrupted"
    assert second.get_job(done.id).state == "cancelled"


def test_events_are_ordered_under_concurrency(store):
    job = store.create_job(task="t", repo="/r")
    threads = [threading.Thread(target=lambda i=i: [store.add_event(job.id, "log", {"i": i, "n": n}) for n in range(20)])
               for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    events = store.list_events(job.id)
    assert [e.seq for e in events] == list(range(1, 81))
    assert [e.seq for e in store.list_events(job.id, after_seq=75)] == [76, 77, 78, 79, 80]


def test_log_chunks_and_artifacts(store):
    chunk = store.add_chunk(job_id="j", command="pytest", text="a\nb\nc\n", exit_code=1, truncated=False)
    assert len(chunk.id) == 6 and all(c in "0123456789abcdef" for c in chunk.id)
    got = store.get_chunk(chunk.id)
    assert (got.line_count, got.exit_code, got.text) == (3, 1, "a\nb\nc\n")
    store.put_artifact("j", "diff", "one")
    store.put_artifact("j", "diff", "two")
    assert store.get_artifact("j", "diff") == "two"
    assert store.get_artifact("j", "patch") is None


def test_usage_totals(store):
    store.record_usage(role="agent", model="m", prompt_tokens=10, completion_tokens=3, job_id="j1", thread_id="t")
    store.record_usage(role="answer", model="m", prompt_tokens=5, completion_tokens=2, thread_id="t")
    assert store.usage_totals(job_id="j1") == (10, 3)
    assert store.usage_totals(thread_id="t") == (15, 5)


def test_find_jobs_by_id_prefix_and_by_number_in_a_conversation(store):
    one = store.create_thread(user_id=None, name="Fix the calc")
    two = store.create_thread(user_id=None, name="Add docs")
    a = store.create_job(task="t", repo="/r", thread_id=one.id, id="abcd1234")
    b = store.create_job(task="t", repo="/r", thread_id=one.id, id="2bcd1234")
    c = store.create_job(task="t", repo="/r", thread_id=two.id, id="ef011234")
    store.create_job(task="t", repo="/r", id="99990000")     # no conversation: no number
    ids = lambda jobs: [j.id for j in jobs]  # noqa: E731
    assert ids(store.find_jobs("abcd")) == [a.id] and ids(store.find_jobs("abcd1234")) == [a.id]
    assert ids(store.find_jobs("zzzz")) == [] and ids(store.find_jobs("")) == []
    assert ids(store.find_jobs("1")) == [a.id, c.id]                 # job 1 of each conversation
    assert ids(store.find_jobs("2")) == [b.id]                       # job 2, and the start of its own id
    assert ids(store.find_jobs("1", thread_id=two.id)) == [c.id]
    assert ids(store.find_jobs("abcd", thread_id=two.id)) == []
    assert ids(store.find_jobs("9")) == ["99990000"]                 # an id prefix of digits still works
    assert [t.id for t in store.find_threads(one.id[:6])] == [one.id]
    assert [t.id for t in store.find_threads("add DOCS")] == [two.id]
    assert store.find_threads("nothing") == []


def test_schema_version_recorded_and_newer_refused(data_dir):
    from sqlmodel import Session

    from assistant.store.db import SchemaError
    from assistant.store.models import Meta
    url = f"sqlite:///{data_dir / 'v.db'}"
    s = Store(url)
    assert s.schema_version == SCHEMA_VERSION
    with Session(s.engine) as session:
        session.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION + 1)))
        session.commit()
    s.close()
    with pytest.raises(SchemaError, match="newer than this release"):
        Store(url)


def test_sqlite_runs_in_wal_mode(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_job_ids_in_state_answers_for_many_jobs_in_one_query(store):
    from sqlalchemy import event
    jobs = [store.create_job(task=f"t{i}", repo="/r") for i in range(5)]
    for job in jobs[1:3]:
        store.transition(job.id, "cancelled", "from elsewhere")
    statements = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert store.job_ids_in_state([j.id for j in jobs] + ["nosuchjob"], "cancelled") == {jobs[1].id, jobs[2].id}
    assert len(statements) == 1
    assert store.job_ids_in_state([], "cancelled") == set()


def test_upsert_message_keeps_what_it_is_not_given_and_touches_the_thread(store):
    from sqlalchemy import event
    thread = store.create_thread(user_id=None)
    before = store.get_thread(thread.id).updated_at
    store.upsert_message("m1", thread.id, type="assistant_message", name="Jobs", output="queued", job_id="j1",
                         meta={"metadata": {"job_id": "j1"}})
    statements = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    store.upsert_message("m1", thread.id, output="running", name=None, language=None)
    assert len(statements) == 2                                   # an update of each, nothing read
    message = store.get_message("m1")
    assert (message.output, message.name, message.job_id, message.meta) == (
        "running", "Jobs", "j1", {"metadata": {"job_id": "j1"}})
    assert store.get_thread(thread.id).updated_at > before
    store.upsert_message("m1", thread.id, output=None)
    assert store.get_message("m1").output is None


def test_concurrent_first_writes_of_one_message_make_one_row(store):
    thread = store.create_thread(user_id=None)
    barrier = threading.Barrier(4)

    def write(n):
        barrier.wait()
        store.upsert_message("same", thread.id, output=f"writer {n}")
    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [m.id for m in store.list_messages(thread.id)] == ["same"]


def test_recent_jobs_are_the_users_conversation_jobs_that_run_or_ended_lately(store):
    from datetime import datetime, timedelta, timezone
    alice, bob = store.get_or_create_user("alice"), store.get_or_create_user("bob")
    thread = store.create_thread(user_id=alice.id)
    running = store.create_job(task="a", repo="/r", thread_id=thread.id, user_id=alice.id, state="running")
    ended = store.create_job(task="b", repo="/r", thread_id=thread.id, user_id=alice.id, state="running")
    store.transition(ended.id, "succeeded")
    store.create_job(task="c", repo="/r", thread_id=None, user_id=alice.id)          # the CLI's: no conversation
    store.create_job(task="d", repo="/r", thread_id=thread.id, user_id=bob.id)        # someone else's
    now = datetime.now(timezone.utc)
    assert [j.id for j in store.recent_jobs(alice.id, now - timedelta(minutes=5))] == [ended.id, running.id]
    assert [j.id for j in store.recent_jobs(alice.id, now + timedelta(minutes=5))] == [running.id]
