"""The web app readies a sandbox for the conversation's repository when a chat starts with one and when the
repository setting changes, and its shutdown leaves no warm container."""
from __future__ import annotations

import asyncio
import subprocess
import time

import docker
import pytest

from assistant.sandbox.engine import OWNER_LABEL, docker_client
from assistant.testing.chat_client import ChatSession
from assistant.testing.scripted_model import ScriptedModelServer

from .harness import USERS, AppProcess, make_repo

pytestmark = pytest.mark.docker


def warm_containers(pid: int) -> list:
    return [c for c in docker_client().containers.list(ignore_removed=True, all=True, filters={"label": "assistant.managed=1"})
            if c.name.startswith("assistant-warm-") and c.labels[OWNER_LABEL].endswith(f":{pid}")]


def warm_workspaces(pid: int) -> set[str]:
    """The README of each warm sandbox of the app process that has its checkout (read with `docker exec`, the
    test's own look; a container still starting has none yet)."""
    found = set()
    for container in warm_containers(pid):
        if container.status == "running":
            try:
                code, output = container.exec_run(["cat", "/workspace/README.md"])
            except docker.errors.NotFound:  # replaced (a newer commit) or expired between the listing and now
                continue
            if code == 0:
                found.add(output.decode())
    return found


def wait_until(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert check()


def test_chat_start_and_a_repository_change_ready_a_sandbox(tmp_path, docker_engine):
    first = make_repo(tmp_path / "repos" / "first")
    second = make_repo(tmp_path / "repos" / "second")
    (second / "README.md").write_text("# second\n")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "second"], cwd=second,
                   check=True)
    (tmp_path / "data").mkdir()
    with ScriptedModelServer() as model:
        app = AppProcess(tmp_path / "data", model.base_url, first, tmp_path / "app.log",
                         ASSISTANT_REPO_ROOTS=str(tmp_path / "repos")).start()
        try:
            assert warm_containers(app.proc.pid) == []  # nothing before a chat has the repository

            async def chat() -> None:
                session = await ChatSession(app.url, "alice", USERS["alice"]).open()
                try:
                    readme = (first / "README.md").read_text()
                    await asyncio.to_thread(wait_until, lambda: warm_workspaces(app.proc.pid) == {readme})
                    await session.change_settings({"repo": str(second), "ref": "", "attempts": 1})
                    await asyncio.to_thread(wait_until, lambda: warm_workspaces(app.proc.pid) == {readme, "# second\n"})
                finally:
                    await session.close()
            asyncio.run(chat())
            pid = app.proc.pid
        finally:
            app.stop()
    assert warm_containers(pid) == []
