"""The engine pool on real engines (the default one and two extra dockerd): the engine list, placement within
capacity, down and back, the image push, and the orphan sweep."""
from __future__ import annotations

import functools
import re
import threading
import time

import pytest

from assistant.jobs.worker import container_orphaned
from assistant.sandbox import SandboxError
from assistant.sandbox.engine import (DEPLOYMENT_LABEL, JOB_LABEL, MANAGED_LABEL, RUN_LABEL, EngineSpec,
                                      docker_client, forget_client)
from assistant.sandbox.pool import EnginePool, parse_engines
from tests.sandbox.engines import (DEFAULT_URL, ensure_engine, extra_engines, kill_engine, socket_url)  # noqa: F401

IMAGE = "assistant-sandbox:latest"


def test_the_engine_list_is_checked_and_says_what_is_wrong(tmp_path):
    engines = parse_engines("local=unix:///var/run/docker.sock*4, far=ssh://builder@10.0.0.3, tls=tcp://10.0.0.2:2376*8")
    assert [(e.name, e.url, e.capacity) for e in engines] == [
        ("local", "unix:///var/run/docker.sock", 4), ("far", "ssh://builder@10.0.0.3", 0), ("tls", "tcp://10.0.0.2:2376", 8)]
    for bad, says in [("x", "NAME=URL*CAPACITY"), ("a=http://h", "unix://, tcp:// or ssh://"),
                      ("a=unix:///s*0", "at least 1"), ("a=unix:///s*many", "whole number"),
                      ("a=unix:///s,a=unix:///t", "used twice"), ("", "no engines")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_engines(bad)
    with pytest.raises(SandboxError, match="no TLS client certificates"):
        docker_client(engines[2])
    certs = tmp_path / "tls"
    certs.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (certs / name).write_text("x")
    assert parse_engines("tls=tcp://10.0.0.2:2376", str(tmp_path))[0].tls_dir == str(certs)


@pytest.fixture
def jobs(store):
    """Active jobs to place, each on run 1."""
    def make(n):
        return [store.create_job(task=f"t{i}", repo="/r") for i in range(n)]
    return make


def test_placement_takes_the_least_loaded_engine_within_its_capacity(store, jobs, extra_engines):
    pool = EnginePool((EngineSpec("default", DEFAULT_URL, 1), EngineSpec("scale-a", socket_url("scale-a"), 2)),
                      store, IMAGE)
    never = threading.Event()
    first, second, third, fourth = jobs(4)
    assert [pool.place(j.id, 1, never).name for j in (first, second, third)] == ["default", "scale-a", "scale-a"]
    assert [store.get_job(j.id).engine for j in (first, second, third)] == ["default", "scale-a", "scale-a"]
    waits, placed = [], []
    waiter = threading.Thread(target=lambda: placed.append(pool.place(fourth.id, 1, never, on_wait=waits.append)))
    waiter.start()
    time.sleep(1.5)
    assert not placed and waits and "at its capacity" in waits[0]  # full: it waits, and says so once
    store.transition(first.id, "failed", "done")
    waiter.join(timeout=10)
    assert placed[0].name == "default" and len(waits) == 1
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(SandboxError, match="cancelled"):
        pool.place(jobs(1)[0].id, 1, cancelled)


def test_a_dead_engine_is_marked_down_gets_no_jobs_and_comes_back(store, jobs, extra_engines):
    scale_b = EngineSpec("scale-b", socket_url("scale-b"), 2)
    pool = EnginePool((EngineSpec("default", DEFAULT_URL, 2), scale_b), store, IMAGE)
    assert pool.check() == ([], [])
    try:
        kill_engine("scale-b")
        went_down, _ = pool.check()
        assert [e.name for e, _ in went_down] == ["scale-b"]
        assert store.engine_states()["scale-b"].state == "down"
        assert pool.check() == ([], [])  # already known
        assert {pool.place(j.id, 1, threading.Event()).name for j in jobs(2)} == {"default"}
        alone = EnginePool((scale_b,), store, IMAGE)
        with pytest.raises(SandboxError, match="scale-b is down"):
            alone.place(jobs(1)[0].id, 1, threading.Event())
    finally:
        ensure_engine("scale-b")
    _, came_back = pool.check()
    assert [e.name for e in came_back] == ["scale-b"] and store.engine_states()["scale-b"].state == "up"


def test_an_engine_without_the_image_is_passed_over_until_pushed(store, jobs, extra_engines):
    scale_b = EngineSpec("scale-b", socket_url("scale-b"), 2)
    docker_client(scale_b).images.remove(IMAGE, force=True)
    pool = EnginePool((scale_b,), store, IMAGE)
    with pytest.raises(SandboxError, match="assistant sandbox push scale-b"):
        pool.place(jobs(1)[0].id, 1, threading.Event())
    lines = []
    started = time.monotonic()
    EnginePool((EngineSpec("default", DEFAULT_URL), scale_b), store, IMAGE).push("scale-b", on_log=lines.append)
    assert "from engine default to engine scale-b" in lines[0] and time.monotonic() - started < 120
    pool._image_seen.clear()
    assert pool.place(jobs(1)[0].id, 1, threading.Event()).name == "scale-b"
    with pytest.raises(SandboxError, match="no engine 'nope'"):
        pool.push("nope")


def test_the_sweep_removes_what_no_current_run_owns(store, jobs, extra_engines):
    scale_a = EngineSpec("scale-a", socket_url("scale-a"), 2)
    client = docker_client(scale_a)
    deployment = store.deployment_id()
    ended, retried, current = jobs(3)
    store.transition(ended.id, "failed", "over")
    store.requeue_lost(retried.id, 1, "lost", max_runs=2)  # now on run 2

    def container(job_id, run, deploy=deployment):
        return client.containers.create(IMAGE, command=["sleep", "60"], labels={
            MANAGED_LABEL: "1", JOB_LABEL: job_id, RUN_LABEL: str(run), DEPLOYMENT_LABEL: deploy}).id
    made = {"ended": container(ended.id, 1), "old run": container(retried.id, 1),
            "current": container(current.id, 1), "other deployment": container(ended.id, 1, "someone-else")}
    try:
        pool = EnginePool((scale_a,), store, IMAGE)
        assert pool.sweep(deployment, functools.partial(container_orphaned, store)) == 2
        left = {c.id for c in client.containers.list(ignore_removed=True, all=True, filters={"label": f"{MANAGED_LABEL}=1"})}
        assert {k for k, v in made.items() if v in left} == {"current", "other deployment"}
    finally:
        for container_id in made.values():
            try:
                client.containers.get(container_id).remove(force=True)
            except Exception:
                pass
        forget_client(scale_a)


def test_the_push_command_names_what_is_missing(tmp_path):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(ASSISTANT_CONFIG=str(tmp_path / "none.toml"), ASSISTANT_DATA_DIR=str(tmp_path))
    run = lambda *argv, **extra: subprocess.run([sys.executable, "-m", "assistant.cli", "sandbox", "push", *argv],
                                                env={**env, **extra}, capture_output=True, text=True)
    alone = run("scale-a")
    assert alone.returncode == 2 and "ASSISTANT_DOCKER_HOSTS" in alone.stderr
    unknown = run("nope", ASSISTANT_DOCKER_HOSTS="a=unix:///run/nothing.sock")
    assert unknown.returncode == 1 and "no engine 'nope'" in unknown.stderr
