"""Retention on real files, real git clones, a real Docker engine and a real store: what goes, what stays."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from assistant import retention
from assistant.access import RepoPolicy
from assistant.conversation.checkout import lock_path, reading_checkout
from assistant.jobs.manager import sandbox_config
from tests.fixtures.repos import make_repo

DAY = 86_400


def age(path: Path, days: float) -> None:
    """Make every file of a tree look untouched for `days` (retention reads mtimes)."""
    when = time.time() - days * DAY
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(Path(root) / name, (when, when), follow_symlinks=False)
    os.utime(path, (when, when))


def gc(settings, store, dry_run=False) -> retention.Report:
    return retention.run(settings, store, dry_run=dry_run)


def removed(report: retention.Report) -> list[str]:
    return sorted(r.item.label for r in report.removals if not r.error)


# ---------------------------------------------------------------------------------------------- checkouts
@pytest.fixture
def remote(tmp_path) -> str:
    """A repository reached by URL, so answers read it from a checkout under the data dir."""
    repo = make_repo(tmp_path / "remote", {"app.py": "print('hi')\n", "blob.bin": os.urandom(600_000).hex()})
    return f"file://{repo}"


def reading(url: str, ref: str | None, data_dir: Path):
    return reading_checkout(url, ref, data_dir, RepoPolicy(data_dir=data_dir.resolve()))


def checkout(url: str, data_dir: Path, ref: str | None = None) -> Path:
    with reading(url, ref, data_dir) as path:
        return path


def test_old_checkouts_go_and_a_dry_run_only_says_so(remote, settings_for, store, data_dir):
    settings = settings_for()
    old = checkout(remote, data_dir)
    fresh = checkout(remote, data_dir, ref="main")
    age(lock_path(old), 20)

    dry = gc(settings, store, dry_run=True)
    assert [r.item.label for r in dry.removals] == [f"{old} ({remote})"]
    assert "unused for 20.0 days (limit 14)" in dry.removals[0].reason
    assert old.is_dir() and dry.freed > 1_000_000

    real = gc(settings, store)
    assert removed(real) == [f"{old} ({remote})"]
    assert not old.exists() and not lock_path(old).exists() and fresh.is_dir()
    assert real.left(retention.CHECKOUTS) == real.total(retention.CHECKOUTS) - real.freed


def test_a_checkout_being_read_stays_and_a_removed_one_comes_back_on_use(remote, settings_for, store, data_dir):
    settings = settings_for()
    with reading(remote, None, data_dir) as path:
        age(lock_path(path), 30)
        report = gc(settings, store)
        assert report.removals == [] and path.is_dir()
        assert [i.in_use for i in report.items] == ["an answer is reading it"]
    age(lock_path(path), 30)
    assert removed(gc(settings, store)) == [f"{path} ({remote})"]
    with reading(remote, None, data_dir) as again:
        assert (again / "app.py").read_text() == "print('hi')\n"


def test_checkouts_over_the_size_limit_lose_the_least_recently_used(remote, settings_for, store, data_dir):
    settings = settings_for(ASSISTANT_CHECKOUTS_MAX_MB=2)   # each checkout takes about 1.9 MB
    older = checkout(remote, data_dir)
    newer = checkout(remote, data_dir, ref="main")
    age(lock_path(older), 2)
    age(lock_path(newer), 1)
    report = gc(settings, store)
    assert removed(report) == [f"{older} ({remote})"]
    assert "over the 2 MB limit" in report.removals[0].reason
    assert newer.is_dir()


# ---------------------------------------------------------------------------------------------- job files
def make_job_dir(base: Path, name: str, days_old: float, size: int = 10_000) -> Path:
    path = base / name
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "data").write_bytes(os.urandom(size))
    age(path, days_old)
    return path


def test_leftover_job_directories_go_unless_their_job_is_active(settings_for, store, data_dir):
    settings = settings_for()
    running = store.create_job(task="t", repo="r")
    store.transition(running.id, "preparing")
    finished = store.create_job(task="t", repo="r")
    store.transition(finished.id, "failed", "x")
    workspaces, homes = data_dir / "workspaces", data_dir / "homes"
    keep = make_job_dir(workspaces, running.id, 10)
    done = make_job_dir(workspaces, finished.id, 10)
    unknown = make_job_dir(workspaces, "0badc0de", 10)
    etc = make_job_dir(homes, f".{finished.id}-etc", 10)
    recent = make_job_dir(homes, finished.id, 1)

    report = gc(settings, store)
    assert removed(report) == sorted([str(done), str(unknown), str(etc)])
    assert keep.is_dir() and recent.is_dir()
    assert {i.label: i.in_use for i in report.items if i.kind == retention.JOB_FILES}[str(keep)] == \
        f"job {running.id} is preparing"


def test_job_directories_over_the_size_limit_lose_the_oldest(settings_for, store, data_dir):
    settings = settings_for(ASSISTANT_JOB_FILES_MAX_MB=1)
    oldest = make_job_dir(data_dir / "workspaces", "aaaa0001", 2, size=700_000)
    newest = make_job_dir(data_dir / "workspaces", "aaaa0002", 1, size=700_000)
    assert removed(gc(settings, store)) == [str(oldest)]
    assert newest.is_dir()


def test_zero_turns_the_limits_off(settings_for, store, data_dir):
    settings = settings_for(ASSISTANT_JOB_FILES_MAX_AGE_DAYS=0, ASSISTANT_JOB_FILES_MAX_MB=0)
    path = make_job_dir(data_dir / "workspaces", "aaaa0003", 400)
    assert gc(settings, store).removals == [] and path.is_dir()


# ---------------------------------------------------------------------------------------------- setup cache
@pytest.fixture
def cache_entry(docker_engine, settings_for, reachable_data_dir, tmp_path):
    """One real setup-cache entry (a committed image and the files setup made), as a job leaves it."""
    from assistant.sandbox import PrepareRequest, prepare
    from assistant.sandbox.cache import SetupCache
    settings = settings_for(ASSISTANT_DATA_DIR=reachable_data_dir, ASSISTANT_SANDBOX_BACKEND="docker")
    repo = make_repo(tmp_path / "cached", {"main.py": "print(1)\n", ".gitignore": "build/\n"})
    config = sandbox_config(settings)
    prepared = prepare(PrepareRequest(job_id="cachejob", repo=str(repo),
                                      setup=["mkdir -p build && head -c 300000 /dev/urandom > build/out"]), config)
    prepared.sandbox.close()
    cache = SetupCache(config)
    [entry] = cache.entries()
    yield settings, cache, entry
    cache.clear()


def last_used_days_ago(cache, entry, days: float) -> None:
    """As if no job had looked the entry up for `days`: the cache index keeps the time of the last lookup."""
    index_path = cache.directory / "index.json"
    index = json.loads(index_path.read_text())
    index[entry.key]["last_used"] = time.time() - days * DAY
    index_path.write_text(json.dumps(index))


def test_an_unused_cache_image_and_its_files_go(cache_entry, store):
    from assistant.sandbox.engine import docker_client
    settings, cache, entry = cache_entry
    fresh = gc(settings, store)
    assert fresh.removals == []
    assert "looked up" in next(i.in_use for i in fresh.items if i.kind == retention.SETUP_CACHE)

    last_used_days_ago(cache, entry, 15)
    item = next(i for i in gc(settings, store, dry_run=True).items if i.kind == retention.SETUP_CACHE)
    assert item.label == entry.image and item.size > 300_000 and item.in_use is None

    report = gc(settings, store)
    assert removed(report) == [entry.image]
    assert cache.entries() == []
    with pytest.raises(Exception):
        docker_client().images.get(entry.image)


def test_a_cache_image_a_container_runs_from_stays(cache_entry, store):
    from assistant.sandbox.engine import docker_client
    settings, cache, entry = cache_entry
    last_used_days_ago(cache, entry, 15)
    container = docker_client().containers.create(entry.image, ["sleep", "60"])
    try:
        report = gc(settings, store)
        assert report.removals == []
        assert next(i.in_use for i in report.items if i.kind == retention.SETUP_CACHE) == \
            f"container {container.name} uses it"
        assert [e.key for e in cache.entries()] == [entry.key]
    finally:
        container.remove(force=True)
    assert removed(gc(settings, store)) == [entry.image]


def test_workspace_archives_of_an_earlier_version_go_when_old(cache_entry, store):
    settings, cache, entry = cache_entry
    stray = cache.directory / "0123456789abcdef01234567.tar"
    stray.write_bytes(b"x" * 10_000)
    age(stray, 30)
    assert removed(gc(settings, store)) == [f"{stray} (left by an earlier version)"]
    assert not stray.exists() and [e.key for e in cache.entries()] == [entry.key]


# ---------------------------------------------------------------------------------------------- follow-ups
ADD_TEST = """*** Begin Patch
*** Add File: test_negative.py
+import unittest
+
+from calc import add
+
+
+class NegativeTest(unittest.TestCase):
+    def test_add_negative(self):
+        self.assertEqual(add(-2, -3), -5)
*** End Patch"""


@pytest.mark.docker
def test_a_follow_up_works_from_the_store_once_the_job_files_are_gone(tmp_path, docker_engine, scripted_model,
                                                                       assistant_for, reachable_data_dir):
    from assistant.conversation.router import FOLLOWUP_ANSWER, Route
    from assistant.jobs.manager import JobRequest
    from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
    from tests.fixtures.repos import FIX_PATCH, make_calc_repo

    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains("You are a careful software engineer", [by_turn(
        Reply.call("apply_patch", patch=FIX_PATCH), Reply.call("apply_patch", patch=ADD_TEST),
        Reply.call("shell", command="python3 -m unittest -v 2>&1"),
        lambda r: Reply.text(f"Fixed `add` and added 【F:test_negative.py†L6-L8】; all pass 【{chunk_ids(r)[-1]}†L1-L4】."))],
        repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_DATA_DIR=reachable_data_dir)
    thread = assistant.store.create_thread(user_id=None, repo=str(repo))
    job = assistant.jobs.submit(JobRequest(task="Fix add and test it", repo=str(repo), setup=[], thread_id=thread.id))[0]
    job = assistant.jobs.wait(job.id, timeout=180)
    assert job.state == "succeeded" and all(c["valid"] for c in job.citations), job.citations
    run_chunk = assistant.store.list_chunks(job.id)[-1].id

    # The workspace lived in the job's container and went with it: nothing of it is left on the host.
    assert not (reachable_data_dir / "workspaces" / job.id).exists()

    scripted_model.when_system_contains("You answer questions about a codebase", [by_turn(
        Reply.call("read_log", chunk=run_chunk, start=1, end=4),
        Reply.text(f"Job 1 added a test for negative numbers 【F:test_negative.py†L6-L8】 and the run passed "
                   f"【{run_chunk}†L1-L4】."))], repeat_last=True)
    events = list(assistant.conversation.answer(thread.id, "why did job 1 add a test?",
                                                Route(FOLLOWUP_ANSWER, job.id, "asks about job 1")))
    tool = next(e for e in events if e.kind == "tool")
    assert "test_add_negative" in tool.data["output"]                       # the stored log
    system = scripted_model.requests[-1]["messages"][0]["content"]
    assert "+    return a + b" in system and "Fixed `add`" in system         # the stored diff and summary
    done = next(e for e in events if e.kind == "done")
    assert [(c["target"], c["valid"]) for c in done.data["citations"]] == [("test_negative.py", True), (run_chunk, True)]


