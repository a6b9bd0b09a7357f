"""A pool of Docker engines for sandboxes (ASSISTANT_DOCKER_HOSTS): placement, health, orphan sweeps, image push.

Placement picks the least-loaded engine (running jobs against its capacity) that is up and has the sandbox
image, and records it on the job in the same transaction that counts the load, so workers placing at the same
moment never overfill an engine. An engine that stops answering is marked down in the database: no worker
places a job on it until it answers again, and the workers running jobs there hand them back to the queue (the
caller's business: see jobs/worker.py). Each engine's containers carry the job and run (fence) they belong to,
so a sweep removes what no current run owns, whichever worker or host started it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .base import SandboxError
from .engine import DEPLOYMENT_LABEL, JOB_LABEL, MANAGED_LABEL, PING_TIMEOUT_S, RUN_LABEL, EngineSpec, _short, docker_client, \
    forget_client

log = logging.getLogger(__name__)

UP, DOWN = "up", "down"
IMAGE_CHECK_S = 30.0          # how long an engine's "has the image" answer is trusted
PLACEMENT_WAIT_S = 1.0


def parse_engines(text: str, cert_dir: str | None = None) -> tuple[EngineSpec, ...]:
    """`NAME=URL*CAPACITY, …` (capacity optional: no limit of the engine's own). URLs: unix://, tcp:// (TLS client
    certificates from cert_dir/NAME/, else DOCKER_CERT_PATH), ssh://. Raises ValueError saying what is wrong."""
    engines: list[EngineSpec] = []
    for item in filter(None, (part.strip() for part in text.replace("\n", ",").split(","))):
        name, sep, rest = item.partition("=")
        name = name.strip()
        if not sep or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"{item!r}: write NAME=URL*CAPACITY, e.g. local=unix:///var/run/docker.sock*4 "
                             "(names: letters, digits, - and _)")
        url, star, capacity = rest.strip().rpartition("*") if "*" in rest else (rest.strip(), "", "")
        if star and (not capacity.strip().isdigit() or int(capacity) < 1):
            raise ValueError(f"{item!r}: the capacity after * must be a whole number of sandboxes, at least 1")
        if not url.startswith(("unix://", "tcp://", "ssh://")):
            raise ValueError(f"{item!r}: an engine URL starts with unix://, tcp:// or ssh://")
        if any(e.name == name for e in engines):
            raise ValueError(f"engine name {name!r} is used twice")
        tls_dir = None
        if url.startswith("tcp://"):
            tls_dir = _tls_dir(name, cert_dir)
        engines.append(EngineSpec(name, url, int(capacity) if star else 0, tls_dir))
    if not engines:
        raise ValueError("no engines listed")
    return tuple(engines)


def _tls_dir(name: str, cert_dir: str | None) -> str | None:
    for candidate in ([Path(cert_dir) / name] if cert_dir else []) + (
            [Path(os.environ["DOCKER_CERT_PATH"])] if os.environ.get("DOCKER_CERT_PATH") else []):
        if all((candidate / f).is_file() for f in ("ca.pem", "cert.pem", "key.pem")):
            return str(candidate)
    return None


class EnginePool:
    def __init__(self, engines: tuple[EngineSpec, ...], store, image: str):
        self.engines = engines
        self.store = store
        self.image = image
        self._image_seen: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings, store) -> "EnginePool | None":
        if not settings.docker_hosts:
            return None
        cert_dir = str(settings.docker_cert_dir) if settings.docker_cert_dir else None
        return cls(parse_engines(settings.docker_hosts, cert_dir), store, settings.sandbox_image)

    def engine(self, name: str | None) -> EngineSpec | None:
        return next((e for e in self.engines if e.name == name), None)

    # ------------------------------------------------------------------ placement
    def place(self, job_id: str, fence: int, cancelled: threading.Event,
              on_wait: Callable[[str], None] = lambda _text: None) -> EngineSpec:
        """The engine for this run of the job, recorded on it; waits while every usable engine is full."""
        waited = False
        while True:
            usable, why_not = self._usable()
            if not usable:
                raise SandboxError("no sandbox engine can take the job: " + "; ".join(why_not))
            chosen = self.store.place_job(job_id, fence, lambda loads: _least_loaded(usable, loads))
            if chosen is not None:
                return self.engine(chosen)
            if not waited:
                on_wait(f"every sandbox engine is at its capacity ({', '.join(f'{e.name}: {e.capacity}' for e in usable)}); "
                        "the job waits for a free place")
                waited = True
            if cancelled.wait(PLACEMENT_WAIT_S):
                raise SandboxError("cancelled while waiting for a sandbox engine")

    def _usable(self) -> tuple[list[EngineSpec], list[str]]:
        states = self.store.engine_states()
        usable, why_not = [], []
        for engine in self.engines:
            state = states.get(engine.name)
            if state is not None and state.state == DOWN:
                why_not.append(f"{engine.name} is down ({state.reason})")
            elif not self.has_image(engine):
                why_not.append(f"{engine.name} lacks the image {self.image} (run `assistant sandbox push {engine.name}`)")
            else:
                usable.append(engine)
        return usable, why_not

    def has_image(self, engine: EngineSpec) -> bool:
        seen = self._image_seen.get(engine.name)
        if seen and time.monotonic() - seen[0] < IMAGE_CHECK_S:
            return seen[1]
        try:
            docker_client(engine, timeout=PING_TIMEOUT_S).images.get(self.image)
            present = True
        except Exception:
            present = False
        self._image_seen[engine.name] = (time.monotonic(), present)
        return present

    # ------------------------------------------------------------------ health
    def answers(self, engine: EngineSpec) -> str | None:
        """None when the engine answers a ping now, else why not."""
        try:
            docker_client(engine, timeout=PING_TIMEOUT_S).ping()
            return None
        except Exception as exc:
            forget_client(engine)
            return _short(exc.__cause__ or exc) if isinstance(exc, SandboxError) else _short(exc)

    def check(self) -> tuple[list[tuple[EngineSpec, str]], list[EngineSpec]]:
        """Ping every engine and record the answers: (engines that went down with why, engines that came back)."""
        went_down, came_back = [], []
        before = self.store.engine_states()
        for engine in self.engines:
            reason = self.answers(engine)
            if reason is not None:
                if self.mark_down(engine, reason):
                    went_down.append((engine, reason))
            elif self.store.set_engine_state(engine.name, UP) and engine.name in before:
                log.warning("sandbox engine %s answers again", engine.name)
                came_back.append(engine)
                self._image_seen.pop(engine.name, None)
        return went_down, came_back

    def mark_down(self, engine: EngineSpec, reason: str) -> bool:
        changed = self.store.set_engine_state(engine.name, DOWN, reason)
        if changed:
            log.warning("sandbox engine %s is down: %s", engine.name, reason)
        return changed

    # ------------------------------------------------------------------ orphans
    def sweep(self, deployment: str, orphaned: Callable[[str, str, str, float], bool],
              engines: list[EngineSpec] | None = None) -> int:
        """Remove, on each engine that answers, this deployment's containers that `orphaned(job id, run, container
        id, age in seconds)` says no current run owns (the rule is the job layer's: see jobs/worker.py)."""
        removed = 0
        for engine in engines or self.engines:
            try:
                containers = docker_client(engine, timeout=PING_TIMEOUT_S).containers.list(ignore_removed=True,
                    all=True, filters={"label": [f"{MANAGED_LABEL}=1", f"{DEPLOYMENT_LABEL}={deployment}"]})
            except Exception:
                continue  # down: swept when it comes back
            for container in containers:
                labels = container.labels or {}
                job_id, run = labels.get(JOB_LABEL), labels.get(RUN_LABEL)
                if job_id and run and orphaned(job_id, run, container.id, _age_s(container)):
                    removed += _remove(container)
        return removed

    def remove_container(self, engine_name: str | None, container_id: str | None) -> int:
        engine = self.engine(engine_name)
        if engine is None or not container_id:
            return 0
        try:
            return _remove(docker_client(engine, timeout=PING_TIMEOUT_S).containers.get(container_id))
        except Exception:
            return 0

    # ------------------------------------------------------------------ the image
    def push(self, name: str, on_log: Callable[[str], None] = print, image: str | None = None) -> None:
        """Copy the sandbox image (or `image`, e.g. the egress proxy's) to the named engine from one that has it
        (streamed, never whole in memory)."""
        image = image or self.image
        target = self.engine(name)
        if target is None:
            raise SandboxError(f"no engine {name!r} in ASSISTANT_DOCKER_HOSTS (engines: "
                               f"{', '.join(e.name for e in self.engines)})")
        source = next((e for e in (EngineSpec(),) + self.engines if e != target and _has(e, image)), None)
        if source is None:
            build = "assistant sandbox build" if image == self.image else "assistant egress build"
            raise SandboxError(f"no engine has the image {image}: build it first (`{build}`)")
        started = time.monotonic()
        on_log(f"copying {image} from {source.describe()} to {target.describe()}")
        stream = docker_client(source).api.get_image(image)
        for line in docker_client(target).api.load_image(_chunks(stream)):
            if line.get("error"):
                raise SandboxError(f"{target.describe()} refused the image: {line['error']}")
        if image == self.image:
            self._image_seen.pop(target.name, None)
        on_log(f"{target.name} has {image} ({time.monotonic() - started:.0f} s)")


def _least_loaded(usable: list[EngineSpec], loads: dict[str, int]) -> str | None:
    room = [e for e in usable if not e.capacity or loads.get(e.name, 0) < e.capacity]
    if not room:
        return None
    return min(room, key=lambda e: (loads.get(e.name, 0) / (e.capacity or 1_000_000), loads.get(e.name, 0),
                                    e.name)).name


def _has(engine: EngineSpec, image: str) -> bool:
    try:
        docker_client(engine, timeout=PING_TIMEOUT_S).images.get(image)
        return True
    except Exception:
        return False


def _chunks(stream) -> Iterator[bytes]:
    yield from stream


def _remove(container) -> int:
    try:
        container.remove(force=True)
        return 1
    except Exception:
        return 0  # already gone


def _age_s(container) -> float:
    created = (container.attrs or {}).get("Created", "")
    try:
        stamp = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00" if created else "")
    except ValueError:
        return float("inf")
    return (datetime.now(timezone.utc) - stamp).total_seconds()
