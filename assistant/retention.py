"""Retention: bounded disk use for what the assistant keeps beside its database.

Four kinds of things grow with use: checkouts of git URLs (quick answers read them), setup-cache images
with their saved files, per-job directories under <data_dir>/workspaces and <data_dir>/homes (left by
versions that kept a job's workspace on the host), and the bare mirrors under <data_dir>/mirrors that jobs
start from (one per repository; the next job on a repository whose mirror went clones it again). Each kind
has an age limit and a size limit (settings; 0 turns a limit off): what has not been used for longer than
the age goes, then the least recently used until the kind fits its size. Nothing in use is touched: a
checkout an answer reads (its lock), a cache image a container runs from or a job looked up moments ago,
the directory of an active job, a mirror a job fetches or bundles from (its lock), that an active job's
repository maps to, or that was used moments ago. Follow-ups on a job whose files went read the stored
summary, diff, logs and cited excerpts instead.

`assistant gc [--dry-run]` runs one pass and prints it, `assistant serve` runs one every
ASSISTANT_RETENTION_INTERVAL_MIN, and `assistant doctor` reports the totals.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .conversation.checkout import CHECKOUTS_DIR, clone_lock_path, lock_path
from .domain.states import ACTIVE
from .sandbox.repo import mirror_lock_path, mirror_path, repo_identity
from .store import NotFound, Store

log = logging.getLogger(__name__)

CHECKOUTS, SETUP_CACHE, JOB_FILES, MIRRORS = "checkouts", "setup cache", "job files", "mirrors"
KINDS = (CHECKOUTS, SETUP_CACHE, JOB_FILES, MIRRORS)
# A job looks an entry up, restores its files, then starts a container from its image: in that window no
# container shows the image in use yet, so a freshly looked-up entry counts as in use for this long.
CACHE_START_GRACE_S = 600.0
# A caller of prepare_source without a job in the store (a sandbox started ahead of a job, say) reads the
# mirror after the lock is released (setup detection, the bundle): a mirror used this recently stays.
MIRROR_USE_GRACE_S = 600.0
DAY_S = 86_400.0
MB = 1024 * 1024


class InUse(Exception):
    """Raised by a removal that found the thing in use after all; the message says by what."""


@dataclass(frozen=True)
class Limits:
    max_age_s: float   # 0: no age limit
    max_bytes: int     # 0: no size limit

    def describe(self) -> str:
        age = f"{self.max_age_s / DAY_S:g} days" if self.max_age_s else "no age limit"
        size = f"{self.max_bytes / MB:g} MB" if self.max_bytes else "no size limit"
        return f"{age}, {size}"


@dataclass
class Item:
    kind: str
    label: str                     # what a person recognises: a path, an image name
    size: int                      # bytes on disk
    last_used: float               # epoch seconds
    in_use: str | None             # why it must stay, or None
    remove: Callable[[], None] = field(repr=False)


@dataclass
class Removal:
    item: Item
    reason: str                    # why it goes
    error: str | None = None       # why it did not go after all (in use by now, permissions)

    @property
    def freed(self) -> int:
        return 0 if self.error else self.item.size


@dataclass
class Report:
    dry_run: bool
    limits: dict[str, Limits]
    items: list[Item]
    removals: list[Removal]
    problems: list[str]            # what could not be inspected, and why

    def total(self, kind: str) -> int:
        return sum(i.size for i in self.items if i.kind == kind)

    def left(self, kind: str) -> int:
        gone = {id(r.item) for r in self.removals if not r.error and not self.dry_run}
        return sum(i.size for i in self.items if i.kind == kind and id(i) not in gone)

    @property
    def freed(self) -> int:
        return sum(r.freed for r in self.removals)


def limits_from(settings: Settings) -> dict[str, Limits]:
    return {
        CHECKOUTS: Limits(settings.checkouts_max_age_days * DAY_S, settings.checkouts_max_mb * MB),
        SETUP_CACHE: Limits(settings.setup_cache_max_age_days * DAY_S, settings.setup_cache_max_mb * MB),
        JOB_FILES: Limits(settings.job_files_max_age_days * DAY_S, settings.job_files_max_mb * MB),
        MIRRORS: Limits(settings.mirrors_max_age_days * DAY_S, settings.mirrors_max_mb * MB),
    }


# ---------------------------------------------------------------------------------------------- the pass
def inventory(settings: Settings, store: Store) -> tuple[list[Item], list[str]]:
    """Everything retention governs, with sizes and what keeps each in use; and what could not be seen."""
    items: list[Item] = []
    problems: list[str] = []
    items += checkouts(settings.data_dir)
    cached, problem = setup_cache(settings)
    items += cached
    if problem:
        problems.append(problem)
    items += job_files(settings.data_dir, store)
    items += mirrors(settings.data_dir, store)
    return items, problems


def choose(items: Iterable[Item], limits: Limits, now: float) -> list[Removal]:
    """What goes from one kind: whatever is past the age limit, then the least recently used until the
    kind fits its size limit. Things in use stay and still count towards the size."""
    items = list(items)
    chosen: list[Removal] = []
    for item in items:
        age = now - item.last_used
        if not item.in_use and limits.max_age_s and age > limits.max_age_s:
            chosen.append(Removal(item, f"unused for {age / DAY_S:.1f} days (limit {limits.max_age_s / DAY_S:g})"))
    going = {id(r.item) for r in chosen}
    total = sum(i.size for i in items if id(i) not in going)
    for item in sorted((i for i in items if id(i) not in going and not i.in_use), key=lambda i: i.last_used):
        if not limits.max_bytes or total <= limits.max_bytes:
            break
        chosen.append(Removal(item, f"least recently used while over the {limits.max_bytes / MB:g} MB limit"))
        total -= item.size
    return chosen


def run(settings: Settings, store: Store, *, dry_run: bool = False) -> Report:
    items, problems = inventory(settings, store)
    limits = limits_from(settings)
    now = time.time()
    removals: list[Removal] = []
    for kind in KINDS:
        removals += choose((i for i in items if i.kind == kind), limits[kind], now)
    if not dry_run:
        for removal in removals:
            try:
                removal.item.remove()
            except InUse as exc:
                removal.error = f"kept: in use ({exc})"
            except OSError as exc:
                removal.error = f"could not remove it: {exc}"
            except Exception as exc:  # the engine refused, say; the next pass tries again
                removal.error = f"could not remove it: {type(exc).__name__}: {exc}"
            if removal.error:
                log.warning("retention: %s %s: %s", removal.item.kind, removal.item.label, removal.error)
    return Report(dry_run, limits, items, removals, problems)


# ---------------------------------------------------------------------------------------------- checkouts
def checkouts(data_dir: Path) -> list[Item]:
    root = data_dir / CHECKOUTS_DIR
    if not root.is_dir():
        return []
    items = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        size, newest = disk_usage(path)
        lock = lock_path(path)
        last_used = lock.stat().st_mtime if lock.exists() else newest  # readers touch the lock file
        items.append(Item(CHECKOUTS, f"{path} ({_remote_of(path)})", size, last_used,
                          None if _lockable(lock) else "an answer is reading it",
                          lambda path=path: _remove_checkout(path)))
    return items


def _remote_of(checkout: Path) -> str:
    """The URL the checkout was cloned from, read from its config (our own clone, written by git)."""
    return _origin_in(checkout / ".git" / "config")


def _origin_in(config: Path) -> str:
    try:
        for line in config.read_text().splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() == "url":
                return value.strip()
    except OSError:
        pass
    return "origin unknown"


def _lockable(lock: Path) -> bool:
    if not lock.exists():
        return True
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


def _remove_checkout(path: Path) -> None:
    lock = lock_path(path)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUse("an answer is reading it") from None
        remove_tree(path)
        # Unlinked while locked: a reader waiting on this file notices and locks the new one.
        lock.unlink(missing_ok=True)
        clone_lock_path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- setup cache
def setup_cache(settings: Settings) -> tuple[list[Item], str | None]:
    """The cache's entries (each an image holding the set-up workspace). Cache images outside the index are
    left alone: the engine may serve other data directories, whose indexes this one cannot see."""
    from .sandbox import SandboxConfig, docker_status
    from .sandbox.cache import SetupCache
    from .sandbox.engine import docker_client

    ok, detail = docker_status()
    if not ok:
        return [], f"setup cache not inspected: {detail}"
    client = docker_client()
    cache = SetupCache(SandboxConfig.from_settings(settings))
    now = time.time()
    users = _image_users(client)
    items = []
    for entry in cache.entries():
        image = _image(client, entry.image)
        in_use = users.get(image.id) if image is not None else None
        if in_use is None and now - entry.last_used < CACHE_START_GRACE_S:
            in_use = f"looked up {now - entry.last_used:.0f} s ago: a job may be starting from it"
        items.append(Item(SETUP_CACHE, entry.image, _own_layer_size(image), entry.last_used, in_use,
                          lambda entry=entry: _remove_cache_entry(client, cache, entry)))
    # Workspace archives an earlier version kept beside the index (the workspace now lives in the image).
    for tar in sorted(cache.directory.glob("*.tar")):
        items.append(Item(SETUP_CACHE, f"{tar} (left by an earlier version)", _file_size(tar), tar.stat().st_mtime,
                          None, lambda tar=tar: tar.unlink(missing_ok=True)))
    return items, None


def _image_users(client) -> dict[str, str]:
    """Image id -> a container that runs from it (any state: a stopped one still pins it)."""
    users: dict[str, str] = {}
    for container in client.containers.list(ignore_removed=True, all=True):
        image_id = container.attrs.get("Image", "")
        users.setdefault(image_id, f"container {container.name} uses it")
    return users


def _image(client, name: str):
    try:
        return client.images.get(name)
    except Exception:
        return None


def _own_layer_size(image) -> int:
    """The bytes the cache added on top of the sandbox image: its newest layer (docker commit makes one)."""
    if image is None:
        return 0
    try:
        return int(image.history()[0].get("Size") or 0)
    except Exception:
        return 0


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def _remove_image(client, name: str) -> None:
    import docker

    try:
        client.images.remove(name, force=False, noprune=False)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # a container (perhaps just started) runs from it
            raise InUse("a container uses it") from None
        raise


def _remove_cache_entry(client, cache, entry) -> None:
    if _image(client, entry.image) is not None:
        _remove_image(client, entry.image)  # refuses (InUse) while a container runs from it
    cache.remove(entry.key)


# ---------------------------------------------------------------------------------------------- job files
def job_files(data_dir: Path, store: Store) -> list[Item]:
    """Per-job directories under workspaces/ and homes/ (homes/.<job>-etc too), with the jobs still active kept."""
    active = {j.id: j.state for j in store.list_jobs(states=ACTIVE, limit=1_000_000)}
    items = []
    for base in (data_dir / "workspaces", data_dir / "homes"):
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
            job_id = path.name.removeprefix(".").removesuffix("-etc")
            size, newest = disk_usage(path)
            in_use = f"job {job_id} is {active[job_id]}" if job_id in active else None
            items.append(Item(JOB_FILES, str(path), size, newest, in_use,
                              lambda path=path, job_id=job_id: _remove_job_files(store, path, job_id)))
    return items


def _remove_job_files(store: Store, path: Path, job_id: str) -> None:
    try:
        state = store.get_job(job_id).state
    except NotFound:
        state = None
    if state in ACTIVE:
        raise InUse(f"job {job_id} is {state}")
    remove_tree(path)


# ---------------------------------------------------------------------------------------------- mirrors
def mirrors(data_dir: Path, store: Store) -> list[Item]:
    """The bare mirrors jobs start from (sandbox/repo.py). The host made each with `git clone --bare` of a
    repository a user named; no job writes there. Its lock file's mtime marks each fetch and bundle."""
    root = data_dir / "mirrors"
    if not root.is_dir():
        return []
    users = _mirror_users(data_dir, store)
    now = time.time()
    items = []
    for path in sorted(p for p in root.glob("*.git") if p.is_dir() and not p.is_symlink()):
        size, last_used = _mirror_usage(path)
        locked = None if _lockable(mirror_lock_path(path)) else "a job is fetching or bundling from it"
        in_use = users.get(path) or locked or _recent_use(last_used, now)
        items.append(Item(MIRRORS, f"{path} ({_mirror_origin(path)})", size, last_used, in_use,
                          lambda path=path: _remove_mirror(data_dir, store, path)))
    return items


def _mirror_usage(mirror: Path) -> tuple[int, float]:
    size, newest = disk_usage(mirror)
    lock = mirror_lock_path(mirror)
    try:
        return size, max(newest, lock.stat().st_mtime)
    except OSError:
        return size, newest


def _mirror_origin(mirror: Path) -> str:
    """The repository the mirror was cloned from, without any credentials its URL carried."""
    origin = _origin_in(mirror / "config")
    return origin if origin == "origin unknown" else repo_identity(origin)


def _mirror_users(data_dir: Path, store: Store) -> dict[Path, str]:
    """Mirror -> the active job whose repository it holds."""
    users: dict[Path, str] = {}
    for job in store.list_jobs(states=ACTIVE, limit=1_000_000):
        if job.repo:
            users.setdefault(mirror_path(job.repo, data_dir), f"job {job.id} is {job.state}")
    return users


def _recent_use(last_used: float, now: float) -> str | None:
    age = now - last_used
    return f"used {age:.0f} s ago: a job may be starting from it" if age < MIRROR_USE_GRACE_S else None


def _remove_mirror(data_dir: Path, store: Store, mirror: Path) -> None:
    """Remove the mirror holding its lock (taken without waiting: a job fetching or bundling now keeps it),
    after looking again at what uses it; a job that starts later waits for the lock and clones afresh."""
    lock = mirror_lock_path(mirror)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUse("a job is fetching or bundling from it") from None
        if not _is_file_at(handle, lock):
            raise InUse("another pass removed it a moment ago")
        in_use = _mirror_users(data_dir, store).get(mirror) or _recent_use(_mirror_usage(mirror)[1], time.time())
        if in_use:
            raise InUse(in_use)
        remove_tree(mirror)
        # Unlinked while locked: a job waiting on this file notices (sandbox/repo.py) and locks the new one.
        lock.unlink(missing_ok=True)


def _is_file_at(handle, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------- files
def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def disk_usage(path: Path) -> tuple[int, float]:
    """Bytes a tree takes on disk (hard links counted once, symlinks not followed) and its newest mtime."""
    total, newest = 0, 0.0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
            newest = max(newest, os.stat(current).st_mtime)
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            newest = max(newest, st.st_mtime)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
    return total, newest


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
