"""Finding the Docker engine, choosing a backend, and removing containers a crashed server left behind."""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .base import SandboxConfig, SandboxError
from ..procs import process_tag, tag_alive

MANAGED_LABEL = "assistant.managed"
JOB_LABEL = "assistant.job"
OWNER_LABEL = "assistant.owner"  # "<boot id>:<pid>" of the server process that created the container

ENSURE_DOCKER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-docker.sh"

_client = None
_client_lock = threading.Lock()


def docker_client():
    """A shared client; raises SandboxError with what to do when no engine answers."""
    global _client
    with _client_lock:
        if _client is not None:
            return _client
        try:
            import docker
        except ImportError as exc:
            raise SandboxError("the docker Python package is not installed: pip install docker") from exc
        try:
            client = docker.from_env(timeout=120)
            client.ping()
        except Exception as exc:
            raise SandboxError(
                f"no Docker engine answers ({_short(exc)}). Start one with scripts/ensure-docker.sh "
                "(or `sudo dockerd &`), or use the local backend (bubblewrap)."
            ) from exc
        _client = client
        return client


def engine_lost_message(exc: BaseException) -> str:
    return (f"the Docker engine stopped answering ({_short(exc)}). Start it again with scripts/ensure-docker.sh "
            "(or `sudo dockerd &`), then retry the job.")


def forget_client() -> None:
    """Drop the cached client, so the next call finds out afresh whether an engine answers."""
    global _client
    with _client_lock:
        _client = None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def docker_status() -> tuple[bool, str]:
    try:
        client = docker_client()
        version = client.version()
    except SandboxError as exc:
        return False, str(exc)
    except Exception as exc:
        forget_client()  # an engine that died since: the next look must ping afresh
        return False, f"the Docker engine did not answer: {_short(exc)}"
    return True, f"engine {version.get('Version', '?')} at {client.api.base_url}"


def ensure_docker() -> None:
    """Start an engine with the project's script when none answers (installs docker.io if needed)."""
    if docker_status()[0]:
        return
    if not ENSURE_DOCKER_SCRIPT.exists() or not shutil.which("bash"):
        raise SandboxError("no Docker engine answers; start dockerd (scripts/ensure-docker.sh does it)")
    completed = subprocess.run(["bash", str(ENSURE_DOCKER_SCRIPT)], capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        raise SandboxError(f"could not start a Docker engine: {completed.stderr.strip()[-500:]}")
    forget_client()
    if not docker_status()[0]:
        raise SandboxError("dockerd was started but does not answer; see /var/log/dockerd.log")


def bwrap_status() -> tuple[bool, str]:
    path = shutil.which("bwrap")
    if not path:
        return False, "bubblewrap is not installed: apt-get install bubblewrap"
    return True, f"bubblewrap at {path}"


@dataclass(frozen=True)
class BackendChoice:
    backend: str                   # "docker" | "local"
    detail: str
    fallback: str | None = None    # why a weaker backend was chosen than configured ("auto" without an engine)


def resolve_backend(config: SandboxConfig) -> BackendChoice:
    """The backend for one job, resolved when it starts and recorded on it.

    "auto" prefers Docker; moving to bubblewrap (weaker limits: no CPU cap, memory by rlimit) is a fallback
    the caller must announce, and one that config.allow_weaker_fallback can forbid.
    """
    if config.backend == "docker":
        ok, detail = docker_status()
        if not ok:
            raise SandboxError(detail)
        return BackendChoice("docker", detail)
    if config.backend == "local":
        return BackendChoice("local", bwrap_status()[1])
    if config.backend != "auto":
        raise SandboxError(f"unknown sandbox backend {config.backend!r}: use docker, local or auto")
    ok, detail = docker_status()
    if ok:
        return BackendChoice("docker", detail)
    if not config.allow_weaker_fallback:
        raise SandboxError(f"{detail} The bubblewrap fallback is turned off (ASSISTANT_SANDBOX_FALLBACK), "
                           "so the job did not start; start the engine and retry.")
    return BackendChoice("local", bwrap_status()[1],
                         fallback=f"no Docker engine answered ({detail.rstrip('.')}); this job runs in the bubblewrap "
                                  "sandbox, whose limits are weaker (no CPU cap, memory by rlimit)")


def owner_tag() -> str:
    return process_tag()


def sweep_orphans() -> int:
    """Remove managed containers whose server process is gone; returns how many were removed."""
    if not docker_status()[0]:
        return 0
    client = docker_client()
    removed = 0
    for container in client.containers.list(all=True, filters={"label": f"{MANAGED_LABEL}=1"}):
        if tag_alive(container.labels.get(OWNER_LABEL)):
            continue
        try:
            container.remove(force=True)
            removed += 1
        except Exception:
            pass  # already being removed by someone else
    return removed
