"""The warm pool on a real Docker engine: prepare() takes a ready sandbox on a key match and starts cold
otherwise; setup comes only from the setup cache; dead, idle and orphaned members go; jobs from a warm
sandbox end as they do from a cold one, follow-ups included."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from assistant.jobs.manager import JobRequest
from assistant.sandbox import PrepareRequest, SandboxConfig, prepare, sweep_orphans
from assistant.sandbox.engine import OWNER_LABEL, docker_client, owner_tag
from assistant.sandbox.warm import WARM_PREFIX, WarmPool
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from tests.fixtures.repos import FIX_PATCH, make_calc_repo

from .conftest import git, make_repo

pytestmark = pytest.mark.docker
AGENT = "You are a careful software engineer"
TEST_CMD = "python3 -m unittest -v 2>&1"
SECRET = "s3cret-value-of-the-test"


@pytest.fixture
def config(reachable_data_dir, docker_image) -> SandboxConfig:
    return SandboxConfig(data_dir=reachable_data_dir, backend="docker", cache_enabled=False)


@pytest.fixture
def pools():
    made = []

    def make(config: SandboxConfig, **kw) -> WarmPool:
        pool = WarmPool(config, **kw)
        made.append(pool)
        return pool
    yield make
    for pool in made:
        pool.close()


def ready(pool: WarmPool, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pool.counts() == {"ready": count, "starting": 0, "resolving": 0}:
            return
        time.sleep(0.05)
    raise AssertionError(f"the pool did not settle at {count} ready: {pool.counts()} {pool.stats}")


def warm_containers(all_owners: bool = False) -> list:
    labels = [f"{OWNER_LABEL}={owner_tag()}"] if not all_owners else []
    return [c for c in docker_client().containers.list(ignore_removed=True, all=True, filters={"label": ["assistant.managed=1", *labels]})
            if c.name.startswith(f"assistant-{WARM_PREFIX}")]


def test_prepare_takes_the_ready_sandbox_and_misses_when_the_repository_moved(config, pools, small_repo):
    pool = pools(config)
    pool.request(str(small_repo), setup=[])
    ready(pool)
    prepared = prepare(PrepareRequest(job_id="warm-hit", repo=str(small_repo), setup=[]), config, warm=pool)
    try:
        assert prepared.warm_pool and "warm_take_s" in prepared.timings
        head = git(small_repo, "rev-parse", "HEAD").strip()
        assert prepared.base_commit == head
        out = prepared.sandbox.exec("git rev-parse HEAD; git status --porcelain; git branch --show-current; id -u")
        assert out.output.split() == [head, "main", "1000"]
        assert prepared.sandbox.network_interfaces() == ["lo"]
        assert prepared.setup_network == "none (no setup commands)" and "lo only" in prepared.agent_network
    finally:
        prepared.sandbox.close()
    assert pool.counts()["ready"] == 0

    pool.request(str(small_repo), setup=[])
    ready(pool)
    make_repo(small_repo, {"README.md": "# moved on\n"}, message="second")
    cold = prepare(PrepareRequest(job_id="warm-miss", repo=str(small_repo), setup=[]), config, warm=pool)
    try:
        assert not cold.warm_pool and cold.base_commit == git(small_repo, "rev-parse", "HEAD").strip()
        assert cold.sandbox.exec("cat README.md").output == "# moved on\n"
    finally:
        cold.sandbox.close()
    assert pool.counts()["ready"] == 1  # the stale one waits for its expiry or its replacement
    pool.request(str(small_repo), setup=[])
    deadline = time.monotonic() + 30
    while pool.stats.evicted < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    ready(pool)
    assert pool.stats.evicted == 1 and len(warm_containers()) == 1


def test_setup_is_warmed_from_the_cache_only_and_its_secrets_never_enter(reachable_data_dir, docker_image, pools,
                                                                         small_repo):
    config = SandboxConfig(data_dir=reachable_data_dir, backend="docker", cache_enabled=True,
                           setup_secrets=(("SETUP_TOKEN", SECRET),))
    setup = ['echo "token:${#SETUP_TOKEN}" > ~/setup-ran', "echo made > generated.txt"]
    pool = pools(config)
    pool.request(str(small_repo), setup=setup)
    ready(pool, count=0)
    assert pool.stats.warmed == 0 and not warm_containers()  # no cache entry: setup is not run ahead

    cold = prepare(PrepareRequest(job_id="warm-setup-cold", repo=str(small_repo), setup=setup), config, warm=pool)
    cold.sandbox.close()
    assert not cold.warm_pool and not cold.cache_hit
    pool.request(str(small_repo), setup=setup)
    ready(pool)
    warm = prepare(PrepareRequest(job_id="warm-setup-hit", repo=str(small_repo), setup=setup), config, warm=pool)
    try:
        assert warm.warm_pool and warm.cache_hit and warm.setup_results == []
        assert warm.setup_changes == cold.setup_changes and warm.setup_commands == cold.setup_commands
        assert warm.sandbox.exec("cat ~/setup-ran generated.txt").output == f"token:{len(SECRET)}\nmade\n"
        environ = warm.sandbox.exec("cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'").output
        assert SECRET not in environ and "SETUP_TOKEN" not in environ
        assert warm.sandbox.network_interfaces() == ["lo"]
    finally:
        warm.sandbox.close()


def test_a_dead_warm_sandbox_is_discarded_and_the_job_starts_cold(config, pools, small_repo):
    pool = pools(config)
    pool.request(str(small_repo), setup=[])
    ready(pool)
    (container,) = warm_containers()
    container.kill()
    prepared = prepare(PrepareRequest(job_id="after-death", repo=str(small_repo), setup=[]), config, warm=pool)
    try:
        assert not prepared.warm_pool and pool.stats.dead == 1
        assert prepared.sandbox.exec("cat README.md").output == "# demo\n"
    finally:
        prepared.sandbox.close()
    assert not warm_containers()


def test_idle_sandboxes_expire_and_close_leaves_no_container(config, pools, small_repo, tmp_path):
    pool = pools(config, idle_s=1.0)
    pool.request(str(small_repo), setup=[])
    ready(pool)
    deadline = time.monotonic() + 10
    while warm_containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not warm_containers() and pool.stats.expired == 1

    other = make_repo(tmp_path / "other", {"x.txt": "x\n"})
    third = make_repo(tmp_path / "third", {"y.txt": "y\n"})
    pool = pools(config, capacity=3)
    pool.request(str(small_repo), setup=[])
    pool.request(str(other), setup=[])
    ready(pool, count=2)
    pool.request(str(third), setup=[])  # closed while it may still be starting
    pool.close()
    assert not warm_containers()


def test_the_orphan_sweep_spares_a_live_pool_and_removes_a_dead_process_s(config, pools, small_repo):
    pool = pools(config)
    pool.request(str(small_repo), setup=[])
    ready(pool)
    sweep_orphans()
    assert len(warm_containers()) == 1
    prepared = prepare(PrepareRequest(job_id="after-sweep", repo=str(small_repo), setup=[]), config, warm=pool)
    assert prepared.warm_pool
    prepared.sandbox.close()

    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from assistant.sandbox import SandboxConfig
        from assistant.sandbox.warm import WarmPool
        pool = WarmPool(SandboxConfig(data_dir=Path({str(config.data_dir)!r}), backend="docker", cache_enabled=False))
        pool.request({str(small_repo)!r}, setup=[])
        deadline = time.monotonic() + 60
        while pool.counts()["ready"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        print(pool.counts()["ready"], os.getpid(), flush=True)
        os._exit(0)  # a crash: nothing closes the pool
    """)
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             cwd=Path(__file__).resolve().parents[2])
    count, pid = crashed.stdout.split()
    assert count == "1", crashed.stderr
    (left,) = [c for c in warm_containers(all_owners=True) if c.labels[OWNER_LABEL].endswith(f":{pid}")]
    assert sweep_orphans() >= 1
    assert left.id not in {c.id for c in warm_containers(all_owners=True)}


# ---------------------------------------------------------------------------------------------- whole jobs
def fixing_script():
    def final(request):
        ids = chunk_ids(request)
        return Reply.text(f"Fixed `add` 【F:calc.py†L1-L2】; the suite passes 【{ids[2]}†L1-L3】.")
    return by_turn(Reply.call("shell", command=TEST_CMD), Reply.call("apply_patch", patch=FIX_PATCH),
                   Reply.call("shell", command=TEST_CMD), final)


def wait_warm(assistant, count: int = 1) -> None:
    ready(assistant.jobs.warm, count=count)


def test_jobs_from_warm_sandboxes_end_as_from_cold_ones_and_follow_ups_work(tmp_path, docker_engine, scripted_model,
                                                                              assistant_for):
    repo = make_calc_repo(tmp_path / "calc")

    def task_is(text):
        return lambda r: AGENT in r["messages"][0]["content"] and r["messages"][1]["content"].startswith("Task:\n" + text)
    scripted_model.script([fixing_script()], match=task_is("Fix the failing test"), repeat_last=True)
    add_test = ("*** Begin Patch\n*** Update File: test_calc.py\n@@     def test_mul(self):\n"
                "         self.assertEqual(mul(2, 3), 6)\n+\n+    def test_add_negative(self):\n"
                "+        self.assertEqual(add(-2, -3), -5)\n*** End Patch")
    scripted_model.script([by_turn(Reply.call("apply_patch", patch=add_test), Reply.call("shell", command=TEST_CMD),
                                   lambda r: Reply.text(f"Added a test 【{chunk_ids(r)[-1]}†L1-L4】."))],
                          match=task_is("also add a test"), repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_WARM_POOL="true")
    pool = assistant.jobs.warm
    thread = assistant.store.create_thread(user_id=None, repo=str(repo))

    def run(task, parent=None):
        job = assistant.jobs.submit(JobRequest(task=task, repo=str(repo), setup=[], thread_id=thread.id,
                                               parent_job_id=parent))[0]
        return assistant.jobs.wait(job.id, timeout=180)

    cold = run("Fix the failing test")
    assert (pool.stats.hits, cold.state) == (0, "succeeded"), cold.reason
    wait_warm(assistant)  # the finished job asked for the next one
    warm = run("Fix the failing test")
    assert (pool.stats.hits, warm.state) == (1, "succeeded"), warm.reason

    def result(job):
        """Everything the job produced, its log chunks' ids replaced by their positions."""
        chunks = assistant.store.list_chunks(job.id)
        text = json.dumps([job.state, job.reason, job.base_commit, job.setup_network, job.agent_network, job.outcome,
                           job.summary, [c["valid"] for c in job.citations],
                           assistant.store.get_artifact(job.id, "patch"), [(c.command, c.exit_code) for c in chunks]])
        for position, chunk in enumerate(chunks):
            text = text.replace(chunk.id, f"chunk-{position}")
        return json.loads(text)
    assert result(warm) == result(cold)

    wait_warm(assistant)
    follow = run("also add a test for that", parent=warm.id)
    assert follow.state == "succeeded", follow.reason
    assert pool.stats.hits == 2
    last = assistant.store.list_chunks(follow.id)[-1]
    assert last.exit_code == 0 and "test_add_negative" in last.text  # the parent's fix was applied first
    diff = assistant.store.get_artifact(follow.id, "diff")
    assert "+    return a + b" in diff and "test_add_negative" in diff
    assert follow.outcome["tests_passed"] is True

    wait_warm(assistant)
    assistant.jobs.shutdown()
    assert not warm_containers()
