"""Extra Docker engines beside the default one, started with scripts/ensure-docker.sh NAME (own socket, data
root, exec root, pid file and bridge), with the sandbox image copied in by `assistant sandbox push`."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTRA = ("scale-a", "scale-b")
DEFAULT_URL = "unix:///var/run/docker.sock"


def socket_url(name: str) -> str:
    return f"unix:///run/assistant-engines/{name}.sock"


def pid_of(name: str) -> int | None:
    path = Path(f"/run/assistant-engines/{name}.pid")
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def ensure_engine(name: str) -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-docker.sh"), name], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def kill_engine(name: str) -> None:
    """kill -9 of the engine's dockerd: it answers nothing from now on."""
    os.kill(pid_of(name), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and subprocess.run(
            ["docker", "-H", socket_url(name), "info"], capture_output=True).returncode == 0:
        time.sleep(0.1)


def hosts_setting(capacity: int, names=("default",) + EXTRA) -> str:
    return ",".join(f"{n}={DEFAULT_URL if n == 'default' else socket_url(n)}*{capacity}" for n in names)


@pytest.fixture(scope="session")
def extra_engines(docker_engine):
    """The extra engines, up and holding the sandbox image; stopped at the end of the session."""
    from assistant.config import load_settings
    from assistant.sandbox.pool import EnginePool

    for name in EXTRA:
        ensure_engine(name)
    settings = load_settings({"ASSISTANT_DOCKER_HOSTS": hosts_setting(2), "ASSISTANT_CONFIG": "/nonexistent"})
    pool = EnginePool.from_settings(settings, store=None)
    for engine in pool.engines:
        if not pool.has_image(engine):
            pool.push(engine.name, on_log=lambda _line: None)
    yield EXTRA
    for name in EXTRA:
        pid = pid_of(name)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
