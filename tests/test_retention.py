"""Retention on real files, real git clones, a real Docker engine and a real store: what goes, what stays."""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from assistant import retention
from assistant.access import RepoPolicy
from assistant.conversation.checkout import lock_path, reading_checkout
from assistant.sandbox import SandboxConfig
from tests.fixtures.repos import git, make_repo

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
    config = SandboxConfig.from_settings(settings)
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




# ---------------------------------------------------------------------------------------------- mirrors
def make_mirror(root: Path, data_dir: Path, name: str = "repo") -> tuple[Path, Path]:
    """A real repository and the bare mirror the host keeps of it, as a job's prepare leaves it (~1.5 MB)."""
    from assistant.sandbox.repo import prepare_source
    repo = make_repo(root / name, {"app.py": "print('hi')\n", "blob.txt": os.urandom(1_500_000).hex()})
    return repo, prepare_source(str(repo), None, data_dir).mirror


def unused_for(mirror: Path, days: float) -> None:
    """As if no job had fetched or bundled from the mirror for `days` (its files and its lock file)."""
    from assistant.sandbox.repo import mirror_lock_path
    age(mirror, days)
    age(mirror_lock_path(mirror), days)


def mirror_items(report: retention.Report) -> dict[str, str | None]:
    return {i.label: i.in_use for i in report.items if i.kind == retention.MIRRORS}


@contextmanager
def held_by_another_process(mirror: Path):
    """repo.py's own lock on the mirror, held by another process the way a job holds it while it fetches."""
    code = ("import sys; from pathlib import Path; from assistant.sandbox.repo import _locked\n"
            "with _locked(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(mirror)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_an_unused_mirror_goes_and_a_dry_run_only_says_so(tmp_path, settings_for, store, data_dir):
    from assistant.sandbox.repo import mirror_lock_path
    settings = settings_for()
    repo, mirror = make_mirror(tmp_path, data_dir)
    label = f"{mirror} ({repo.resolve()})"
    fresh = mirror_items(gc(settings, store, dry_run=True))[label]
    assert re.fullmatch(r"used \d+ s ago: a job may be starting from it", fresh)
    unused_for(mirror, 40)

    dry = gc(settings, store, dry_run=True)
    assert [r.item.label for r in dry.removals] == [label]
    assert "unused for 40.0 days (limit 30)" in dry.removals[0].reason
    assert mirror.is_dir() and dry.freed > 1_000_000

    real = gc(settings, store)
    assert removed(real) == [label]
    assert not mirror.exists() and not mirror_lock_path(mirror).exists()
    assert real.left(retention.MIRRORS) == 0 and real.total(retention.MIRRORS) == real.freed


def test_mirrors_over_the_size_limit_lose_the_least_recently_used(tmp_path, settings_for, store, data_dir):
    settings = settings_for(ASSISTANT_MIRRORS_MAX_MB=2)
    older_repo, older = make_mirror(tmp_path, data_dir, "older")
    newer_repo, newer = make_mirror(tmp_path, data_dir, "newer")
    unused_for(older, 2)
    unused_for(newer, 1)
    report = gc(settings, store)
    assert removed(report) == [f"{older} ({older_repo.resolve()})"]
    assert "over the 2 MB limit" in report.removals[0].reason
    assert newer.is_dir()


def test_a_mirror_used_moments_ago_stays_even_over_the_size_limit(tmp_path, settings_for, store, data_dir):
    settings = settings_for(ASSISTANT_MIRRORS_MAX_MB=1)
    _, mirror = make_mirror(tmp_path, data_dir)
    report = gc(settings, store)
    assert report.removals == [] and mirror.is_dir()
    [why] = mirror_items(report).values()
    assert why.startswith("used ") and why.endswith("a job may be starting from it")


def test_a_fetch_and_a_bundle_each_count_as_a_use(tmp_path, settings_for, store, data_dir):
    from assistant.sandbox.repo import prepare_source
    settings = settings_for()
    repo, mirror = make_mirror(tmp_path, data_dir)
    unused_for(mirror, 40)
    source = prepare_source(str(repo), None, data_dir)
    [item] = gc(settings, store).items
    assert re.fullmatch(r"used \d+ s ago: a job may be starting from it", item.in_use) and mirror.is_dir()
    unused_for(mirror, 40)
    with source.bundle("job1"):
        pass
    assert gc(settings, store).removals == [] and mirror.is_dir()


def test_zero_turns_the_mirror_limits_off(tmp_path, settings_for, store, data_dir):
    settings = settings_for(ASSISTANT_MIRRORS_MAX_AGE_DAYS=0, ASSISTANT_MIRRORS_MAX_MB=0)
    _, mirror = make_mirror(tmp_path, data_dir)
    unused_for(mirror, 400)
    assert gc(settings, store).removals == [] and mirror.is_dir()


def test_a_mirror_a_job_fetches_from_stays(tmp_path, settings_for, store, data_dir):
    settings = settings_for()
    repo, mirror = make_mirror(tmp_path, data_dir)
    label = f"{mirror} ({repo.resolve()})"
    unused_for(mirror, 40)
    [chosen] = gc(settings, store, dry_run=True).removals   # chosen while nobody held the lock
    with held_by_another_process(mirror):
        unused_for(mirror, 40)                               # taking the lock marked a use; look past it
        report = gc(settings, store)
        assert report.removals == [] and mirror_items(report)[label] == "a job is fetching or bundling from it"
        # A job that takes the lock between the inventory and the removal keeps it too, undisturbed.
        with pytest.raises(retention.InUse, match="fetching or bundling"):
            chosen.item.remove()
        assert (mirror / "HEAD").is_file()
    unused_for(mirror, 40)
    assert removed(gc(settings, store)) == [label]


def test_a_mirror_an_active_job_uses_stays(tmp_path, settings_for, store, data_dir):
    settings = settings_for()
    repo, mirror = make_mirror(tmp_path, data_dir)
    label = f"{mirror} ({repo.resolve()})"
    unused_for(mirror, 40)
    [chosen] = gc(settings, store, dry_run=True).removals
    queued = store.create_job(task="t", repo=str(repo))
    # A job queued between the inventory and the removal: the removal looks again and keeps the mirror.
    with pytest.raises(retention.InUse, match=f"job {queued.id} is queued"):
        chosen.item.remove()
    store.transition(queued.id, "preparing")
    report = gc(settings, store)
    assert report.removals == [] and mirror_items(report)[label] == f"job {queued.id} is preparing"
    store.transition(queued.id, "failed", "x")
    assert removed(gc(settings, store)) == [label]


def test_a_job_waiting_for_a_removed_mirrors_lock_takes_the_new_one(tmp_path, data_dir):
    """The removal unlinks the lock file it holds; a job that was waiting on that file must not go on
    under it while another job holds the lock file now at the path (both would write the same mirror)."""
    from assistant.sandbox.repo import _locked, mirror_lock_path, prepare_source
    repo, mirror = make_mirror(tmp_path, data_dir)
    pool = ThreadPoolExecutor(1)
    with ExitStack() as other_job:
        with open(mirror_lock_path(mirror), "a+") as removal:    # the removal's lock, as _remove_mirror takes it
            fcntl.flock(removal, fcntl.LOCK_EX)
            waiting = pool.submit(prepare_source, str(repo), None, data_dir)
            time.sleep(0.5)                                       # the job now waits on the old lock file
            retention.remove_tree(mirror)
            mirror_lock_path(mirror).unlink()
            other_job.enter_context(_locked(mirror))              # another job takes the new lock file
        time.sleep(0.5)
        assert not waiting.done() and not mirror.exists()
    source = waiting.result(timeout=60)
    pool.shutdown()
    assert source.read("app.py") == "print('hi')\n" and mirror_lock_path(mirror).is_file()


@pytest.mark.docker
def test_a_job_whose_mirror_went_still_prepares(docker_engine, settings_for, store, reachable_data_dir, tmp_path):
    from assistant.sandbox import PrepareRequest, prepare
    settings = settings_for(ASSISTANT_DATA_DIR=reachable_data_dir, ASSISTANT_SANDBOX_BACKEND="docker")
    repo = make_repo(tmp_path / "app", {"main.py": "print('first')\n"})
    first = prepare(PrepareRequest(job_id="mirror1", repo=str(repo), setup=[]), SandboxConfig.from_settings(settings))
    first.sandbox.close()
    [mirror] = (reachable_data_dir / "mirrors").glob("*.git")
    unused_for(mirror, 40)
    assert removed(gc(settings, store)) == [f"{mirror} ({repo.resolve()})"] and not mirror.exists()

    (repo / "main.py").write_text("print('second')\n")
    git(repo, "commit", "-qam", "second")
    again = prepare(PrepareRequest(job_id="mirror2", repo=str(repo), setup=[]), SandboxConfig.from_settings(settings))
    try:
        assert mirror.is_dir() and again.base_commit != first.base_commit
        shown = again.sandbox.exec("cat main.py && git log --format=%s")
        assert shown.exit_code == 0 and shown.output.split() == ["print('second')", "second", "initial"], shown.output
    finally:
        again.sandbox.close()
