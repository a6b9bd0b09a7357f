"""The per-job disk cap (ASSISTANT_SANDBOX_DISK_MB): its wording, and how the host learns that a job hit it.

The kernel enforces the cap (a btrfs quota on the container under Docker, a loop-mounted file system of the cap's
size under bubblewrap); nothing here polls. What this module adds is knowing, after a command failed, whether it
failed because the sandbox is full: a probe run inside the sandbox asks the file system for a few megabytes of
room (fallocate: no data written, no time taken). A refusal with EDQUOT ("Disk quota exceeded") or ENOSPC ("No space
left on device") is the kernel's own word that the job is at its cap, whatever the agent's command printed or hid.
"""
from __future__ import annotations

import secrets

from .base import ExecResult, SandboxLimitReached

MIB = 1024 * 1024
QUOTA_TEXT = "Disk quota exceeded"        # EDQUOT: a btrfs qgroup (the Docker backend's cap)
FULL_TEXT = "No space left on device"     # ENOSPC: a full file system (the bubblewrap cap, or the engine's disk)


def cap_text(disk_mb: int) -> str:
    """4096 -> "4 GB", 1536 -> "1.5 GB", 512 -> "512 MB"."""
    if disk_mb < 1024:
        return f"{disk_mb} MB"
    return f"{disk_mb / 1024:.1f}".removesuffix(".0") + " GB"


def cap_reason(disk_mb: int) -> str:
    return (f"the job wrote more than {cap_text(disk_mb)} (the disk cap, ASSISTANT_SANDBOX_DISK_MB) and was stopped; "
            "make it write less (clean build outputs, avoid huge test data) or raise the cap")


def probe_bytes(disk_mb: int) -> int:
    """Room the probe asks for: 1/32 of the cap, between 16 and 256 MiB. A job that cannot get that much more is at
    its cap (within 3 %), whichever size of write failed first."""
    return max(16 * MIB, min(256 * MIB, disk_mb * MIB // 32))


def probe_command(disk_mb: int) -> str:
    # /usr/bin is root's: the agent cannot put its own fallocate there (its own bin directories come first in PATH).
    path = f"/tmp/.assistant-disk-probe-{secrets.token_hex(4)}"
    return (f"if [ -x /usr/bin/fallocate ]; then /usr/bin/fallocate -l {probe_bytes(disk_mb)} {path}; "
            f"else head -c {probe_bytes(disk_mb)} /dev/zero > {path}; fi; s=$?; rm -f {path}; exit $s")


def check_after(run_probe, result: ExecResult, disk_mb: int, *, full_is_cap: bool) -> None:
    """After a command: when it failed and a cap is set, probe; raise SandboxLimitReached when the sandbox is full.
    `run_probe(command) -> ExecResult` runs a command in the sandbox without coming back here. `full_is_cap`: ENOSPC
    means the cap (bubblewrap's own file system) rather than a full engine disk (Docker)."""
    if not disk_mb or result.ok:
        return
    try:
        probe = run_probe(probe_command(disk_mb))
    except Exception:
        return  # the sandbox is gone or stuck: the caller's next step says so
    if probe.ok:
        return
    if QUOTA_TEXT in probe.output or (full_is_cap and FULL_TEXT in probe.output):
        raise _stopped(cap_reason(disk_mb), result)
    if FULL_TEXT in probe.output:
        raise _stopped("the sandbox engine's disk is full (not this job's cap): the job cannot write anything more. "
                       "Free space on the engine (assistant gc, docker image prune) and retry the job.", result)


def _stopped(reason: str, result: ExecResult) -> SandboxLimitReached:
    error = SandboxLimitReached(reason)
    error.result = result  # the failed command's own result (its output, exit code), for whoever records it
    return error
