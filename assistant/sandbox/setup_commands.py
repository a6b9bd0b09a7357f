"""Which setup commands a job runs: the request's, else the repo's script, else what the repo looks like."""

from __future__ import annotations

import configparser
import fnmatch
import shlex
import tomllib
from typing import Protocol

from .base import AGENT_VENV

REPO_SCRIPT = ".assistant/setup.sh"
TEST_EXTRAS = ("test", "tests", "testing", "dev")


class RepoFiles(Protocol):
    """The repository as it was committed (read from the host's mirror, never from a workspace)."""

    def top_level(self) -> list[str]:
        """Top-level names, directories with a trailing slash."""

    def read(self, path: str) -> str | None: ...


def setup_commands(repo: RepoFiles, requested: list[str] | None) -> list[str]:
    if requested is not None:
        return [command for command in requested if command.strip()]
    if repo.read(REPO_SCRIPT) is not None:
        return [f"bash {REPO_SCRIPT}"]
    return detect_setup(repo)


def detect_setup(repo: RepoFiles) -> list[str]:
    commands: list[str] = []
    files = {name for name in repo.top_level() if not name.endswith("/")}
    requirements = sorted(name for name in files if fnmatch.fnmatch(name, "*requirements*.txt"))
    installable = any(name in files for name in ("pyproject.toml", "setup.py", "setup.cfg"))
    if installable or requirements:
        commands.append(f"python3 -m venv {AGENT_VENV}")
        commands += [f"pip install -r {shlex.quote(name)}" for name in requirements]
        if installable:
            extra = _test_extra(repo)
            target = f".[{extra}]" if extra else "."
            commands.append(f"pip install -e {shlex.quote(target)}")
    if "package-lock.json" in files:
        commands.append("npm ci")
    return commands


def _test_extra(repo: RepoFiles) -> str | None:
    """The repo's test extra (pip only warns about a missing one, so it must be looked up)."""
    declared: set[str] = set()
    pyproject = repo.read("pyproject.toml")
    if pyproject is not None:
        try:
            data = tomllib.loads(pyproject)
        except tomllib.TOMLDecodeError:
            data = {}
        declared |= set(data.get("project", {}).get("optional-dependencies", {}) or {})
        poetry = data.get("tool", {}).get("poetry", {})
        declared |= set(poetry.get("extras", {}) or {})
    setup_cfg = repo.read("setup.cfg")
    if setup_cfg is not None:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(setup_cfg)
            if parser.has_section("options.extras_require"):
                declared |= set(parser.options("options.extras_require"))
        except configparser.Error:
            pass
    text = repo.read("setup.py")
    if text is not None:
        declared |= {name for name in TEST_EXTRAS if f'"{name}"' in text or f"'{name}'" in text}
    return next((name for name in TEST_EXTRAS if name in declared), None)
