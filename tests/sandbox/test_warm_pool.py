"""The warm pool's bookkeeping with fake sandboxes: keys, expiry, capacity, one hand-out, dead members, close.
(tests/sandbox/test_warm.py does the same on real containers and jobs.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from assistant.egress.policy import EgressPolicy
from assistant.sandbox import PreparedSandbox, SandboxConfig
from assistant.sandbox.repo import RepoSource
from assistant.sandbox.warm import WarmPlan, WarmPool, WarmRequest, warm_key

SETUP = ["make deps"]
OFF = EgressPolicy()


class FakeSandbox:
    backend = "docker"

    def __init__(self):
        self.is_alive = True
        self.closed = False
        self.clock_restarts = 0

    def alive(self) -> bool:
        return self.is_alive and not self.closed

    def restart_wall_clock(self) -> None:
        self.clock_restarts += 1

    def close(self) -> None:
        self.closed = True


class FakeRepos:
    """The planner: each repository's current commit, resolved as prepare() would, and the sandboxes it made."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.commits: dict[str, str] = {}
        self.made: list[FakeSandbox] = []
        self.gate: threading.Event | None = None  # when set, starts wait for it

    def source(self, repo: str) -> RepoSource:
        return RepoSource(repo=repo, mirror=Path("/nonexistent"), commit=self.commits.get(repo, "c1"), branch="main")

    def key(self, repo: str, commands=SETUP, config=None) -> tuple:
        return warm_key(config or self.config, "docker", self.source(repo), commands, OFF, f"setup-{repo}")

    def plan(self, want: WarmRequest, config: SandboxConfig) -> WarmPlan:
        def start() -> PreparedSandbox:
            if self.gate is not None:
                self.gate.wait(10)
            sandbox = FakeSandbox()
            self.made.append(sandbox)
            return PreparedSandbox(sandbox=sandbox, base_commit=self.source(want.repo).commit,
                                   setup_commands=list(SETUP), setup_results=[], cache_hit=True,
                                   setup_network="none", agent_network="none", warm_pool=True)
        return WarmPlan(self.key(want.repo), start)


def make_pool(tmp_path, capacity=2, idle_s=600.0):
    config = SandboxConfig(data_dir=tmp_path)
    repos = FakeRepos(config)
    now = [1000.0]
    pool = WarmPool(config, capacity=capacity, idle_s=idle_s, planner=repos.plan, clock=lambda: now[0])
    return pool, repos, now


def take(pool: WarmPool, repos: FakeRepos, repo: str, commands=SETUP, config=None):
    return pool.take(config or repos.config, "docker", repos.source(repo), commands, OFF, f"setup-{repo}")


def settle(pool: WarmPool, **expected) -> None:
    """Wait until the pool holds what is expected and resolves nothing more."""
    wanted = {"ready": 0, "starting": 0, "resolving": 0, **expected}
    deadline = time.monotonic() + 10
    while pool.counts() != wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.counts() == wanted


def test_a_ready_sandbox_goes_to_the_request_with_its_key_once(tmp_path):
    pool, repos, _ = make_pool(tmp_path)
    try:
        assert pool.request("/repos/a", setup=SETUP)
        settle(pool, ready=1)
        assert take(pool, repos, "/repos/b") is None                      # another repository
        assert take(pool, repos, "/repos/a", commands=["other"]) is None  # other setup
        assert take(pool, repos, "/repos/a", config=SandboxConfig(data_dir=tmp_path, memory_mb=512)) is None
        repos.commits["/repos/a"] = "c2"
        assert take(pool, repos, "/repos/a") is None                      # the repository moved on
        repos.commits["/repos/a"] = "c1"
        prepared = take(pool, repos, "/repos/a")
        assert prepared is not None and prepared.sandbox is repos.made[0]
        assert prepared.sandbox.clock_restarts == 1 and not prepared.sandbox.closed
        assert take(pool, repos, "/repos/a") is None                      # never handed out twice
        assert (pool.stats.hits, pool.stats.misses) == (1, 5)
    finally:
        pool.close()


def test_the_same_request_at_a_newer_commit_replaces_the_old_sandbox(tmp_path):
    pool, repos, _ = make_pool(tmp_path)
    try:
        pool.request("/repos/a", setup=SETUP)
        settle(pool, ready=1)
        pool.request("/repos/a", setup=SETUP)  # same commit: nothing new
        settle(pool, ready=1)
        assert len(repos.made) == 1
        repos.commits["/repos/a"] = "c2"
        pool.request("/repos/a", setup=SETUP)
        settle(pool, ready=1)
        assert repos.made[0].closed and not repos.made[1].closed
        assert take(pool, repos, "/repos/a").sandbox is repos.made[1]
    finally:
        pool.close()


def test_idle_sandboxes_expire(tmp_path):
    pool, repos, now = make_pool(tmp_path, idle_s=60)
    try:
        pool.request("/repos/a", setup=SETUP)
        settle(pool, ready=1)
        now[0] += 59
        pool.expire_idle()
        assert pool.counts()["ready"] == 1
        now[0] += 1
        pool.expire_idle()
        assert pool.counts()["ready"] == 0 and repos.made[0].closed
        assert take(pool, repos, "/repos/a") is None
    finally:
        pool.close()


def test_capacity_counts_starting_and_ready_and_evicts_the_oldest_ready(tmp_path):
    pool, repos, now = make_pool(tmp_path, capacity=2)
    try:
        pool.request("/repos/a", setup=SETUP)
        settle(pool, ready=1)
        now[0] += 1
        pool.request("/repos/b", setup=SETUP)
        settle(pool, ready=2)
        pool.request("/repos/c", setup=SETUP)
        settle(pool, ready=2)
        assert [s.closed for s in repos.made] == [True, False, False]
        assert take(pool, repos, "/repos/a") is None and take(pool, repos, "/repos/c") is not None

        assert pool.stats.evicted == 1
    finally:
        pool.close()


def test_a_request_gets_no_room_while_every_slot_is_starting(tmp_path):
    pool, repos, _ = make_pool(tmp_path, capacity=1)
    try:
        repos.gate = threading.Event()
        pool.request("/repos/a", setup=SETUP)
        settle(pool, starting=1)
        pool.request("/repos/b", setup=SETUP)
        settle(pool, starting=1)
        repos.gate.set()
        settle(pool, ready=1)
        assert len(repos.made) == 1 and take(pool, repos, "/repos/b") is None
        assert take(pool, repos, "/repos/a") is not None
    finally:
        pool.close()


def test_concurrent_takers_never_share_a_sandbox(tmp_path):
    pool, repos, _ = make_pool(tmp_path)
    try:
        pool.request("/repos/a", setup=SETUP)
        settle(pool, ready=1)
        barrier = threading.Barrier(8)
        got = []

        def taker():
            barrier.wait()
            got.append(take(pool, repos, "/repos/a"))
        threads = [threading.Thread(target=taker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len([p for p in got if p is not None]) == 1
    finally:
        pool.close()


def test_a_dead_sandbox_is_discarded_and_the_taker_starts_cold(tmp_path):
    pool, repos, _ = make_pool(tmp_path)
    try:
        pool.request("/repos/a", setup=SETUP)
        settle(pool, ready=1)
        repos.made[0].is_alive = False
        assert take(pool, repos, "/repos/a") is None
        assert repos.made[0].closed and pool.stats.dead == 1 and pool.counts()["ready"] == 0
    finally:
        pool.close()


def test_close_closes_ready_and_starting_sandboxes_and_takes_no_more(tmp_path):
    pool, repos, _ = make_pool(tmp_path)
    pool.request("/repos/a", setup=SETUP)
    settle(pool, ready=1)
    repos.gate = threading.Event()
    pool.request("/repos/b", setup=SETUP)
    settle(pool, ready=1, starting=1)
    threading.Timer(0.2, repos.gate.set).start()
    pool.close()
    assert len(repos.made) == 2 and all(s.closed for s in repos.made)
    assert not pool.request("/repos/c", setup=SETUP)
    assert take(pool, repos, "/repos/a") is None


def test_a_planner_that_fails_or_declines_leaves_the_pool_empty(tmp_path):
    calls = []

    def planner(want, config):
        calls.append(want)
        if want.repo == "/repos/broken":
            raise RuntimeError("cannot fetch")
        return None  # e.g. setup the cache does not hold
    pool = WarmPool(SandboxConfig(data_dir=tmp_path), planner=planner)
    try:
        assert pool.request("/repos/broken") and pool.request("/repos/uncached", setup=["pip install ."])
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        settle(pool)
        assert calls[1] == WarmRequest("/repos/uncached", None, ("pip install .",), None)
    finally:
        pool.close()


def test_nothing_is_keyed_where_a_sandbox_must_not_be_readied(tmp_path):
    config = SandboxConfig(data_dir=tmp_path)
    source = RepoSource(repo="/repos/a", mirror=Path("/nonexistent"), commit="c1", branch="main")
    allowlist = EgressPolicy(mode="allowlist")
    assert warm_key(config, "local", source, SETUP, OFF, "k") is None
    assert warm_key(config, "docker", source, SETUP, allowlist, "k") is None
    assert warm_key(SandboxConfig(data_dir=tmp_path, maintenance_command="git pull"), "docker", source, SETUP, OFF,
                    "k") is None
    assert warm_key(config, "docker", source, SETUP, OFF, None) is None  # setup to run, the cache off
    with_secret = SandboxConfig(data_dir=tmp_path, setup_secrets=(("TOKEN", "x" * 8),))
    assert warm_key(with_secret, "docker", source, SETUP, OFF, "k") != warm_key(config, "docker", source, SETUP, OFF, "k")


def test_a_job_waits_for_its_sandbox_on_its_way_not_for_another(tmp_path, monkeypatch):
    pool, repos, _ = make_pool(tmp_path)
    repos.gate = threading.Event()
    try:
        pool.request("/repos/a", setup=SETUP)
        settle(pool, starting=1)
        threading.Timer(0.3, repos.gate.set).start()
        started = time.monotonic()
        prepared = take(pool, repos, "/repos/a")  # readied right after the previous job, still starting
        assert prepared is not None and prepared.sandbox is repos.made[0] and time.monotonic() - started >= 0.25
        assert pool.stats.hits == 1

        repos.gate = threading.Event()
        pool.request("/repos/a", setup=SETUP)
        settle(pool, starting=1)
        started = time.monotonic()
        assert take(pool, repos, "/repos/b") is None       # another repository's sandbox is not waited for
        assert take(pool, repos, "/repos/a", commands=["other"]) is None  # nor one with another key
        assert time.monotonic() - started < 0.2

        monkeypatch.setattr("assistant.sandbox.warm.ON_ITS_WAY_WAIT_S", 0.3)
        started = time.monotonic()
        assert take(pool, repos, "/repos/a") is None       # one that does not come in time: the job starts cold
        assert 0.25 <= time.monotonic() - started < 2
        repos.gate.set()
        settle(pool, ready=1)
    finally:
        repos.gate.set()
        pool.close()
