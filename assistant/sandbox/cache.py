"""The setup cache: the set-up container committed as an image (its workspace included, since the workspace
lives in the container), keyed by what setup depended on, plus what setup changed, kept as data so the diff
of a job that starts from the cache still leaves setup's files out."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from .base import SandboxConfig
from .engine import EngineSpec, docker_client

CACHE_REPOSITORY = "assistant-setup-cache"
CACHE_LABEL = "assistant.setup-cache"


@dataclass
class CacheEntry:
    key: str
    image: str
    setup_changes: dict
    created: float
    last_used: float


def cache_key(repo_identity: str, commit: str, commands: list[str], base_image_id: str,
              secret_names: list[str] | None = None) -> str:
    material = json.dumps([repo_identity, commit, commands, base_image_id, sorted(secret_names or [])])
    return hashlib.sha256(material.encode()).hexdigest()


class SetupCache:
    """The cache of one engine (its images live there): the environment's engine by default, else one of a pool,
    whose index is kept apart."""

    def __init__(self, config: SandboxConfig, engine: EngineSpec | None = None):
        self.engine = engine
        self.directory = config.cache_dir / "setup" / (engine.name if engine and engine.url else "")
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
            # Entries of an older layout (a host-side tar of the workspace) are simply forgotten.
            index = {key: CacheEntry(**value) for key, value in entries.items() if "setup_changes" in value}
            yield index
            scratch = self._index_path.with_suffix(".tmp")
            scratch.write_text(json.dumps({key: asdict(entry) for key, entry in index.items()}, indent=1))
            os.replace(scratch, self._index_path)

    def lookup(self, key: str) -> CacheEntry | None:
        with self._locked_index() as index:
            entry = index.get(key)
            if entry is None:
                return None
            if not _image_exists(entry.image, self.engine):
                self._drop(index.pop(key))
                return None
            entry.last_used = time.time()
            return entry

    def store(self, key: str, sandbox, setup_changes: dict) -> CacheEntry:
        """Commit the set-up container (workspace and home included)."""
        tag = key[:24]
        sandbox.commit(CACHE_REPOSITORY, tag, {CACHE_LABEL: key})
        now = time.time()
        entry = CacheEntry(key=key, image=f"{CACHE_REPOSITORY}:{tag}", setup_changes=setup_changes,
                           created=now, last_used=now)
        with self._locked_index() as index:
            index[key] = entry
            for stale in sorted(index.values(), key=lambda e: e.last_used)[: max(0, len(index) - self.max_entries)]:
                self._drop(index.pop(stale.key))
        return entry

    def entries(self) -> list[CacheEntry]:
        with self._locked_index() as index:
            return sorted(index.values(), key=lambda e: e.last_used, reverse=True)

    def remove(self, key: str) -> bool:
        """Forget one entry and remove its image (retention); False when it was not there."""
        with self._locked_index() as index:
            entry = index.pop(key, None)
            if entry is not None:
                self._drop(entry)
        return entry is not None

    def clear(self) -> int:
        with self._locked_index() as index:
            count = len(index)
            for key in list(index):
                self._drop(index.pop(key))
        return count

    def _drop(self, entry: CacheEntry) -> None:
        try:
            docker_client(self.engine).images.remove(entry.image, force=True)
        except Exception:
            pass  # already gone


def _image_exists(name: str, engine: EngineSpec | None = None) -> bool:
    try:
        docker_client(engine).images.get(name)
        return True
    except Exception:
        return False
