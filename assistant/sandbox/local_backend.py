"""The local backend: bubblewrap namespaces instead of a container, for machines without a Docker engine.

The command server runs inside one bwrap per phase: one that shares the host's network
for setup, then a fresh one with `--unshare-net` for the agent. Background processes
therefore live on between commands as they do in a container, and a timeout or the
end of the job takes the whole pid namespace down with it.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path

from .base import (
    AGENT_ENV, AGENT_GID, AGENT_HOME, AGENT_UID, WORKSPACE, SandboxConfig, SandboxError,
)
from .base import ExecResult, OutputCallback
from .channel import ChannelSandbox, CommandChannel
from .diskcap import cap_text, check_after
from .image import host_ca_bundle
from .bootstrap import BOOTSTRAP, payload
from .transports import ProcessTransport

CA_PATH = "/opt/assistant/ca-bundle.crt"
OFFLINE = "none (verified: lo only; bubblewrap --unshare-net)"
# Only what programs need from the host's /etc; secrets, package-manager and user config stay out.
ETC_ENTRIES = (
    "alternatives", "ssl", "ca-certificates", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf",
    "hosts", "resolv.conf", "host.conf", "gai.conf", "localtime", "timezone", "mime.types", "protocols",
    "services", "python3", "python3.11", "bash.bashrc", "profile", "inputrc", "terminfo", "debian_version",
    "os-release", "magic", "manpath.config",
)
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class LocalSandbox(ChannelSandbox):
    backend = "local"

    def __init__(self, *, job_id: str, workspace: Path, home: Path, config: SandboxConfig,
                 disk: "LoopDisk | None" = None):
        self._workspace = workspace
        self.home = home
        self._disk = disk  # the job's capped file system (workspace, home, /tmp, /var/tmp), when a cap is set
        self.disk_note: str | None = None
        self._job_id = job_id
        self._config = config
        self._process: subprocess.Popen | None = None
        self._channel: CommandChannel | None = None
        self._deadline = time.monotonic() + config.job_wall_clock_s
        self._expired = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._torn_down = threading.Event()
        self._etc = config.homes_dir / f".{job_id}-etc"
        self._wall_clock = threading.Timer(config.job_wall_clock_s, self._expire)
        self._wall_clock.daemon = True

    @classmethod
    def start(cls, *, job_id: str, config: SandboxConfig, network: bool) -> "LocalSandbox":
        """bubblewrap needs host directories to bind: an empty workspace and home, made here and given to the
        sandbox user before any untrusted code runs. After that the host only ever removes them (rmtree does
        not follow links); everything else happens inside, through the command server."""
        if not shutil.which("bwrap"):
            raise SandboxError("the local backend needs bubblewrap: apt-get install bubblewrap (or start a Docker engine)")
        disk = None
        if config.disk_mb:
            # Everything the job writes lives on one file system of the cap's size, so the kernel refuses the
            # write past it (ENOSPC) and the host's disk never gives more than the cap.
            disk = LoopDisk(config.data_dir / "disks" / job_id, config.disk_mb)
            disk.create()
            workspace, home = disk.root / "workspace", disk.root / "home"
        else:
            workspace, home = config.workspaces_dir / job_id, config.homes_dir / job_id
        try:
            for directory in (workspace, home) + ((disk.root / "tmp", disk.root / "var-tmp") if disk else ()):
                shutil.rmtree(directory, ignore_errors=True)  # a retried job starts clean, as a container would
                directory.mkdir(parents=True)
                _own_empty_dir(directory)
            if os.geteuid() == 0:
                _require_reachable_by_agent([workspace, home])
            sandbox = cls(job_id=job_id, workspace=workspace, home=home, config=config, disk=disk)
        except BaseException:
            if disk is not None:
                disk.remove()
            raise
        try:
            sandbox._write_identity()
            sandbox._launch(network)
        except BaseException:
            sandbox.close()
            raise
        sandbox._wall_clock.start()
        return sandbox

    def exec(self, command: str, timeout_s: float = 120.0, workdir: str | None = None,
             env: dict[str, str] | None = None, on_output: OutputCallback | None = None) -> ExecResult:
        """A command; when it failed and the job's file system is full (its cap), the job ends (SandboxLimitReached)."""
        result = super().exec(command, timeout_s, workdir, env, on_output)
        if self._disk is not None:
            check_after(lambda probe: super(LocalSandbox, self).exec(probe, timeout_s=30), result,
                        self._config.disk_mb, full_is_cap=True)
        return result

    def _write_identity(self) -> None:
        self._etc.mkdir(parents=True, exist_ok=True)
        (self._etc / "passwd").write_text(
            f"root:x:0:0:root:/root:/usr/sbin/nologin\nagent:x:{AGENT_UID}:{AGENT_GID}:agent:{AGENT_HOME}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (self._etc / "group").write_text(f"root:x:0:\nagent:x:{AGENT_GID}:\nnogroup:x:65534:\n")
        (self._etc / "hostname").write_text("sandbox\n")

    def _bwrap_argv(self, network: bool) -> list[str]:
        argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--unshare-user",
                "--uid", str(AGENT_UID), "--gid", str(AGENT_GID), "--hostname", "sandbox"]
        if network:
            argv.append("--share-net")
        argv += ["--ro-bind", "/usr", "/usr"]
        for name in TOP_LEVEL:
            host = Path("/") / name
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), f"/{name}"]
        for name in ETC_ENTRIES:
            if (Path("/etc") / name).exists():
                argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for name in ("passwd", "group", "hostname"):
            argv += ["--ro-bind", str(self._etc / name), f"/etc/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        if self._disk is not None:  # /tmp and /var/tmp count against the cap too (a tmpfs would take memory instead)
            argv += ["--bind", str(self._disk.root / "tmp"), "/tmp", "--bind", str(self._disk.root / "var-tmp"), "/var/tmp"]
        else:
            argv += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        argv += ["--bind", str(self._workspace.resolve()), WORKSPACE,
                 "--bind", str(self.home.resolve()), AGENT_HOME,
                 "--chdir", WORKSPACE, "--clearenv"]
        env = dict(AGENT_ENV)
        bundle = host_ca_bundle(self._config.ca_bundle)
        if bundle is not None:
            argv += ["--ro-bind", str(bundle.resolve()), CA_PATH]
            env.update({var: CA_PATH for var in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")})
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += ["--", "/usr/bin/python3", "-c", BOOTSTRAP]
        return argv

    def _launch(self, network: bool) -> None:
        limits = _limits(self._config)
        as_agent = {"user": AGENT_UID, "group": AGENT_GID, "extra_groups": []} if os.geteuid() == 0 else {}
        try:
            process = subprocess.Popen(
                self._bwrap_argv(network), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=limits, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, **as_agent,
            )
        except OSError as exc:
            raise SandboxError(f"could not start bubblewrap: {exc}") from exc
        self._process = process
        transport = ProcessTransport(process)
        transport.write(payload())
        self._channel = CommandChannel(transport, describe_failure=self._describe_exit)
        try:
            self._channel.ping(timeout_s=15)
        except SandboxError:
            self.close()
            raise

    def _describe_exit(self) -> str:
        process = self._process
        if process is None:
            return ""
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return ""
        stderr = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
        return f"bubblewrap exited with code {process.returncode}: {stderr.strip()[-600:]}"


    def go_offline(self) -> str:
        """Replace the setup namespace by one without network, then prove only loopback is left."""
        self._stop_server()
        self._launch(network=False)
        interfaces = self.network_interfaces()
        if interfaces != ["lo"]:
            raise SandboxError(f"the sandbox still has network interfaces {interfaces} after the cut; refusing to go on")
        return OFFLINE

    def _stop_server(self) -> None:
        channel, process = self._channel, self._process
        self._channel, self._process = None, None
        if channel is not None:
            channel.close()  # the server kills what it runs when its stdin closes
        if process is not None:
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()

    def _teardown(self) -> None:
        self._stop_server()
        # rmtree removes links without following them; nothing here reads what the job wrote.
        if self._disk is not None:
            shutil.rmtree(self._etc, ignore_errors=True)
            self._disk.remove()  # the job's whole file system goes at once: unmounted, its image deleted
            return
        for directory in (self._etc, self._workspace, self.home):
            shutil.rmtree(directory, ignore_errors=True)


class LoopDisk:
    """A job's own file system of `size_mb`: a sparse image file, formatted ext4 and mounted through a loop device
    at `root` (nosuid, nodev). Mounting needs root; without it a cap cannot be enforced and the job is refused."""

    def __init__(self, root: Path, size_mb: int):
        self.root = root
        self.image = root.with_name(root.name + ".img")
        self.size_mb = size_mb

    def create(self) -> None:
        if os.geteuid() != 0:
            raise SandboxError(
                f"the disk cap ({cap_text(self.size_mb)} per job, ASSISTANT_SANDBOX_DISK_MB) cannot be enforced by the "
                "bubblewrap backend without root: it gives each job a loop-mounted file system of that size. Run the "
                "server as root, use the Docker backend, or set ASSISTANT_SANDBOX_DISK_MB=0 (no cap).")
        for tool in ("mkfs.ext4", "mount", "umount"):
            if not shutil.which(tool):
                raise SandboxError(f"the bubblewrap backend's disk cap needs {tool}: apt-get install e2fsprogs mount")
        self.remove()  # what a crashed run of the same job left
        self.root.mkdir(parents=True)
        os.chmod(self.root.parent, 0o711)
        try:
            with open(self.image, "wb") as image:
                image.truncate(self.size_mb * 1024 * 1024)  # sparse: the host's disk is taken only as the job writes
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(self.image)], "format")
            _run(["mount", "-o", "loop,nosuid,nodev", str(self.image), str(self.root)], "mount")
            os.chmod(self.root, 0o711)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        if os.path.ismount(self.root):
            # Lazy: a process the namespace left behind (it dies with it) must not keep the mount and the image.
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
        if self.root.exists() and not os.path.ismount(self.root):
            shutil.rmtree(self.root, ignore_errors=True)
        self.image.unlink(missing_ok=True)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SandboxError(f"could not {what} the job's disk ({' '.join(argv[:2])}): {done.stderr.strip()[-300:]}")


def _own_empty_dir(path: Path) -> None:
    """The sandbox user must write its (still empty) workspace and home; a no-op unless root."""
    if os.geteuid() == 0:
        os.chown(path, AGENT_UID, AGENT_GID)


def _require_reachable_by_agent(paths: list[Path]) -> None:
    """bubblewrap runs as the sandbox user and resolves bind sources with its permissions."""
    for path in paths:
        for ancestor in [*reversed(path.resolve().parents), path.resolve()]:
            info = ancestor.stat()
            if info.st_uid == AGENT_UID or info.st_mode & 0o001:
                continue
            raise SandboxError(
                f"the local backend runs as uid {AGENT_UID}, which cannot enter {ancestor} (mode "
                f"{info.st_mode & 0o777:o}); put the data directory somewhere it can reach "
                f"(ASSISTANT_DATA_DIR=/var/lib/assistant, say) or `chmod o+x {ancestor}`"
            )


def _limits(config: SandboxConfig):
    memory = config.memory_mb * 1024 * 1024
    processes = config.pids_limit

    def apply() -> None:
        # RLIMIT_AS is the closest per-process stand-in for a memory cgroup; NPROC counts the sandbox user.
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))

    return apply
