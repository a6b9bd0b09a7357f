"""Preparing a job's sandbox: clone, start, set up with network (or restore from the cache), then go offline."""

from __future__ import annotations

import shutil
import time
from typing import Callable

from .base import ExecResult, PreparedSandbox, PrepareRequest, SandboxConfig, SandboxError, SetupFailed, WORKSPACE
from .cache import SetupCache, cache_key, restore_setup_files
from .engine import docker_client, resolve_backend
from .repo import clone_into, repo_identity
from .setup_commands import setup_commands

SETUP_COMMAND_TIMEOUT_S = 1800.0


def _ignore(*_args) -> None:
    return None


def prepare(
    req: PrepareRequest,
    config: SandboxConfig,
    *,
    on_state: Callable[[str], None] = _ignore,
    on_command: Callable[[str, ExecResult], None] = _ignore,
    on_output: Callable[[str], None] = _ignore,
) -> PreparedSandbox:
    timings: dict[str, float] = {}
    clock = time.monotonic()
    backend, backend_detail = resolve_backend(config)
    on_state("preparing")
    workspace = config.workspaces_dir / req.job_id
    base_commit = clone_into(req.repo, req.ref, workspace)
    commands = setup_commands(workspace, req.setup)
    timings["clone_s"] = time.monotonic() - clock

    cache, key, entry = None, None, None
    if backend == "docker" and config.cache_enabled and commands:
        key = cache_key(repo_identity(req.repo), base_commit, commands, _image_id(config.image))
        cache = SetupCache(config)
        entry = cache.lookup(key)

    sandbox = None
    results: list[ExecResult] = []
    failed: tuple[str, ExecResult] | None = None
    try:
        clock = time.monotonic()
        if entry is not None:
            restore_setup_files(entry, workspace)
            maintenance = [config.maintenance_command] if config.maintenance_command else []
            sandbox = _start(backend, req.job_id, workspace, config, entry.image, network=bool(maintenance))
            timings["start_s"] = time.monotonic() - clock
            if maintenance:
                on_state("setting_up")
                failed = _run_setup(sandbox, maintenance, results, config, on_command, on_output)
                setup_network = f"{_online_name(backend)} (setup cache hit: setup skipped, maintenance ran)"
            else:
                setup_network = "none (setup cache hit: setup skipped)"
        else:
            sandbox = _start(backend, req.job_id, workspace, config, config.image, network=bool(commands))
            timings["start_s"] = time.monotonic() - clock
            if commands:
                on_state("setting_up")
                clock = time.monotonic()
                failed = _run_setup(sandbox, commands, results, config, on_command, on_output)
                timings["setup_s"] = time.monotonic() - clock
                setup_network = _online_name(backend)
                if failed is None and cache is not None and key is not None:
                    clock = time.monotonic()
                    cache.store(key, sandbox, workspace)
                    timings["cache_store_s"] = time.monotonic() - clock
            else:
                setup_network = "none (no setup commands)"
        clock = time.monotonic()
        agent_network = sandbox.go_offline()
        timings["offline_s"] = time.monotonic() - clock
    except BaseException:
        if sandbox is not None:
            sandbox.close()
        raise
    return PreparedSandbox(
        sandbox=sandbox,
        base_commit=base_commit,
        setup_commands=commands,
        setup_results=results,
        cache_hit=entry is not None,
        setup_network=setup_network,
        agent_network=agent_network,
        failed_setup=failed,
        timings=timings,
    )


def _run_setup(sandbox, commands, results, config, on_command, on_output) -> tuple[str, ExecResult] | None:
    for command in commands:
        result = sandbox.exec(command, timeout_s=SETUP_COMMAND_TIMEOUT_S, workdir=WORKSPACE, on_output=on_output)
        results.append(result)
        on_command(command, result)
        if not result.ok:
            if not config.allow_setup_failure:
                raise SetupFailed(command, result)
            return command, result
    return None


def _start(backend: str, job_id: str, workspace, config: SandboxConfig, image: str, network: bool):
    if backend == "docker":
        from .docker_backend import DockerSandbox

        return DockerSandbox.start(job_id=job_id, workspace=workspace, config=config, image=image, network=network)
    from .local_backend import LocalSandbox

    return LocalSandbox.start(job_id=job_id, workspace=workspace, config=config, network=network)


def _online_name(backend: str) -> str:
    return "bridge" if backend == "docker" else "host network (bubblewrap --share-net)"


def _image_id(name: str) -> str:
    try:
        return docker_client().images.get(name).id
    except SandboxError:
        raise
    except Exception:
        raise SandboxError(f"the sandbox image {name} does not exist: run `assistant sandbox build`") from None


def discard_job_files(config: SandboxConfig, job_id: str) -> None:
    """Remove a finished job's workspace and (local backend) home, once its diff has been stored."""
    for directory in (config.workspaces_dir / job_id, config.homes_dir / job_id):
        shutil.rmtree(directory, ignore_errors=True)
