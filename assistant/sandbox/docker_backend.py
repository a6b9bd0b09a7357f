"""The docker backend: one hardened container per job, driven through the command server."""

from __future__ import annotations

import io
import os
import secrets
import tarfile
import threading
import time

from .base import (
    AGENT_ENV, AGENT_GID, AGENT_HOME, AGENT_UID, WORKSPACE, ExecResult, OutputCallback, SandboxConfig, SandboxError,
)
from .bootstrap import BOOTSTRAP, payload
from .channel import ChannelSandbox, CommandChannel
from .diskcap import MIB, cap_text, check_after
from .image import IMAGE_LABEL
from .engine import (DEFAULT_ENGINE, DEPLOYMENT_LABEL, JOB_LABEL, MANAGED_LABEL, OWNER_LABEL, RUN_LABEL, EngineSpec,
                     docker_client, engine_lost_message, owner_tag)
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


def _built_here(image_attrs: dict) -> bool:
    return ((image_attrs.get("Config") or {}).get("Labels") or {}).get(IMAGE_LABEL) == "1"


def _image_attrs(client, image: str) -> dict:
    import docker

    try:
        return client.api.inspect_image(image)
    except docker.errors.ImageNotFound:
        raise SandboxError(f"the sandbox image {image} does not exist: run `assistant sandbox build`") from None
    except docker.errors.APIError as exc:
        raise SandboxError(f"docker could not read the sandbox image {image}: {exc.explanation or exc}") from exc


# ---------------------------------------------------------------- the per-job disk cap (ASSISTANT_SANDBOX_DISK_MB)
# A container created with storage_opt size=… has its writable layer capped by the kernel: a btrfs quota on engines
# that scripts/ensure-docker.sh starts (btrfs storage driver), or an XFS project quota (overlay2 on xfs with pquota).
# Whether an engine can is learned once per engine and process: from its storage driver, and for good from the
# first create it refuses.
_drivers: dict = {}
QUOTA_LABEL = "assistant.disk-quota"  # engine label set by scripts/ensure-docker.sh: simple | full (btrfs quotas)
_uncapped: dict = {}   # engine key -> why it cannot cap (it refused storage_opt)
_disk_lock = threading.Lock()


def _key(engine: EngineSpec):
    """The environment's engine is whichever DOCKER_HOST names at the time."""
    return engine if engine.url else (engine, os.environ.get("DOCKER_HOST", ""))
FIX_ENGINE = ("start the engine with scripts/ensure-docker.sh, which puts its data root on a btrfs file system with "
              "quotas (an engine it started earlier keeps its old data root: stop that dockerd first)")


def _storage(client, engine: EngineSpec) -> dict:
    """The engine's storage driver and backing file system, asked once per engine."""
    with _disk_lock:
        if _key(engine) in _drivers:
            return _drivers[_key(engine)]
    info = client.info()
    status = dict((pair[0], pair[1]) for pair in info.get("DriverStatus") or [] if len(pair) == 2)
    labels = dict(label.split("=", 1) for label in info.get("Labels") or [] if "=" in label)
    found = {"driver": info.get("Driver", "?"), "backing": status.get("Backing Filesystem", ""),
             "root": info.get("DockerRootDir", ""), "quota": labels.get(QUOTA_LABEL, "")}
    with _disk_lock:
        _drivers[_key(engine)] = found
    return found


def _why_uncapped(storage: dict, engine: EngineSpec) -> str:
    on = f" on {storage['backing']}" if storage.get("backing") else ""
    return (f"{engine.describe()} stores containers with the {storage['driver']} storage driver{on} "
            f"({storage.get('root') or 'its data root'}), which cannot limit a container's size")


def _refused_storage_opt(exc) -> bool:
    text = str(getattr(exc, "explanation", "") or exc).lower()
    return "storage-opt" in text or "storage opt" in text or "storage option" in text


def _uncapped_policy(config: SandboxConfig, engine: EngineSpec, why: str) -> str:
    """Run without the cap (the note is the job card's warning) where weaker sandboxes are allowed; refuse otherwise."""
    if config.allow_weaker_fallback:
        return (f"disk not capped: {why}, so this job's writes are not limited to {cap_text(config.disk_mb)}. "
                f"Fix: {FIX_ENGINE}.")
    raise SandboxError(f"the per-job disk cap ({cap_text(config.disk_mb)}, ASSISTANT_SANDBOX_DISK_MB) cannot be "
                       f"enforced: {why}, and with several users jobs do not run uncapped. Fix: {FIX_ENGINE}; or set "
                       "ASSISTANT_SANDBOX_DISK_MB=0 (no cap) or ASSISTANT_SANDBOX_FALLBACK=allow (run with a note).")


def _disk_options(client, engine: EngineSpec, config: SandboxConfig, image_attrs: dict) -> tuple[dict | None, str | None]:
    """(storage_opt for the container, the job's "disk not capped" note)."""
    if not config.disk_mb:
        return None, None
    with _disk_lock:
        why = _uncapped.get(_key(engine))
    if why is not None:
        return None, _uncapped_policy(config, engine, why)
    storage = _storage(client, engine)
    size = config.disk_mb * MIB
    if storage["driver"] == "btrfs" and storage.get("quota") != "simple":
        # Full qgroups count the image's blocks (shared with the container's snapshot) as well as the job's;
        # simple quotas count only what the container writes.
        size += int(image_attrs.get("Size") or 0)
    return {"size": str(size)}, None


def disk_cap_status(engine: EngineSpec | None = None, image: str = "", disk_mb: int = 0) -> tuple[bool, str]:
    """(enforced, how or why not) for `assistant doctor`: a container is created with the cap (never started) and
    removed again, so the engine itself answers whether it enforces it."""
    import docker

    engine = engine or DEFAULT_ENGINE
    client = docker_client(engine)
    storage = _storage(client, engine)
    host_config = client.api.create_host_config(storage_opt={"size": str(max(disk_mb, 64) * MIB)}, network_mode="none")
    try:
        created = client.api.create_container(image, command=["true"], labels={MANAGED_LABEL: "1", OWNER_LABEL: owner_tag()},
                                              host_config=host_config)
    except docker.errors.APIError as exc:
        if _refused_storage_opt(exc):
            return False, f"{_why_uncapped(storage, engine)} (the engine said: {exc.explanation or exc})"
        raise
    client.api.remove_container(created["Id"], force=True)
    if storage["driver"] == "btrfs":
        kind = {"simple": "simple quota", "full": "qgroup quota"}.get(storage.get("quota") or "", "quota")
        how = f"a btrfs {kind} on the engine's data root"
    elif storage["driver"] == "overlay2":
        how = f"an XFS project quota on the engine's data root ({storage.get('backing') or 'xfs'})"
    else:
        how = f"the {storage['driver']} storage driver's size limit"
    return True, f"enforced by {how} ({storage.get('root')}) on {engine.describe()}"


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
        self._torn_down = threading.Event()
        self._wall_clock = threading.Timer(config.job_wall_clock_s, self._expire)
        self._wall_clock.daemon = True
        self._wall_clock.start()
        self.disk_note: str | None = None  # "disk not capped: …" when the engine could not take the job's disk cap
        self._disk_capped = False

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
        image_attrs = _image_attrs(client, image)
        spec = engine or DEFAULT_ENGINE
        storage_opt, disk_note = _disk_options(client, spec, config, image_attrs)

        def host_config(storage_opt):
            # The low-level calls skip the inspect that containers.create() makes after creating.
            return client.api.create_host_config(
                network_mode="bridge" if network else "none",
                mem_limit=f"{config.memory_mb}m",
                memswap_limit=f"{config.memory_mb}m",
                nano_cpus=int(cpus * 1e9),
                pids_limit=config.pids_limit,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                privileged=False,
                init=True,
                storage_opt=storage_opt,
            )

        def create(storage_opt):
            return client.api.create_container(
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
                host_config=host_config(storage_opt),
            )

        try:
            try:
                created = create(storage_opt)
            except docker.errors.APIError as exc:
                if not storage_opt or not _refused_storage_opt(exc):
                    raise
                # This engine cannot cap a container's disk: learned once, then the policy decides.
                why = _why_uncapped(_storage(client, spec), spec)
                with _disk_lock:
                    _uncapped[_key(spec)] = why
                storage_opt, disk_note = None, _uncapped_policy(config, spec, why)
                created = create(None)
            container = client.containers.prepare_model({"Id": created["Id"]})
        except docker.errors.ImageNotFound:
            raise SandboxError(f"the sandbox image {image} does not exist: run `assistant sandbox build`") from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"docker could not create the sandbox container: {exc.explanation or exc}") from exc
        try:
            if not _built_here(image_attrs):
                container.put_archive("/", _agent_dirs_archive())
            raw = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            transport = DockerAttachTransport(getattr(raw, "_sock", raw))
            container.start()
            transport.write(payload())
            channel = CommandChannel(transport,
                                     describe_failure=lambda: _describe_exit(container, transport, image, engine))
            sandbox = cls(container, channel, config, network, engine, job_id)
            sandbox.disk_note, sandbox._disk_capped = disk_note, bool(storage_opt)
        except Exception:
            _remove(container)
            raise
        try:
            channel.ping(timeout_s=30)
        except SandboxError:
            sandbox.close()
            raise
        return sandbox

    def exec(self, command: str, timeout_s: float = 120.0, workdir: str | None = None,
             env: dict[str, str] | None = None, on_output: OutputCallback | None = None) -> ExecResult:
        """A command; when it failed and the container is at its disk cap, the job ends (SandboxLimitReached)."""
        result = super().exec(command, timeout_s, workdir, env, on_output)
        if self._disk_capped:
            check_after(lambda probe: super(DockerSandbox, self).exec(probe, timeout_s=30), result,
                        self._config.disk_mb, full_is_cap=False)
        return result

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
