"""Which process owns a job or a container: "<boot id>:<pid>", so ownership survives neither a reboot
nor the owner's death, and a reused pid after a reboot is not mistaken for the owner."""
from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def process_tag() -> str:
    return f"{boot_id()}:{os.getpid()}"


def tag_alive(tag: str | None) -> bool:
    if not tag or ":" not in tag:
        return False
    boot, _, pid = tag.rpartition(":")
    if boot != boot_id() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
