"""The docker backend: one hardened container per job, driven through the command server."""

from __future__ import annotations

import io
import os
import secrets
import tarfile
import threading
import time

from .base import (
    AGENT_ENV, AGENT_GID, AGENT_HOME, AGENT_UID, WORKSPACE, SandboxConfig, SandboxError,
)
from .bootstrap import BOOTSTRAP, payload
from .channel import ChannelSandbox, CommandChannel
from .image import IMAGE_LABEL
from .engine import (DEPLOYMENT_LABEL, JOB_LABEL, MANAGED_LABEL, OWNER_LABEL, RUN_LABEL, EngineSpec, docker_client,
                     engine_lost_message, owner_tag)
from .transports import DockerAttachTransport

OFFLINE = "none (verified: lo only)"


def _agent_dirs_archive() -> bytes:
    """An agent home and an empty workspace for images that were not built here and may lack them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in (AGENT_HOME, WORKSPACE):
            info = tarfile.TarInfo(directory.lstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.uid, info.gid = AGENT_UID, AGENT_GID
            tar.addfile(info)
    return buffer.getvalue()


def _built_here(client, image: str) -> bool:
    try:
        labels = client.images.get(image).labels or {}
    except Exception:
        return False
    return labels.get(IMAGE_LABEL) == "1"


class DockerSandbox(ChannelSandbox):
    backend = "docker"

    def __init__(self, container, channel: CommandChannel, config: SandboxConfig, network: bool,
                 engine: EngineSpec | None = None, job_id: str = ""):
        self.container = container
        self.engine = engine
        self._job_id = job_id
        self._online = network
        self._channel = channel
        self._config = config
        self._deadline = time.monotonic() + config.job_wall_clock_s
        self._expired = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._wall_clock = threading.Timer(config.job_wall_clock_s, self._expire)
        self._wall_clock.daemon = True
        self._wall_clock.start()

    @property
    def placement(self) -> tuple[str, str] | None:
        container = getattr(self.container, "id", None)
        return (self.engine.name if self.engine is not None else "default", container) if container else None

    @classmethod
    def start(cls, *, job_id: str, config: SandboxConfig, image: str, network: bool,
              engine: EngineSpec | None = None, run: int = 1) -> "DockerSandbox":
        """A container whose workspace lives in its own file system (no host directory is mounted), so the
        host never reads or writes what the job wrote, and the engine may as well be on another host.
        `engine` picks one of a pool (the environment's engine by default); `run` is the job's fence, labelled
        on the container so a sweep can tell a retried job's old container from its current one."""
        import docker

        client = docker_client(engine)
        cpus = min(float(config.cpus), float(os.cpu_count() or 1))
        try:
            # The low-level calls skip the inspect that containers.create() makes after creating.
            host_config = client.api.create_host_config(
                network_mode="bridge" if network else "none",
                mem_limit=f"{config.memory_mb}m",
                memswap_limit=f"{config.memory_mb}m",
                nano_cpus=int(cpus * 1e9),
                pids_limit=config.pids_limit,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                privileged=False,
                init=True,
            )
            created = client.api.create_container(
                image,
                command=["python3", "-c", BOOTSTRAP],

                name=f"assistant-{_safe(job_id)}-{secrets.token_hex(3)}",
                user=f"{AGENT_UID}:{AGENT_GID}",
                working_dir=WORKSPACE,
                environment=AGENT_ENV,
                stdin_open=True,
                tty=False,
                # detach=False makes the SDK set StdinOnce: when our attach connection closes (however this
                # process dies), the server's stdin closes, it kills what it runs and exits, and the container
                # stops — no orphan outlives its driver.
                detach=False,
                hostname="sandbox",
                labels={MANAGED_LABEL: "1", JOB_LABEL: job_id, OWNER_LABEL: owner_tag(), RUN_LABEL: str(run),
                        **({DEPLOYMENT_LABEL: config.deployment} if config.deployment else {})},
                host_config=host_config,
            )
            container = client.containers.prepare_model({"Id": created["Id"]})
        except docker.errors.ImageNotFound:
            raise SandboxError(f"the sandbox image {image} does not exist: run `assistant sandbox build`") from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"docker could not create the sandbox container: {exc.explanation or exc}") from exc
        try:
            if not _built_here(client, image):
                container.put_archive("/", _agent_dirs_archive())
            raw = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            transport = DockerAttachTransport(getattr(raw, "_sock", raw))
            container.start()
            transport.write(payload())
            channel = CommandChannel(transport,
                                     describe_failure=lambda: _describe_exit(container, transport, image, engine))
            sandbox = cls(container, channel, config, network, engine, job_id)
        except Exception:
            _remove(container)
            raise
        try:
            channel.ping(timeout_s=30)
        except SandboxError:
            sandbox.close()
            raise
        return sandbox


    def go_offline(self) -> str:
        """Disconnect every network, then prove from inside that only loopback is left."""
        if self._online:
            client = docker_client(self.engine)
            self.container.reload()
            for name in list(self.container.attrs["NetworkSettings"].get("Networks") or {}):
                client.networks.get(name).disconnect(self.container, force=True)
            self._online = False
        interfaces = self.network_interfaces()
        if interfaces != ["lo"]:
            raise SandboxError(f"the sandbox still has network interfaces {interfaces} after the cut; refusing to go on")
        return OFFLINE

    def confine_to_proxy(self, policy, config: SandboxConfig) -> str:
        """Agent internet by allowlist: the container leaves every network for the job's internal one, whose only
        way out is its own filtering proxy; proven from inside before the agent's first step."""
        from ..egress import EgressGateway

        handle = EgressGateway(config.egress_image, config.image, engine=self.engine).start(policy, self._job_id)
        try:
            handle.attach(self.container)
            self._online = False
            self._extra_env = handle.proxy_env()
            handle.verify(lambda command: self.exec(command, timeout_s=60).output)
        except BaseException:
            handle.close()
            raise
        self.egress = handle
        return f"the job's egress proxy only — {policy.describe()}"

    def commit(self, repository: str, tag: str, labels: dict[str, str]) -> str:
        image = self.container.commit(repository=repository, tag=tag, changes=[f'LABEL {k}="{v}"' for k, v in labels.items()])
        return image.id

    def _teardown(self) -> None:
        self._channel.close()
        _remove(self.container)
        if self.egress is not None:
            self.egress.close()  # the proxy and the job's network; its records stay readable


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in job_id)[:40] or "job"


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass  # already gone


def _describe_exit(container, transport: DockerAttachTransport, image: str, engine: EngineSpec | None) -> str:
    import docker

    try:
        container.reload()
        state = container.attrs.get("State", {})
    except docker.errors.NotFound:
        return "The sandbox container no longer exists (removed by someone else)."
    except Exception as exc:
        return engine_lost_message(exc, engine)
    if state.get("Running"):
        return ""
    stderr = "\n".join(transport.stderr_tail)
    hint = ""
    if "python3" in stderr and ("not found" in stderr or "no such file" in stderr.lower()):
        hint = f" The image {image} needs python3 for the command server."
    if state.get("OOMKilled"):
        hint += " It ran out of memory (raise memory_mb)."
    return f"The container exited with code {state.get('ExitCode')}.{hint} {stderr[-600:]}".strip()
