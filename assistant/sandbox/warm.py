"""The warm pool: sandboxes readied for a repository before a job asks for one, so that a job's agent starts at
once instead of after a container start and a clone.

A ready sandbox is what prepare() would hand a job for the same request, minus the job: the container runs,
the repository is cloned at the resolved commit (or the setup-cache image, whose workspace is set up, runs),
what setup left running is reaped, the network is already cut. It is readied only when nothing untrusted has
to run for it and every part of the request can be matched: no setup commands, or setup the setup cache
already holds (setup never runs ahead of a job, so setup secrets never enter a warm sandbox); no maintenance
command; agent internet off (an allowlist's presets are read when the job starts and its proxy belongs to the
job); the Docker backend.

A warm sandbox goes to one job at most and never comes back: each job gets a fresh sandbox, since a used one
holds whatever the job's code left in it. The pool is bounded (capacity counts sandboxes starting and ready)
and closes what nobody took within the idle expiry. Its containers carry the owner label of this process, so
the orphan sweep leaves them alone while the process lives and removes them after it died.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from .base import PreparedSandbox, PrepareRequest, SandboxConfig
from .engine import resolve_backend
from .image_choice import choose_image
from .prepare import _cached_setup, _egress_policy, _image_id, _start, _start_with_repo, _with_image
from .repo import RepoSource, prepare_source, repo_identity
from .setup_commands import KnownFiles, setup_commands

log = logging.getLogger(__name__)

WARM_PREFIX = "warm-"  # a warm container's job label and name: warm-<token>, kept when a job takes it
CLOSE_WAIT_S = 10.0    # how long close() waits for sandboxes still starting (each closes itself when it is up)
# A job whose warm sandbox is on its way (readied right after the previous job, or while the user typed) waits
# for it rather than starting a second one: it was started earlier, so it is ready sooner than a cold start.
ON_ITS_WAY_WAIT_S = 2.0


@dataclass(frozen=True)
class WarmRequest:
    """What a job would ask for: repository, ref, setup and agent-internet layer, as prepare() reads them."""
    repo: str
    ref: str | None = None
    setup: tuple[str, ...] | None = None  # None: the repository's own setup (its script, else detection)
    agent_internet: str | None = None     # the request's layer as canonical JSON, so that it compares


@dataclass
class WarmPlan:
    """A request resolved (mirror fetched, setup and network decided): its key, and how to start the sandbox."""
    key: tuple
    start: Callable[[], PreparedSandbox]


@dataclass
class _Member:
    key: tuple
    request: WarmRequest
    repo: str  # repo_identity of the request
    prepared: PreparedSandbox
    since: float


@dataclass
class WarmStats:
    requested: int = 0
    warmed: int = 0
    hits: int = 0
    misses: int = 0
    expired: int = 0
    evicted: int = 0  # closed for room, or replaced by the same request at a newer commit
    dead: int = 0     # taken, found dead, discarded (the job started cold)
    failed: int = 0


def warm_key(config: SandboxConfig, backend: str, source: RepoSource, commands: list[str], policy,
             setup_key: str | None) -> tuple | None:
    """Everything that makes two prepared sandboxes interchangeable; None when such a sandbox is not readied
    ahead (the sandbox limits and the rest of the configuration are matched by comparing the pool's config)."""
    if backend != "docker" or config.maintenance_command or policy.allowlist:
        return None
    if commands and setup_key is None:  # setup would have to run (the setup cache is off)
        return None
    return (repo_identity(source.repo), source.origin, source.commit, source.branch, tuple(commands),
            setup_key or _image_id(config.image), tuple(sorted(name for name, _ in config.setup_secrets)))


def plan_warm(want: WarmRequest, config: SandboxConfig) -> WarmPlan | None:
    """Resolve the request as prepare() does; None when no sandbox may be readied for it."""
    backend = resolve_backend(config).backend
    if backend != "docker":
        return None
    name = WARM_PREFIX + secrets.token_hex(6)
    req = PrepareRequest(job_id=name, repo=want.repo, ref=want.ref,
                         setup=None if want.setup is None else list(want.setup),
                         agent_internet=json.loads(want.agent_internet) if want.agent_internet else None)
    source = KnownFiles(prepare_source(req.repo, req.ref, config.data_dir))
    commands = setup_commands(source, req.setup)
    policy = _egress_policy(req, config, source, backend)
    chosen = choose_image(config, source, build=False)  # a toolchain image is never built ahead of a job
    if chosen is None:
        return None
    config = _with_image(config, chosen.image)
    _, setup_key, entry = _cached_setup(req.repo, config, backend, source, commands)
    key = warm_key(config, backend, source, commands, policy, setup_key)
    if key is None or (commands and entry is None):  # never run setup ahead of a job
        return None
    return WarmPlan(key, lambda: _ready_sandbox(name, config, source, commands, policy, entry))


def _ready_sandbox(name: str, config: SandboxConfig, source: RepoSource, commands: list[str], policy,
                   entry) -> PreparedSandbox:
    if entry is not None:
        sandbox = _start("docker", job_id=name, config=config, image=entry.image, network=False)
        setup_changes, setup_network = entry.setup_changes, "none (setup cache hit: setup skipped)"
    else:
        sandbox = _start_with_repo(functools.partial(_start, "docker"), name, config, source, network=False)
        setup_changes, setup_network = {"created": [], "modified": {}}, "none (no setup commands)"
    try:
        if config.setup_secrets:
            sandbox.reap()  # as prepare() does: nothing of the image's set-up state keeps running
        agent_network = sandbox.go_offline()
    except BaseException:
        sandbox.close()
        raise
    return PreparedSandbox(sandbox=sandbox, base_commit=source.commit, setup_commands=list(commands),
                           setup_results=[], cache_hit=entry is not None, setup_network=setup_network,
                           agent_network=agent_network, setup_changes=setup_changes, backend="docker",
                           egress_policy=policy, warm_pool=True, image=config.image)


class WarmPool:
    """Ready sandboxes by key. request() readies one in the background; prepare() take()s one whose key matches."""

    def __init__(self, config: SandboxConfig, *, capacity: int = 2, idle_s: float = 600.0,
                 planner: Callable[[WarmRequest, SandboxConfig], WarmPlan | None] = plan_warm,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.capacity = max(1, capacity)
        self.idle_s = idle_s
        self.stats = WarmStats()
        self._planner = planner
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a request resolved, a sandbox became ready or failed
        self._ready: list[_Member] = []       # oldest first
        self._starting: dict[tuple, str] = {}  # key -> repo_identity of sandboxes being started
        self._resolving: set[WarmRequest] = set()
        self._futures: set[Future] = set()
        self._closed = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="warm")
        threading.Thread(target=self._expire_loop, name="warm-expiry", daemon=True).start()

    # ------------------------------------------------------------------ filling
    def request(self, repo: str, ref: str | None = None, setup: list[str] | None = None,
                agent_internet: dict | str | None = None) -> bool:
        """Ready a sandbox for this request in the background, unless one is being resolved already. False when
        nothing was started (closed, or already under way); whether one is then readied is the planner's call."""
        want = WarmRequest(repo, ref or None, None if setup is None else tuple(setup),
                           None if agent_internet is None else json.dumps(agent_internet, sort_keys=True))
        with self._lock:
            if self._closed.is_set() or want in self._resolving:
                return False
            self._resolving.add(want)
            self.stats.requested += 1
            future = self._executor.submit(self._warm, want)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return True

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._futures.discard(future)

    def _warm(self, want: WarmRequest) -> None:
        try:
            plan = self._planner(want, self.config)
        except Exception as exc:  # a repository that cannot be fetched now: the job will say why, not the pool
            log.info("no warm sandbox for %s: %s", want.repo, exc)
            plan = None
        with self._lock:
            self._resolving.discard(want)
            self._changed.notify_all()
            if plan is None or self._closed.is_set() or plan.key in self._starting \
                    or any(m.key == plan.key for m in self._ready):
                return
            dropped = [m for m in self._ready if m.request == want]  # the same request at an older commit
            kept = [m for m in self._ready if m.request != want]
            while kept and len(kept) + len(self._starting) >= self.capacity:
                dropped.append(kept.pop(0))  # room, from the oldest
            self._ready = kept
            self.stats.evicted += len(dropped)
            room = len(self._ready) + len(self._starting) < self.capacity
            if room:
                self._starting[plan.key] = repo_identity(want.repo)
        _close_all(dropped)
        if room:
            self._start(want, plan)

    def _start(self, want: WarmRequest, plan: WarmPlan) -> None:
        try:
            prepared = plan.start()
        except Exception as exc:
            log.warning("readying a warm sandbox for %s failed: %s", want.repo, exc)
            prepared = None
        with self._lock:
            del self._starting[plan.key]
            self._changed.notify_all()
            keep = prepared is not None and not self._closed.is_set()
            if keep:
                self._ready.append(_Member(plan.key, want, repo_identity(want.repo), prepared, self._clock()))
                self.stats.warmed += 1
            elif prepared is None:
                self.stats.failed += 1
        if prepared is not None and not keep:
            _close(prepared.sandbox, want.repo)

    # ------------------------------------------------------------------ taking
    def may_hold(self, repo: str) -> bool:
        """Whether a sandbox of this repository waits or is on its way (then a job does not start a container
        early)."""
        identity = repo_identity(repo)
        with self._lock:
            return any(m.repo == identity for m in self._ready) or self._on_its_way(identity)

    def _on_its_way(self, identity: str, key: tuple | None = None) -> bool:
        """A sandbox of this repository (with this key, if given) is starting, or a request for the repository is
        being resolved (its key is not known yet). Called with the lock held."""
        starting = (key in self._starting) if key is not None else identity in self._starting.values()
        return starting or any(repo_identity(w.repo) == identity for w in self._resolving)

    def take(self, config: SandboxConfig, backend: str, source: RepoSource, commands: list[str], policy,
             setup_key: str | None) -> PreparedSandbox | None:
        """The ready sandbox for exactly this job's resolved request, removed from the pool (waiting up to
        ON_ITS_WAY_WAIT_S for one on its way); None on a miss."""
        key = None
        # The pool's configuration but for the image (a toolchain image or the repository's): the key holds that.
        if dataclasses.replace(config, image=self.config.image) == self.config and self.may_hold(source.repo):
            key = warm_key(config, backend, source, commands, policy, setup_key)
        identity = repo_identity(source.repo)
        deadline = time.monotonic() + ON_ITS_WAY_WAIT_S
        while True:
            with self._lock:
                while key is not None and not any(m.key == key for m in self._ready) \
                        and self._on_its_way(identity, key):
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._changed.wait(left):
                        break
                member = next((m for m in self._ready if m.key == key), None) if key is not None else None
                if member is None:
                    self.stats.misses += 1
                    return None
                self._ready.remove(member)
            sandbox = member.prepared.sandbox
            if sandbox.alive():
                sandbox.restart_wall_clock()
                with self._lock:
                    self.stats.hits += 1
                return member.prepared
            log.info("a warm sandbox for %s died while it waited; discarded", member.request.repo)
            with self._lock:
                self.stats.dead += 1
            _close_all([member])

    # ------------------------------------------------------------------ emptying
    def expire_idle(self) -> None:
        """Close the ready sandboxes nobody took within the idle expiry."""
        now = self._clock()
        with self._lock:
            old = [m for m in self._ready if now - m.since >= self.idle_s]
            self._ready = [m for m in self._ready if m not in old]
            self.stats.expired += len(old)
        _close_all(old)

    def _expire_loop(self) -> None:
        while not self._closed.wait(max(0.05, min(self.idle_s / 4, 10.0))):
            self.expire_idle()

    def counts(self) -> dict[str, int]:
        """Sandboxes ready and starting (what the capacity counts), and requests still being resolved."""
        with self._lock:
            return {"ready": len(self._ready), "starting": len(self._starting), "resolving": len(self._resolving)}

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Close every ready sandbox and take no more; a sandbox still starting closes itself when it is up
        (waited for up to wait_s)."""
        with self._lock:
            self._closed.set()
            members, self._ready = self._ready, []
            futures = list(self._futures)
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + wait_s
        closers = [threading.Thread(target=_close, args=(member.prepared.sandbox, member.request.repo),
                                    name="warm-close", daemon=True) for member in members]
        for closer in closers:  # a busy engine takes seconds per container removal: all at once, bounded
            closer.start()
        wait(futures, timeout=wait_s)
        for closer in closers:
            closer.join(max(0.0, deadline - time.monotonic()))


def _close_all(members: list[_Member]) -> None:
    for member in members:
        _close(member.prepared.sandbox, member.request.repo)


def _close(sandbox, repo: str) -> None:
    try:
        sandbox.close()
    except Exception:
        log.exception("closing a warm sandbox of %s", repo)
