"""The contracts of the sandbox: configuration, results, the Sandbox protocol, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

DEFAULT_IMAGE = "assistant-sandbox:latest"
AGENT_UID = 1000
AGENT_GID = 1000
AGENT_HOME = "/home/agent"
WORKSPACE = "/workspace"
# Prepended to PATH for every command so a venv created by setup wins without any shell state.
AGENT_VENV = f"{AGENT_HOME}/.venv"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_PATH = f"{AGENT_VENV}/bin:{AGENT_HOME}/.local/bin:{SYSTEM_PATH}"
# The environment of every sandbox command; an identity lets the agent commit in its workspace.
AGENT_ENV = {
    "HOME": AGENT_HOME, "PATH": AGENT_PATH, "LANG": "C.UTF-8", "USER": "agent",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
    "GIT_AUTHOR_NAME": "assistant agent", "GIT_AUTHOR_EMAIL": "agent@sandbox.invalid",
    "GIT_COMMITTER_NAME": "assistant agent", "GIT_COMMITTER_EMAIL": "agent@sandbox.invalid",
}

OutputCallback = Callable[[str], None]


@dataclass(frozen=True)
class SandboxConfig:
    data_dir: Path
    backend: str = "auto"  # "docker" | "local" | "auto" (docker if an engine answers, else local)
    image: str = DEFAULT_IMAGE
    memory_mb: int = 4096
    cpus: float = 2.0
    pids_limit: int = 512
    disk_mb: int = 0  # disk cap per job (MiB) beyond the image, enforced by the kernel; 0 = none
    job_wall_clock_s: int = 3600
    output_cap_bytes: int = 1_000_000
    ca_bundle: str | None = None  # None = SSL_CERT_FILE or the system bundle; "" = do not copy
    cache_enabled: bool = True
    cache_max_entries: int = 8
    maintenance_command: str | None = None
    allow_setup_failure: bool = False
    allow_weaker_fallback: bool = True     # "auto" may run a job on bubblewrap when no engine answers
    setup_secrets: tuple[tuple[str, str], ...] = ()  # (name, value) given to setup commands only
    diff_file_cap_bytes: int = 5_000_000   # a changed file over this is listed (size, sha256), not embedded
    diff_patch_cap_bytes: int = 20_000_000  # the whole patch stops at the last file before this
    deployment: str | None = None  # the database's deployment id, labelled on containers: sweeps touch only ours
    egress_settings: Any = None            # the settings' agent-internet layer (an egress EgressSpec)
    egress_image: str = "assistant-egress:latest"
    toolchain_images: bool = True          # a repository whose files call for Node.js, Go, … gets that toolchain image
    allowed_images: tuple[str, ...] | None = None  # images a repository may name; None: any (one user)

    @classmethod
    def from_settings(cls, settings) -> "SandboxConfig":
        """The sandbox part of the settings (assistant.config.Settings), as every command and runner reads it."""
        from ..egress import spec_from_settings

        return cls(
            data_dir=settings.data_dir, backend=settings.sandbox_backend, image=settings.sandbox_image,
            memory_mb=settings.sandbox_memory_mb, cpus=settings.sandbox_cpus, pids_limit=settings.sandbox_pids,
            disk_mb=settings.sandbox_disk_mb, job_wall_clock_s=settings.job_max_seconds,
            ca_bundle=settings.sandbox_ca_bundle,
            cache_enabled=settings.setup_cache, cache_max_entries=settings.setup_cache_size,
            maintenance_command=settings.maintenance_command, allow_setup_failure=settings.allow_setup_failure,
            allow_weaker_fallback=settings.allow_weaker_fallback, setup_secrets=settings.setup_secret_values(),
            diff_file_cap_bytes=int(settings.diff_file_cap_mb * 1e6),
            diff_patch_cap_bytes=int(settings.diff_patch_cap_mb * 1e6),
            egress_settings=spec_from_settings(settings), egress_image=settings.egress_image,
            toolchain_images=settings.sandbox_toolchain_images, allowed_images=settings.allowed_sandbox_images)

    @property
    def workspaces_dir(self) -> Path:
        return Path(self.data_dir) / "workspaces"

    @property
    def cache_dir(self) -> Path:
        return Path(self.data_dir) / "cache"

    @property
    def homes_dir(self) -> Path:
        return Path(self.data_dir) / "homes"


@dataclass
class ExecResult:
    exit_code: int | None
    output: str
    duration_s: float
    timed_out: bool = False
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@runtime_checkable
class Sandbox(Protocol):
    """One job's computer. The host reaches its workspace only through these calls: commands, workspace
    operations run inside as the sandbox user (call, which only sandbox/workspace.py names), and bytes written
    in (put_file). No host path to the workspace exists in this protocol, so a sandbox may live on another
    host's engine."""

    backend: str
    egress: Any  # the job's egress proxy (blocked_requests()) when the agent phase has internet by allowlist; else None
    disk_note: str | None  # "disk not capped: …" when the engine could not enforce the job's disk cap

    @property
    def placement(self) -> tuple[str, str] | None:
        """(engine name, container id) where the sandbox runs on a Docker engine; None for other backends."""

    def exec(
        self,
        command: str,
        timeout_s: float = 120.0,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult: ...

    def call(self, fn: str, timeout_s: float = ..., **args: Any) -> Any:
        """workspace_ops.<fn>(**args) run inside the sandbox; its result as data."""

    def put_file(self, path: str, data: bytes) -> None: ...

    def reap(self) -> int: ...

    def interrupt(self) -> int:
        """Stop the commands running now (their exec returns what they printed, without an exit code), leaving
        the sandbox up; how many were stopped."""

    def go_offline(self) -> str:
        """Cut every network; says what is left (for the job's record)."""

    def confine_to_proxy(self, policy: Any, config: SandboxConfig) -> str:
        """Instead of going offline: reach only the job's egress proxy, which allows what `policy` allows."""

    def network_interfaces(self) -> list[str]: ...

    def close(self) -> None: ...


@dataclass
class PrepareRequest:
    job_id: str
    repo: str
    ref: str | None = None
    setup: list[str] | None = None  # None = the repo's .assistant/setup.sh, else detection; [] = no setup
    run: int = 1                    # which run of the job (its fence): labelled on the sandbox
    agent_internet: dict | str | None = None  # the job request's agent-internet layer (see assistant/egress)
    start_patch: str | None = None  # the user's uncommitted changes, applied (and committed) after the clone


@dataclass
class PreparedSandbox:
    sandbox: Sandbox
    base_commit: str
    setup_commands: list[str]
    setup_results: list[ExecResult]
    cache_hit: bool
    setup_network: str
    agent_network: str
    failed_setup: tuple[str, ExecResult] | None = None  # set only when allow_setup_failure let a failure pass
    timings: dict[str, float] = field(default_factory=dict)
    setup_changes: dict = field(default_factory=lambda: {"created": [], "modified": {}})  # left out of the diff
    backend: str = "docker"
    backend_fallback: str | None = None  # why a weaker backend than configured runs this job
    egress_policy: Any = None            # the agent phase's internet policy (an egress EgressPolicy)
    warm_pool: bool = False              # taken ready from the warm pool (started before the job asked)
    image: str = ""                      # the image the sandbox runs (default, toolchain or the repository's)
    test_commands: list[str] = field(default_factory=list)  # what the repository's manifests say runs its tests
    diff_base: str | None = None  # the commit the job's diff is taken against when not base_commit (start_patch's)


class SandboxError(Exception):
    """A failure a user can act on: the message says what happened and what to do."""


class SandboxLimitReached(SandboxError):
    """A limit of the sandbox stopped the job (its disk cap): the message is the job's reason as it stands."""


class RepoError(SandboxError):
    """The repository could not be cloned or the ref does not exist."""


class SetupFailed(SandboxError):
    def __init__(self, command: str, result: ExecResult):
        self.command = command
        self.result = result
        if result.timed_out:
            what = f"timed out after {result.duration_s:.0f} s"
        else:
            what = f"exited with code {result.exit_code}"
        super().__init__(
            f"setup command {command!r} {what}. Fix the command (or the repo's .assistant/setup.sh), "
            "or allow the job to continue despite a failing setup."
        )
