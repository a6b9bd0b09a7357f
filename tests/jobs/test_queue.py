"""The durable queue on a real PostgreSQL server (a private one: these tests restart it), real `assistant worker`
processes, real containers, the scripted model over HTTP. The test process plays the web app."""
from __future__ import annotations

import os
import signal
import time

import pytest

from assistant.domain import events as ev
from tests.jobs.queue_harness import (Deployment, managed_containers, private_postgres,  # noqa: F401
                                      sleeping_agent, wait_for)

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


@pytest.fixture
def deployment(request, tmp_path, private_postgres, scripted_model, docker_engine):
    """A database of its own, a web-side Assistant (no worker in it) and a way to start workers."""
    d = Deployment(request.node.name, tmp_path, private_postgres, scripted_model)
    yield d
    d.close()


def test_jobs_run_on_workers_and_every_update_reaches_the_web_process(deployment):
    sleeping_agent(deployment.model, 1)
    deployment.workers.start("a")
    deployment.workers.start("b")
    jobs = [j for _ in range(4) for j in deployment.submit()]
    done = [deployment.web.jobs.wait(j.id, timeout=180) for j in jobs]
    assert [j.state for j in done] == ["succeeded"] * 4, [j.reason for j in done]
    assert {j.runner for j in done} <= {"a", "b"} and all(j.fence == 1 for j in done)
    for job in done:  # the web process heard every stored event of each job, in order, and the live output
        stored = [e.kind for e in deployment.web.store.list_events(job.id)]
        heard = [u for u in deployment.updates if u.job_id == job.id and u.seq is not None]
        wait_for(lambda: len([u for u in deployment.updates if u.job_id == job.id and u.seq]) == len(stored), 10,
                 "the last updates")
        heard = [u for u in deployment.updates if u.job_id == job.id and u.seq is not None]
        assert [u.kind for u in heard] == stored and [u.seq for u in heard] == list(range(1, len(stored) + 1))
        assert any(u.kind == "output" and "slept" in u.event.text for u in deployment.updates if u.job_id == job.id)
    assert not [c for j in done for c in managed_containers(j.id)]


def test_a_job_is_enqueued_in_the_transaction_that_creates_it(deployment):
    import psycopg

    store = deployment.web.store
    with pytest.raises(RuntimeError, match="refused"):
        store.create_job(task="t", repo="/r", id="feedface",
                         in_transaction=lambda conn, job: (_ for _ in ()).throw(RuntimeError("refused")))
    with pytest.raises(LookupError):
        store.get_job("feedface")  # the failed enqueue took the job with it
    job = deployment.submit()[0]
    with psycopg.connect(deployment.url) as conn:
        rows = conn.execute("SELECT status, args FROM procrastinate_jobs").fetchall()
    assert rows == [("todo", {"job_id": job.id, "fence": 1})]


def test_cancel_reaches_a_job_on_another_worker_within_two_seconds(deployment):
    sleeping_agent(deployment.model, 120)
    deployment.workers.start("a")
    job = deployment.submit()[0]
    wait_for(lambda: any(u.kind == "tool_start" for u in deployment.updates if u.job_id == job.id), 90,
             "the agent's sleep to start")
    assert managed_containers(job.id)
    started = time.monotonic()
    assert deployment.web.jobs.cancel(job.id)
    wait_for(lambda: not managed_containers(job.id, running=True), 10, "the container to stop", interval=0.05)
    reached = time.monotonic() - started
    assert reached < 2.0, f"the cancel took {reached:.2f} s to stop the job's container"
    # removing it is the engine's file-system work (a btrfs subvolume delete, seconds on a busy engine); the
    # job has stopped, and it leaves nothing behind
    wait_for(lambda: not managed_containers(job.id), 60, "the stopped container to be removed")
    final = deployment.web.jobs.wait(job.id, timeout=30)
    assert final.state == "cancelled" and final.runner == "a"
    queued = deployment.submit()[0]  # cancelled before any worker took it: it never runs
    deployment.workers.stop_all()
    assert deployment.web.jobs.cancel(queued.id)
    assert deployment.web.store.get_job(queued.id).state == "cancelled"


def test_a_killed_workers_job_is_retried_once_on_another_and_its_old_run_cannot_write(deployment):
    sleeping_agent(deployment.model, 6)
    doomed = deployment.workers.start("doomed")
    job = deployment.submit()[0]
    wait_for(lambda: any(u.kind == "tool_start" for u in deployment.updates if u.job_id == job.id), 90,
             "the job to run on the doomed worker")
    os.kill(doomed.pid, signal.SIGKILL)
    deployment.workers.start("survivor")
    final = deployment.web.jobs.wait(job.id, timeout=120)
    assert final.state == "succeeded", final.reason
    assert final.fence == 2 and final.runner == "survivor"
    events = deployment.web.store.read_events(job.id)
    lost = [e for e in events if isinstance(e, ev.StateChanged) and e.state == "interrupted"]
    assert len(lost) == 1 and "no heartbeat" in lost[0].reason
    assert any(isinstance(e, ev.Notice) and "run 1 was lost" in e.text for e in events)
    assert sum(isinstance(e, ev.Finished) for e in events) == 1 and sum(isinstance(e, ev.SummaryWritten) for e in events) == 1
    # The dead run, were it to come back, is refused: its fence is no longer the job's.
    from assistant.store import StaleRun
    with pytest.raises(StaleRun):
        deployment.web.store.fenced(job.id, 1).append_event(job.id, ev.Notice("from the dead run"))
    assert not [e for e in deployment.web.store.read_events(job.id) if getattr(e, "text", "") == "from the dead run"]


def test_a_stopping_worker_hands_its_jobs_to_another(deployment):
    sleeping_agent(deployment.model, 6)
    leaving = deployment.workers.start("leaving")
    job = deployment.submit()[0]
    wait_for(lambda: any(u.kind == "tool_start" for u in deployment.updates if u.job_id == job.id), 90,
             "the job to start")
    leaving.terminate()
    assert leaving.wait(timeout=30) == 0, deployment.workers.log("leaving")
    assert deployment.web.store.get_job(job.id).state == "queued"  # handed back at once, no heartbeat wait
    deployment.workers.start("staying")
    final = deployment.web.jobs.wait(job.id, timeout=120)
    assert final.state == "succeeded" and final.fence == 2 and final.runner == "staying"


def test_a_postgres_restart_loses_no_job_and_no_event(deployment, private_postgres):
    sleeping_agent(deployment.model, 8)
    deployment.workers.start("a")
    jobs = deployment.submit() + deployment.submit()
    wait_for(lambda: all(any(u.kind == "tool_start" for u in deployment.updates if u.job_id == j.id) for j in jobs),
             90, "both jobs to run")
    away = private_postgres.restart()
    assert away < 15
    done = [deployment.web.jobs.wait(j.id, timeout=120) for j in jobs]
    assert [j.state for j in done] == ["succeeded", "succeeded"], [j.reason for j in done]
    assert all(j.fence == 1 for j in done)  # the restart did not make anyone look dead
    for job in done:
        wait_for(lambda: any(u.kind == "finished" for u in deployment.updates if u.job_id == job.id), 30,
                 "the web process to hear the end")
        stored = deployment.web.store.list_events(job.id)
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        heard = [u.seq for u in deployment.updates if u.job_id == job.id and u.seq is not None]
        assert heard == [e.seq for e in stored]  # what the web process missed while away, it read back


def test_worker_refuses_sqlite(tmp_path, scripted_model):
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(ASSISTANT_DATA_DIR=str(tmp_path), ASSISTANT_CONFIG=str(tmp_path / "none.toml"))
    done = subprocess.run([sys.executable, "-m", "assistant.cli", "worker"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "ASSISTANT_DATABASE_URL=postgresql://" in done.stderr
