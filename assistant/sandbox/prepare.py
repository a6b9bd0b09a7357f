"""Preparing a job's sandbox: the repository in (a bundle from the host mirror), set up with network (or
restored from the setup cache), what setup changed recorded, setup's processes gone, then offline."""

from __future__ import annotations

import dataclasses
import functools
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .base import (ExecResult, PreparedSandbox, PrepareRequest, Sandbox, SandboxConfig, SandboxError, SetupFailed,
                   WORKSPACE)
from .cache import SetupCache, cache_key
from .engine import BackendChoice, EngineSpec, docker_client, resolve_backend
from .repo import RepoSource, prepare_source, repo_identity
from .image_choice import choose_image
from .setup_commands import KnownFiles, detect_test_commands, setup_commands

SETUP_COMMAND_TIMEOUT_S = 1800.0
BUNDLE_PATH = "/tmp/assistant-repo.bundle"
REPO_CONFIG = ".assistant/config.toml"
_start_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-start")


def _ignore(*_args) -> None:
    return None


# start(job_id=, config=, image=, network=) -> a started Sandbox; with a `backend` attribute naming it.
SandboxStarter = Callable[..., Sandbox]


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
    exactly this repository, commit, setup and network is taken instead of a new one."""
    if start is not None or engine is not None:
        warm = None  # a pool engine or the caller's own sandbox: the warm pool readies on the local engine only
    timings: dict[str, float] = {}
    clock = time.monotonic()
    if start is not None:
        choice = BackendChoice(getattr(start, "backend", "custom"), "started by the caller")
    elif engine is not None:
        choice = BackendChoice("docker", engine.describe())
        start = functools.partial(_start, "docker", engine=engine, run=req.run)
    else:
        choice = resolve_backend(config)
        start = functools.partial(_start, choice.backend, run=req.run)
    start = _announcing(start, on_sandbox)
    on_state("preparing")
    early = None if warm is not None and warm.may_hold(req.repo) else _early_start(req, config, choice.backend, start)
    try:
        source = KnownFiles(prepare_source(req.repo, req.ref, config.data_dir))
        commands = setup_commands(source, req.setup)
        policy = _egress_policy(req, config, source, choice.backend)  # a bad policy fails before anything starts
        chosen = choose_image(config, source, backend=choice.backend, engine=engine,
                              on_log=lambda line: on_output(line + "\n"))
    except BaseException:
        if early is not None:
            _close_when_started(early)
        raise
    timings["source_s"] = time.monotonic() - clock
    base_config, config = config, _with_image(config, chosen.image)
    if early is not None and config is not base_config:  # started on the default image, before the files were read
        _close_when_started(early)
        early = None
    tests = detect_test_commands(source)

    cache, key, entry = _cached_setup(req.repo, config, choice.backend, source, commands, engine)
    if warm is not None:
        clock = time.monotonic()
        ready = warm.take(config, choice.backend, source, commands, policy, key)
        if ready is not None:
            if early is not None:
                _close_when_started(early)
            try:
                on_sandbox(ready.sandbox)
            except BaseException:
                ready.sandbox.close()
                raise
            return dataclasses.replace(ready, egress_policy=policy, image=chosen.image, test_commands=tests,
                                       timings={**timings, "warm_take_s": time.monotonic() - clock})

    sandbox = None
    results: list[ExecResult] = []
    failed: tuple[str, ExecResult] | None = None
    setup_changes: dict = {"created": [], "modified": {}}
    mask = _masker(config)
    try:
        clock = time.monotonic()
        if entry is not None:
            maintenance = [config.maintenance_command] if config.maintenance_command else []
            sandbox = start(job_id=req.job_id, config=config, image=entry.image, network=bool(maintenance))
            timings["start_s"] = time.monotonic() - clock
            setup_changes = entry.setup_changes
            if maintenance:
                on_state("setting_up")
                failed = _run_setup(sandbox, maintenance, results, config, on_command, on_output, mask)
                setup_network = f"{_online_name(choice.backend)} (setup cache hit: setup skipped, maintenance ran)"
            else:
                setup_network = "none (setup cache hit: setup skipped)"
        else:
            sandbox = _start_with_repo(start, req.job_id, config, source, network=bool(commands), started=early)
            timings["start_s"] = time.monotonic() - clock
            if commands:
                on_state("setting_up")
                clock = time.monotonic()
                failed = _run_setup(sandbox, commands, results, config, on_command, on_output, mask)
                timings["setup_s"] = time.monotonic() - clock
                setup_network = _online_name(choice.backend)
                setup_changes = sandbox.call("snapshot", base=source.commit)
                if failed is None and cache is not None and key is not None:
                    clock = time.monotonic()
                    cache.store(key, sandbox, setup_changes)
                    timings["cache_store_s"] = time.monotonic() - clock
            else:
                setup_network = "none (no setup commands)"
        clock = time.monotonic()
        if results or config.setup_secrets:
            sandbox.reap()  # what setup left running keeps its environment (and any secret) otherwise
        agent_network = (sandbox.confine_to_proxy(policy, base_config) if policy.allowlist else sandbox.go_offline())
        timings["offline_s"] = time.monotonic() - clock
    except BaseException:
        if sandbox is not None:
            sandbox.close()
        raise
    return PreparedSandbox(
        sandbox=sandbox,
        base_commit=source.commit,
        setup_commands=commands,
        setup_results=results,
        cache_hit=entry is not None,
        setup_network=setup_network,
        agent_network=agent_network,
        failed_setup=failed,
        timings=timings,
        setup_changes=setup_changes,
        backend=choice.backend,
        backend_fallback=choice.fallback,
        egress_policy=policy,
        image=chosen.image,
        test_commands=tests,
    )


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


def _early_start(req: PrepareRequest, config: SandboxConfig, backend: str, start: SandboxStarter):
    """When the request names its setup (so no file of the repository decides it) and no setup cache will be
    looked up, the container can start while the host still fetches the repository: most of a cold start."""
    if req.setup is None:
        return None
    planned = [command for command in req.setup if command.strip()]
    if backend == "docker" and config.cache_enabled and planned:
        return None
    return _start_pool.submit(start, job_id=req.job_id, config=config, image=config.image, network=bool(planned))


def _start_with_repo(start: SandboxStarter, job_id: str, config: SandboxConfig, source: RepoSource, network: bool,
                     started=None):
    """Start the sandbox (unless it is starting already) while the host makes the bundle, then clone inside the
    sandbox from it."""
    started = started or _start_pool.submit(start, job_id=job_id, config=config, image=config.image, network=network)
    try:
        with source.bundle(job_id) as (bundle, ref):
            data = bundle.read_bytes()
    except BaseException:
        _close_when_started(started)
        raise
    sandbox = started.result()
    try:
        sandbox.put_file(BUNDLE_PATH, data)
        sandbox.call("clone", bundle=BUNDLE_PATH, ref=ref, commit=source.commit, branch=source.branch,
                     origin=source.origin)
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


def _close_when_started(started) -> None:
    try:
        started.result().close()
    except Exception:
        pass


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
