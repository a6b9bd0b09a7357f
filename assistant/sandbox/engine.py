"""Finding the Docker engine, choosing a backend, and removing containers a crashed server left behind."""

from __future__ import annotations

import functools
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

RUN_LABEL = "assistant.run"      # the job's fence when the container was made: which run of the job it belongs to
DEPLOYMENT_LABEL = "assistant.deployment"  # which database's jobs (engines may serve several deployments)
ENGINE_TIMEOUT_S = 120
PING_TIMEOUT_S = 5


@dataclass(frozen=True)
class EngineSpec:
    """One Docker engine of a pool: a name (recorded on jobs), where it answers, how many sandboxes it takes.
    url "" is the environment's engine (DOCKER_HOST, else the local socket); tls_dir holds ca.pem, cert.pem
    and key.pem for a tcp:// engine (DOCKER_CERT_PATH's layout)."""
    name: str = "default"
    url: str = ""
    capacity: int = 0               # 0: no limit of its own (the worker's concurrency limits it)
    tls_dir: str | None = None

    def describe(self) -> str:
        return f"engine {self.name}" + (f" ({self.url})" if self.url else "")


DEFAULT_ENGINE = EngineSpec()

_clients: dict[tuple[EngineSpec, int], object] = {}
_client_lock = threading.Lock()


def _connect(engine: EngineSpec, timeout: int):
    import docker

    if not engine.url:
        return docker.from_env(timeout=timeout)
    if engine.url.startswith("ssh://"):
        return docker.DockerClient(base_url=engine.url, use_ssh_client=True, timeout=timeout)
    if engine.url.startswith("tcp://"):
        if not engine.tls_dir:
            raise SandboxError(f"{engine.describe()} has no TLS client certificates: a tcp:// engine without TLS "
                               "gives root on its host to anyone who reaches the port. Put ca.pem, cert.pem and "
                               f"key.pem in ASSISTANT_DOCKER_CERT_DIR/{engine.name}/ (or DOCKER_CERT_PATH).")
        tls_dir = Path(engine.tls_dir)
        tls = docker.tls.TLSConfig(client_cert=(str(tls_dir / "cert.pem"), str(tls_dir / "key.pem")),
                                   ca_cert=str(tls_dir / "ca.pem"), verify=True)
        client = docker.DockerClient.__new__(docker.DockerClient)
        client.api = _engine_api_client()(base_url=engine.url.replace("tcp://", "https://", 1), tls=tls, timeout=timeout)
        return client
    return docker.DockerClient(base_url=engine.url, timeout=timeout)


@functools.lru_cache(maxsize=1)
def _engine_api_client():
    import docker

    class EngineApiClient(docker.APIClient):
        """Trusts the engine's own CA only. requests would otherwise verify with REQUESTS_CA_BUNDLE from the
        environment (set on many corporate machines) instead of the CA given, and send the engine's traffic to
        a proxy named there."""
        trust_env = property(lambda self: False, lambda self, value: None)

    return EngineApiClient


def docker_client(engine: EngineSpec | None = None, *, timeout: int = ENGINE_TIMEOUT_S):
    """A client of one engine (the environment's by default), made once and shared; raises SandboxError with
    what to do when the engine does not answer."""
    engine = engine or DEFAULT_ENGINE
    key = (engine, timeout)
    with _client_lock:
        if key in _clients:
            return _clients[key]
        try:
            import docker  # noqa: F401
        except ImportError as exc:
            raise SandboxError("the docker Python package is not installed: pip install docker") from exc
        try:
            client = _connect(engine, timeout)
            client.ping()
        except SandboxError:
            raise
        except Exception as exc:
            if engine.url:
                raise SandboxError(f"{engine.describe()} does not answer ({_short(exc)}). Start it (on this machine: "
                                   f"scripts/ensure-docker.sh {engine.name}) or take it out of ASSISTANT_DOCKER_HOSTS.") from exc
            raise SandboxError(
                f"no Docker engine answers ({_short(exc)}). Start one with scripts/ensure-docker.sh "
                "(or `sudo dockerd &`), or use the local backend (bubblewrap)."
            ) from exc
        _clients[key] = client
        return client


def engine_lost_message(exc: BaseException, engine: EngineSpec | None = None) -> str:
    if engine is not None and engine.url:
        return (f"the sandbox {engine.describe()} stopped answering ({_short(exc)}). Start it again "
                f"(scripts/ensure-docker.sh {engine.name} on its host), then retry the job.")
    return (f"the Docker engine stopped answering ({_short(exc)}). Start it again with scripts/ensure-docker.sh "
            "(or `sudo dockerd &`), then retry the job.")


def forget_client(engine: EngineSpec | None = None) -> None:
    """Drop an engine's cached clients (all engines' by default), so the next call finds out afresh whether
    it answers."""
    with _client_lock:
        for key in [k for k in _clients if engine is None or k[0] == engine]:
            del _clients[key]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def docker_status(engine: EngineSpec | None = None) -> tuple[bool, str]:
    try:
        client = docker_client(engine)
        version = client.version()
    except SandboxError as exc:
        return False, str(exc)
    except Exception as exc:
        forget_client(engine)  # an engine that died since: the next look must ping afresh
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
    for container in client.containers.list(ignore_removed=True, all=True, filters={"label": f"{MANAGED_LABEL}=1"}):
        if tag_alive(container.labels.get(OWNER_LABEL)):
            continue
        try:
            container.remove(force=True)
            removed += 1
        except Exception:
            pass  # already being removed by someone else
    return removed
