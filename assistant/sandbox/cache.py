"""The setup cache: a committed image plus the workspace files setup produced, keyed by what setup depended on."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tarfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .base import SandboxConfig
from .engine import docker_client
from .repo import host_git

CACHE_REPOSITORY = "assistant-setup-cache"
CACHE_LABEL = "assistant.setup-cache"


@dataclass
class CacheEntry:
    key: str
    image: str
    workspace_tar: str
    created: float
    last_used: float


def cache_key(repo_identity: str, commit: str, commands: list[str], base_image_id: str) -> str:
    material = json.dumps([repo_identity, commit, commands, base_image_id])
    return hashlib.sha256(material.encode()).hexdigest()


class SetupCache:
    def __init__(self, config: SandboxConfig):
        self.directory = config.cache_dir / "setup"
        self.max_entries = max(1, config.cache_max_entries)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index_path = self.directory / "index.json"

    @contextmanager
    def _locked_index(self):
        with open(self.directory / "index.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = json.loads(self._index_path.read_text()) if self._index_path.exists() else {}
            except ValueError:
                entries = {}
            index = {key: CacheEntry(**value) for key, value in entries.items()}
            yield index
            scratch = self._index_path.with_suffix(".tmp")
            scratch.write_text(json.dumps({key: asdict(entry) for key, entry in index.items()}, indent=1))
            os.replace(scratch, self._index_path)

    def lookup(self, key: str) -> CacheEntry | None:
        with self._locked_index() as index:
            entry = index.get(key)
            if entry is None:
                return None
            if not Path(entry.workspace_tar).exists() or not _image_exists(entry.image):
                self._drop(index.pop(key))
                return None
            entry.last_used = time.time()
            return entry

    def store(self, key: str, sandbox, workspace: Path) -> CacheEntry:
        """Commit the set-up container and snapshot the untracked, ignored and modified files setup left."""
        tag = key[:24]
        tar_path = self.directory / f"{tag}.tar"
        _snapshot_setup_files(workspace, tar_path)
        sandbox.commit(CACHE_REPOSITORY, tag, {CACHE_LABEL: key})
        now = time.time()
        entry = CacheEntry(key=key, image=f"{CACHE_REPOSITORY}:{tag}", workspace_tar=str(tar_path),
                           created=now, last_used=now)
        with self._locked_index() as index:
            index[key] = entry
            for stale in sorted(index.values(), key=lambda e: e.last_used)[: max(0, len(index) - self.max_entries)]:
                self._drop(index.pop(stale.key))
        return entry

    def entries(self) -> list[CacheEntry]:
        with self._locked_index() as index:
            return sorted(index.values(), key=lambda e: e.last_used, reverse=True)

    def clear(self) -> int:
        with self._locked_index() as index:
            count = len(index)
            for key in list(index):
                self._drop(index.pop(key))
        return count

    @staticmethod
    def _drop(entry: CacheEntry) -> None:
        Path(entry.workspace_tar).unlink(missing_ok=True)
        try:
            docker_client().images.remove(entry.image, force=True)
        except Exception:
            pass  # already gone


def restore_setup_files(entry: CacheEntry, workspace: Path) -> None:
    with tarfile.open(entry.workspace_tar) as tar:
        kwargs = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
        tar.extractall(workspace, numeric_owner=True, **kwargs)


def _snapshot_setup_files(workspace: Path, tar_path: Path) -> None:
    # --others without --exclude-standard lists ignored files too (node_modules, *.egg-info).
    listed = host_git(workspace, "ls-files", "-z", "--others", "--modified").stdout
    paths = sorted({p for p in listed.split("\0") if p})
    scratch = tar_path.with_suffix(".partial")
    with tarfile.open(scratch, "w") as tar:
        for relative in paths:
            full = workspace / relative
            if full.exists() or full.is_symlink():
                tar.add(full, arcname=relative, recursive=not full.is_symlink())
    os.replace(scratch, tar_path)


def _image_exists(name: str) -> bool:
    try:
        docker_client().images.get(name)
        return True
    except Exception:
        return False
