"""Preparing a job's sandbox: the repository in (a bundle from the host mirror), set up with network (or
restored from the setup cache), what setup changed recorded, setup's processes gone, then offline."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .base import (ExecResult, PreparedSandbox, PrepareRequest, Sandbox, SandboxConfig, SandboxError, SetupFailed,
                   WORKSPACE)
from .cache import SetupCache, cache_key
from .engine import BackendChoice, EngineSpec, docker_client, resolve_backend
from .repo import RepoSource, prepare_source, repo_identity
from .image_choice import choose_image
from .setup_commands import KnownFiles, detect_test_commands, setup_commands
from .workspace import Workspace

SETUP_COMMAND_TIMEOUT_S = 1800.0
BUNDLE_PATH = "/tmp/assistant-repo.bundle"
REPO_CONFIG = ".assistant/config.toml"
_start_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-start")
# Closes the sandboxes a preparation started and then left (its workers are joined when the interpreter exits).
_close_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sandbox-abandoned-close")
log = logging.getLogger(__name__)


def _ignore(*_args) -> None:
    return None


# start(job_id=, config=, image=, network=) -> a started Sandbox; with a `backend` attribute naming it.
SandboxStarter = Callable[..., Sandbox]


@dataclass
class _Preparation:
    """One prepare() call on its way: what every way of starting a sandbox reads and adds to."""
    req: PrepareRequest
    config: SandboxConfig
    choice: BackendChoice
    start: SandboxStarter
    on_state: Callable[[str], None]
    on_command: Callable[[str, ExecResult], None]
    on_output: Callable[[str], None]
    source: RepoSource | None = None
    commands: list[str] = field(default_factory=list)
    policy: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    image: str = ""                          # the image the job runs on (a toolchain image, or the repository's)
    tests: list[str] = field(default_factory=list)  # test commands detected from the repository's files
    base_config: SandboxConfig | None = None  # the settings' own (the egress proxy's image derives from it)
    diff_base: str | None = None             # the commit of the user's uncommitted changes (req.start_patch)
    launch: SandboxStarter | None = None     # `start` before on_sandbox is told (a _Starting tells it itself)
    on_sandbox: Callable[[Sandbox], None] = _ignore

    def run_setup(self, sandbox: Sandbox, commands: list[str], results: list[ExecResult]):
        return _run_setup(sandbox, commands, results, self.config, self.on_command, self.on_output,
                          _masker(self.config))


def prepare(
    req: PrepareRequest,
    config: SandboxConfig,
    *,
    on_state: Callable[[str], None] = _ignore,
    on_command: Callable[[str, ExecResult], None] = _ignore,
    on_output: Callable[[str], None] = _ignore,
    on_sandbox: Callable[[Sandbox], None] = _ignore,
    start: SandboxStarter | None = None,
    engine: EngineSpec | None = None,
    warm=None,
) -> PreparedSandbox:
    """A sandbox with the repository in, set up and offline. `engine` is the Docker engine of a pool that the
    job was placed on (the environment's engine by default); `start` overrides how the sandbox is started (a
    test's own sandbox). `on_sandbox` hears of the sandbox as soon as it runs, before setup (to cancel it).
    `warm` is a WarmPool (assistant/sandbox/warm.py): on the environment's engine, a sandbox it readied for
    exactly this repository, commit, setup and network is taken instead of a new one.

    Four ways to a sandbox, each below on its own: taken from the warm pool (_from_warm_pool), started from the
    setup cache's image (_from_setup_cache), or started cold and set up (_cold); the engine pool only decides
    where the last two start (_starter)."""
    if start is not None or engine is not None or req.start_patch:
        # A pool engine or the caller's own sandbox: the warm pool readies on the local engine only. The user's
        # uncommitted changes: no sandbox readied (or set up and cached) without them will do.
        warm = None
    clock = time.monotonic()
    choice, start = _starter(req, config, start, engine)
    job = _Preparation(req, config, choice, _announcing(start, on_sandbox), on_state, on_command, on_output,
                       launch=start, on_sandbox=on_sandbox)
    on_state("preparing")
    early = None if warm is not None and warm.may_hold(req.repo) else _early_start(req, config, choice.backend,
                                                                                 start, on_sandbox)
    try:
        job.source = KnownFiles(prepare_source(req.repo, req.ref, config.data_dir))
        job.commands = setup_commands(job.source, req.setup)
        job.policy = _egress_policy(req, config, job.source, choice.backend)  # a bad policy fails before any start
        chosen = choose_image(config, job.source, backend=choice.backend, engine=engine,
                              on_log=lambda line: on_output(line + "\n"))
    except BaseException:
        if early is not None:
            early.abandon()
        raise
    job.timings["source_s"] = time.monotonic() - clock
    job.base_config, config = config, _with_image(config, chosen.image)
    job.config, job.image, job.tests = config, chosen.image, detect_test_commands(job.source)
    if early is not None and config is not job.base_config:  # started on the default image, before the files were read
        early.abandon()  # closed once it has started, on its own thread: the job's image starts now
        early = None

    cache, key, entry = (None, None, None) if req.start_patch else _cached_setup(req.repo, config, choice.backend,
                                                                                job.source, job.commands, engine)
    if warm is not None:
        ready = _from_warm_pool(job, warm, key, on_sandbox)
        if ready is not None:
            if early is not None:
                early.abandon()
            return ready
    if entry is not None:
        return _from_setup_cache(job, entry)
    return _cold(job, cache, key, early)


def _starter(req: PrepareRequest, config: SandboxConfig, start: SandboxStarter | None,
             engine: EngineSpec | None) -> tuple[BackendChoice, SandboxStarter]:
    """Where the sandbox starts: the caller's own starter, the engine of the pool the job was placed on, or the
    backend the settings resolve to on this host."""
    if start is not None:
        return BackendChoice(getattr(start, "backend", "custom"), "started by the caller"), start
    if engine is not None:
        return (BackendChoice("docker", engine.describe()),
                functools.partial(_start, "docker", engine=engine, run=req.run))
    choice = resolve_backend(config)
    return choice, functools.partial(_start, choice.backend, run=req.run)


def _from_warm_pool(job: _Preparation, warm, key: str | None, on_sandbox) -> PreparedSandbox | None:
    """A sandbox the warm pool readied for exactly this request (set up, offline), or None."""
    clock = time.monotonic()
    ready = warm.take(job.config, job.choice.backend, job.source, job.commands, job.policy, key)
    if ready is None:
        return None
    try:
        on_sandbox(ready.sandbox)
    except BaseException:
        ready.sandbox.close()
        raise
    return dataclasses.replace(ready, egress_policy=job.policy, image=job.image, test_commands=job.tests,
                               timings={**job.timings, "warm_take_s": time.monotonic() - clock},
                               backend_fallback=_notes(ready.backend_fallback, ready.sandbox))


def _from_setup_cache(job: _Preparation, entry) -> PreparedSandbox:
    """Start from the cache's image of a workspace these setup commands already set up: only the maintenance
    command (if any) runs, with network."""
    config = job.config
    maintenance = [config.maintenance_command] if config.maintenance_command else []
    results: list[ExecResult] = []
    failed = None
    clock = time.monotonic()
    sandbox = job.start(job_id=job.req.job_id, config=config, image=entry.image, network=bool(maintenance))
    try:
        job.timings["start_s"] = time.monotonic() - clock
        if maintenance:
            job.on_state("setting_up")
            failed = job.run_setup(sandbox, maintenance, results)
            setup_network = f"{_online_name(job.choice.backend)} (setup cache hit: setup skipped, maintenance ran)"
        else:
            setup_network = "none (setup cache hit: setup skipped)"
        return _offline(job, sandbox, results, failed, setup_network, entry.setup_changes, cache_hit=True)
    except BaseException:
        sandbox.close()
        raise


def _cold(job: _Preparation, cache: SetupCache | None, key: str | None, early) -> PreparedSandbox:
    """Start a new sandbox (or take the one started early), clone the repository in, run setup with network,
    note what setup changed, and keep the result in the setup cache."""
    results: list[ExecResult] = []
    failed = None
    setup_changes: dict = {"created": [], "modified": {}}
    clock = time.monotonic()
    sandbox = _start_with_repo(job.launch, job.req.job_id, job.config, job.source, network=bool(job.commands),
                               started=early, on_sandbox=job.on_sandbox)
    try:
        job.timings["start_s"] = time.monotonic() - clock
        if job.req.start_patch:
            job.diff_base = _apply_start_patch(sandbox, job)
        if job.commands:
            job.on_state("setting_up")
            clock = time.monotonic()
            failed = job.run_setup(sandbox, job.commands, results)
            job.timings["setup_s"] = time.monotonic() - clock
            setup_network = _online_name(job.choice.backend)
            setup_changes = Workspace(sandbox).snapshot(job.diff_base or job.source.commit).as_dict()
            if failed is None and cache is not None and key is not None:
                clock = time.monotonic()
                cache.store(key, sandbox, setup_changes)
                job.timings["cache_store_s"] = time.monotonic() - clock
        else:
            setup_network = "none (no setup commands)"
        return _offline(job, sandbox, results, failed, setup_network, setup_changes, cache_hit=False)
    except BaseException:
        sandbox.close()
        raise


def _offline(job: _Preparation, sandbox: Sandbox, results: list[ExecResult], failed, setup_network: str,
             setup_changes: dict, *, cache_hit: bool) -> PreparedSandbox:
    """Kill what setup left running, cut the network (or confine it to the job's egress proxy): the sandbox is
    the agent's."""
    clock = time.monotonic()
    if results or job.config.setup_secrets:
        sandbox.reap()  # what setup left running keeps its environment (and any secret) otherwise
    agent_network = (sandbox.confine_to_proxy(job.policy, job.base_config or job.config) if job.policy.allowlist
                     else sandbox.go_offline())
    job.timings["offline_s"] = time.monotonic() - clock
    return PreparedSandbox(
        sandbox=sandbox,
        base_commit=job.source.commit,
        setup_commands=job.commands,
        setup_results=results,
        cache_hit=cache_hit,
        setup_network=setup_network,
        agent_network=agent_network,
        failed_setup=failed,
        timings=job.timings,
        setup_changes=setup_changes,
        backend=job.choice.backend,
        backend_fallback=_notes(job.choice.fallback, sandbox),
        egress_policy=job.policy,
        image=job.image,
        test_commands=job.tests,
        diff_base=job.diff_base,
    )


START_COMMIT_MESSAGE = "Uncommitted changes of the working copy the job was started from"


def _apply_start_patch(sandbox: Sandbox, job: _Preparation) -> str:
    """The user's uncommitted changes, applied after the clone and before setup, and committed in the sandbox:
    the commit the job's diff is taken against (so the job's patch holds only its own change)."""
    applied = Workspace(sandbox).apply_start_patch(job.req.start_patch, START_COMMIT_MESSAGE)
    if not applied.ok:
        raise SandboxError(f"your uncommitted changes did not apply to commit {job.source.commit[:12]} "
                           f"({' '.join(applied.error.split())[:300]}); commit them, or run the job without them")
    return applied.summary


def _notes(fallback: str | None, sandbox) -> str | None:
    """The job card's warning: a weaker backend than configured, and/or a disk cap the engine could not enforce."""
    notes = [note for note in (fallback, sandbox.disk_note) if note]
    return "; ".join(notes) or None


def _cached_setup(repo: str, config: SandboxConfig, backend: str, source: RepoSource, commands: list[str],
                  engine: EngineSpec | None = None):
    """(cache, key, entry) of the setup cache for these setup commands on the engine; all None when it does not
    apply."""
    if backend != "docker" or not config.cache_enabled or not commands:
        return None, None, None
    key = cache_key(repo_identity(repo), source.commit, commands, _image_id(config.image, engine),
                    [name for name, _ in config.setup_secrets])
    cache = SetupCache(config, engine)
    return cache, key, cache.lookup(key)


def _with_image(config: SandboxConfig, image: str) -> SandboxConfig:
    """The job's configuration with the image it runs on (the setup cache and the warm pool key on it)."""
    return config if image == config.image else dataclasses.replace(config, image=image)


def _egress_policy(req: PrepareRequest, config: SandboxConfig, source: RepoSource, backend: str):
    """Agent-phase internet: the settings, then the repository's .assistant/config.toml (read from the mirror,
    as committed), then the job request; off unless one of them asks for an allowlist."""
    from ..egress import EgressPolicyError, resolve_policy, spec_from_repo_config, spec_from_request

    text = source.read(REPO_CONFIG)
    try:
        repo_layer = spec_from_repo_config(tomllib.loads(text) if text else None)
        return resolve_policy(config.egress_settings, repo_layer, spec_from_request(req.agent_internet),
                              backend=backend)
    except tomllib.TOMLDecodeError as exc:
        raise SandboxError(f"the repository's {REPO_CONFIG} is not valid TOML ({exc}); fix it or remove it") from None
    except EgressPolicyError as exc:
        raise SandboxError(str(exc)) from None


def _early_start(req: PrepareRequest, config: SandboxConfig, backend: str, start: SandboxStarter,
                 on_sandbox: Callable[[Sandbox], None]) -> "_Starting | None":
    """When the request names its setup (so no file of the repository decides it) and no setup cache will be
    looked up, the container can start while the host still fetches the repository: most of a cold start."""
    if req.setup is None:
        return None
    planned = [command for command in req.setup if command.strip()]
    if backend == "docker" and config.cache_enabled and planned:
        return None
    return _Starting(start, on_sandbox, job_id=req.job_id, config=config, image=config.image, network=bool(planned))


class _Starting:
    """A sandbox starting on the start pool: taken with result(), or abandoned (the repository's files called for
    another image, or the preparation failed). An abandoned one is never announced to on_sandbox after that, and
    is closed as soon as it has started, on another thread: whoever abandons it does not wait for the start or the
    close (a container's removal can take a second or more), and the close happens however the job goes on or
    ends. Were the process to die first, its container stops with the attach connection (StdinOnce) and the
    server's orphan sweep removes it."""

    def __init__(self, start: SandboxStarter, on_sandbox: Callable[[Sandbox], None], **kwargs):
        self._lock = threading.Lock()
        self._abandoned = False
        self._future = _start_pool.submit(self._run, start, on_sandbox, kwargs)

    def _run(self, start: SandboxStarter, on_sandbox: Callable[[Sandbox], None], kwargs: dict) -> Sandbox:
        sandbox = start(**kwargs)
        with self._lock:  # announced before abandon() returns, or never: never after the job's own sandbox
            if not self._abandoned:
                try:
                    on_sandbox(sandbox)
                except BaseException:
                    sandbox.close()
                    raise
        return sandbox

    def result(self) -> Sandbox:
        return self._future.result()

    def abandon(self) -> None:
        """Close the sandbox once it has started (at once if it has), without waiting here."""
        with self._lock:
            self._abandoned = True
        self._future.add_done_callback(_close_abandoned)


def _close_abandoned(future) -> None:
    if future.cancelled() or future.exception() is not None:
        return  # it never started (a failed start removes its own container)
    try:
        _close_pool.submit(_close_quietly, future.result())
    except RuntimeError:  # the interpreter is shutting down: no new thread, close it here
        _close_quietly(future.result())


def _close_quietly(sandbox: Sandbox) -> None:
    try:
        sandbox.close()
    except Exception:
        log.exception("closing an abandoned sandbox")


def _start_with_repo(start: SandboxStarter, job_id: str, config: SandboxConfig, source: RepoSource, network: bool,
                     started: _Starting | None = None, on_sandbox: Callable[[Sandbox], None] = _ignore):
    """Start the sandbox (unless it is starting already) while the host makes the bundle, then clone inside the
    sandbox from it."""
    started = started or _Starting(start, on_sandbox, job_id=job_id, config=config, image=config.image,
                                   network=network)
    try:
        with source.bundle(job_id) as (bundle, ref):
            data = bundle.read_bytes()
    except BaseException:
        started.abandon()
        raise
    sandbox = started.result()
    try:
        sandbox.put_file(BUNDLE_PATH, data)
        Workspace(sandbox).clone(BUNDLE_PATH, ref, source.commit, source.branch, source.origin)
    except BaseException:
        sandbox.close()
        raise
    return sandbox


def _announcing(start: SandboxStarter, on_sandbox: Callable[[Sandbox], None]) -> SandboxStarter:
    def started(**kwargs) -> Sandbox:
        sandbox = start(**kwargs)
        try:
            on_sandbox(sandbox)
        except BaseException:
            sandbox.close()
            raise
        return sandbox
    return started


def _masker(config: SandboxConfig) -> Callable[[str], str]:
    values = sorted({value for _, value in config.setup_secrets if len(value) >= 4}, key=len, reverse=True)

    def mask(text: str) -> str:
        for value in values:
            text = text.replace(value, "***")
        return text
    return mask


def _run_setup(sandbox, commands, results, config, on_command, on_output, mask) -> tuple[str, ExecResult] | None:
    secrets = dict(config.setup_secrets)
    for command in commands:
        result = sandbox.exec(command, timeout_s=SETUP_COMMAND_TIMEOUT_S, workdir=WORKSPACE, env=secrets,
                              on_output=lambda text: on_output(mask(text)))
        result.output = mask(result.output)
        results.append(result)
        on_command(command, result)
        if not result.ok:
            if not config.allow_setup_failure:
                raise SetupFailed(command, result)
            return command, result
    return None


def _start(backend: str, *, job_id: str, config: SandboxConfig, image: str, network: bool,
           engine: EngineSpec | None = None, run: int = 1):
    if backend == "docker":
        from .docker_backend import DockerSandbox

        return DockerSandbox.start(job_id=job_id, config=config, image=image, network=network, engine=engine, run=run)
    from .local_backend import LocalSandbox

    return LocalSandbox.start(job_id=job_id, config=config, network=network)


def _online_name(backend: str) -> str:
    if backend == "docker":
        return "bridge"
    return "host network (bubblewrap --share-net)" if backend == "local" else f"{backend} network"


def _image_id(name: str, engine: EngineSpec | None = None) -> str:
    try:
        return docker_client(engine).images.get(name).id
    except SandboxError:
        raise
    except Exception:
        raise SandboxError(f"the sandbox image {name} does not exist: run `assistant sandbox build`") from None
