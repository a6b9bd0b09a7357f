"""Sandbox fixtures: a real Docker engine with the default image (built if missing), real git repos."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from assistant.sandbox import PrepareRequest, SandboxConfig, SandboxError, build_image, prepare
from assistant.sandbox.engine import ensure_docker, bwrap_status

BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), "local"]
GIT_IDENTITY = ["-c", "user.email=test@example.invalid", "-c", "user.name=Test"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", *GIT_IDENTITY, "-C", str(repo), *args],
                          check=True, capture_output=True, text=True).stdout


def make_repo(path: Path, files: dict[str, str | bytes], message: str = "initial") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        git(path, "init", "-q", "-b", "main")
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)
    return path


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The default sandbox image, built once for the whole run when it is missing (about two minutes)."""
    try:
        ensure_docker()
    except SandboxError as exc:
        pytest.skip(f"no Docker engine: {exc}")
    scratch = Path("/tmp/assistant-test-image-build")
    return build_image(SandboxConfig(data_dir=scratch), on_log=lambda line: None)


@pytest.fixture
def small_repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "# demo\n", "src/app.py": "def answer():\n    return 42\n"})


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_image")
    elif not bwrap_status()[0]:
        pytest.skip(bwrap_status()[1])
    return request.param


@pytest.fixture
def config_for(reachable_data_dir, backend):
    def make(**overrides) -> SandboxConfig:
        values = {"data_dir": reachable_data_dir, "backend": backend, "cache_enabled": False}
        values.update(overrides)
        return SandboxConfig(**values)
    return make


@pytest.fixture
def open_sandbox(config_for, small_repo):
    """Prepares sandboxes on the small repo without setup; closes them after the test."""
    opened = []

    def make(job_id: str = "job1", **overrides):
        prepared = prepare(PrepareRequest(job_id=job_id, repo=str(small_repo), setup=[]), config_for(**overrides))
        opened.append(prepared.sandbox)
        return prepared.sandbox

    yield make
    for sandbox in opened:
        sandbox.close()
