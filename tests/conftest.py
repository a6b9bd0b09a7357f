"""Shared fixtures: a real SQLite store in a temp dir, settings pointing at it, a scripted model server."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from assistant.config import Settings, load_settings
from assistant.store import Store
from assistant.testing.scripted_model import ScriptedModelServer

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def scripted_model():
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def settings_for(data_dir):
    """Settings for a test: temp data dir, the scripted model as endpoint, fast retries."""
    def make(server: ScriptedModelServer | None = None, **overrides) -> Settings:
        env = {"ASSISTANT_DATA_DIR": str(data_dir), "ASSISTANT_MODEL_MAX_RETRIES": "2",
               "ASSISTANT_MODEL_TIMEOUT_S": "20", "ASSISTANT_MODEL": "scripted-model",
               "ASSISTANT_CONFIG": str(data_dir / "none.toml"),
               "ASSISTANT_WARM_POOL": "false"}  # its own tests turn it on; elsewhere it would add containers
        if server is not None:
            env["OPENAI_BASE_URL"] = server.base_url
            env["OPENAI_API_KEY"] = "test-key"
        for key, value in overrides.items():
            env[key] = str(value)
        return load_settings(env)
    return make


@pytest.fixture
def reachable_data_dir():
    """A data dir the sandbox user (uid 1000) can enter: pytest's tmp_path is private to root, and the
    bubblewrap backend runs commands as that user."""
    path = Path(tempfile.mkdtemp(prefix="assistant-test-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(data_dir) -> Store:
    s = Store(f"sqlite:///{data_dir / 'test.db'}")
    yield s
    s.close()


@pytest.fixture(scope="session", autouse=True)
def _no_proxy_for_loopback():
    # The SDK must reach loopback servers directly even when a proxy is configured.
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    yield


@pytest.fixture(scope="session")
def docker_engine():
    """A real Docker engine with the sandbox image; the README's test command starts one."""
    from assistant.sandbox import DEFAULT_IMAGE, SandboxConfig, build_image, docker_status, image_status
    ok, detail = docker_status()
    if not ok:
        pytest.fail(f"these tests need a Docker engine ({detail}); run ./test.sh, which starts one")
    if not image_status(DEFAULT_IMAGE)[0]:
        build_image(SandboxConfig(data_dir=Path("/tmp")), on_log=lambda _l: None)
    return detail


@pytest.fixture
def assistant_for(settings_for):
    """A whole Assistant (store, model client, job manager, conversation) on the scripted model."""
    from assistant.core import Assistant
    made = []

    def make(server, **overrides):
        overrides.setdefault("ASSISTANT_SANDBOX_BACKEND", "docker")
        a = Assistant(settings_for(server, **overrides))
        a.start(sweep=False)
        made.append(a)
        return a
    yield make
    for a in made:
        a.close()
