"""Shared fixtures: a real SQLite store in a temp dir, settings pointing at it, a scripted model server."""
from __future__ import annotations

import os
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
               "ASSISTANT_CONFIG": str(data_dir / "none.toml")}
        if server is not None:
            env["OPENAI_BASE_URL"] = server.base_url
            env["OPENAI_API_KEY"] = "test-key"
        for key, value in overrides.items():
            env[key] = str(value)
        return load_settings(env)
    return make


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
