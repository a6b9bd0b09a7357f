"""Jobs on a pool of engines (the default one and two extra dockerd): placement within capacity, and an engine
killed under running jobs — they go to the other engines, the engine is marked down, and once it is back its
leftovers are swept."""
from __future__ import annotations

import collections

import pytest

from assistant.domain import events as ev
from tests.jobs.queue_harness import Deployment, held_agent, managed_containers, private_postgres, wait_for  # noqa: F401
from tests.sandbox.engines import DEFAULT_URL, ensure_engine, extra_engines, hosts_setting, kill_engine, socket_url  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


@pytest.fixture
def pool_deployment(request, tmp_path, private_postgres, scripted_model, extra_engines):
    d = Deployment(request.node.name, tmp_path, private_postgres, scripted_model,
                   ASSISTANT_DOCKER_HOSTS=hosts_setting(2))
    yield d
    d.close()


def everywhere(job_id):
    return [c for url in (DEFAULT_URL,) + tuple(socket_url(n) for n in ("scale-a", "scale-b"))
            for c in managed_containers(job_id, url)]


def test_jobs_fill_the_engines_and_fail_over_when_one_dies(pool_deployment):
    d = pool_deployment
    release = held_agent(d.model, 12)  # every job still runs when the engine dies, however slowly they started
    d.workers.start("w", concurrency=6)
    jobs = [j for _ in range(6) for j in d.submit()]
    wait_for(lambda: all(d.heard(j.id, "tool_start") for j in jobs), 120, "all six jobs to run")
    placed = {j.id: d.web.store.get_job(j.id).engine for j in jobs}
    assert collections.Counter(placed.values()) == {"default": 2, "scale-a": 2, "scale-b": 2}  # least loaded, capacity 2
    on_b = [job_id for job_id, engine in placed.items() if engine == "scale-b"]
    try:
        kill_engine("scale-b")
        release.set()
        done = [d.web.jobs.wait(j.id, timeout=180) for j in jobs]
        assert [j.state for j in done] == ["succeeded"] * 6, [j.reason for j in done]
        for job in done:
            if job.id in on_b:  # retried once, elsewhere, and the card says why
                assert job.fence == 2 and job.engine in ("default", "scale-a")
                events = d.web.store.read_events(job.id)
                lost = [e for e in events if isinstance(e, ev.StateChanged) and e.state == "interrupted"]
                assert len(lost) == 1 and "sandbox engine scale-b stopped answering" in lost[0].reason
            else:
                assert job.fence == 1 and job.engine == placed[job.id]
        state = d.web.store.engine_states()["scale-b"]
        assert state.state == "down" and state.reason
        retry = d.submit()[0]  # a new job goes nowhere near the dead engine
        assert d.web.jobs.wait(retry.id, timeout=120).engine in ("default", "scale-a")
    finally:
        release.set()
        ensure_engine("scale-b")
    wait_for(lambda: d.web.store.engine_states()["scale-b"].state == "up", 60, "scale-b to be marked up again")
    wait_for(lambda: not [c for j in jobs for c in everywhere(j.id)], 60, "scale-b's leftovers to be swept")
