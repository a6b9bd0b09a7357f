#!/usr/bin/env python3
"""Turn btrfs quotas on for an engine's data root, and say which accounting it has.

  btrfs-quota.py enable PATH   quotas on: simple quotas where the kernel has them (6.7 and later), else full qgroups
  btrfs-quota.py mode PATH     prints simple, full or off

Why simple quotas: with full qgroups the kernel accounts every changed extent by walking its back-references to all
the subvolumes that share it (btrfs_find_all_roots). Every container and committed setup cache is a snapshot sharing
the image's extents, so each commit gets slower as containers come and go; on a busy engine `docker create` took
40-120 s (the daemon's thread sat in btrfs_qgroup_account_extents). Simple quotas charge an extent to the subvolume
that wrote it, with no back-reference walk; a container's limit then counts only what it wrote, not its image.
Debian 12's btrfs-progs (6.2) cannot turn them on, hence the ioctl here.
"""
import fcntl
import os
import struct
import subprocess
import sys
from pathlib import Path

BTRFS_IOC_QUOTA_CTL = 0xC0109428  # _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args {__u64 cmd; __u64 status;})
QUOTA_CTL_ENABLE, QUOTA_CTL_ENABLE_SIMPLE = 1, 4


def uuid_of(path: str) -> str | None:
    """The UUID of the file system mounted at (or holding) path."""
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "UUID", "--target", os.path.realpath(path)],
                             capture_output=True, text=True).stdout.split()
    except OSError:
        return None
    return out[0] if out else None


def mode(path: str) -> str:
    uuid = uuid_of(path)
    qgroups = Path("/sys/fs/btrfs") / (uuid or "?") / "qgroups"
    if not qgroups.is_dir():
        return "off"
    try:
        kind = (qgroups / "mode").read_text().strip()  # kernels 6.7+: qgroup | squota
    except OSError:
        return "full"
    return "simple" if kind == "squota" else "full"


def enable(path: str) -> str:
    current = mode(path)
    if current != "off":
        return current
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for cmd, name in ((QUOTA_CTL_ENABLE_SIMPLE, "simple"), (QUOTA_CTL_ENABLE, "full")):
            try:
                fcntl.ioctl(fd, BTRFS_IOC_QUOTA_CTL, bytearray(struct.pack("QQ", cmd, 0)))
                return name
            except OSError as exc:
                if cmd == QUOTA_CTL_ENABLE:
                    raise SystemExit(f"could not turn on btrfs quotas on {path}: {exc}")
    finally:
        os.close(fd)
    return "off"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("enable", "mode"):
        raise SystemExit(__doc__.strip().splitlines()[2])
    print(enable(sys.argv[2]) if sys.argv[1] == "enable" else mode(sys.argv[2]))
