"""Which setup commands a job runs: the request's, else the repo's script, else what the repo looks like."""

from __future__ import annotations

import configparser
import shlex
import tomllib
from pathlib import Path

from .base import AGENT_VENV

REPO_SCRIPT = ".assistant/setup.sh"
TEST_EXTRAS = ("test", "tests", "testing", "dev")


def setup_commands(workspace: Path, requested: list[str] | None) -> list[str]:
    if requested is not None:
        return [command for command in requested if command.strip()]
    if (workspace / REPO_SCRIPT).is_file():
        return [f"bash {REPO_SCRIPT}"]
    return detect_setup(workspace)


def detect_setup(workspace: Path) -> list[str]:
    commands: list[str] = []
    requirements = sorted(
        path.name for path in workspace.glob("*requirements*.txt") if path.is_file()
    )
    installable = any((workspace / name).is_file() for name in ("pyproject.toml", "setup.py", "setup.cfg"))
    if installable or requirements:
        commands.append(f"python3 -m venv {AGENT_VENV}")
        commands += [f"pip install -r {shlex.quote(name)}" for name in requirements]
        if installable:
            extra = _test_extra(workspace)
            target = f".[{extra}]" if extra else "."
            commands.append(f"pip install -e {shlex.quote(target)}")
    if (workspace / "package-lock.json").is_file():
        commands.append("npm ci")
    return commands


def _test_extra(workspace: Path) -> str | None:
    """The repo's test extra (pip only warns about a missing one, so it must be looked up)."""
    declared: set[str] = set()
    pyproject = workspace / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(errors="replace"))
        except tomllib.TOMLDecodeError:
            data = {}
        declared |= set(data.get("project", {}).get("optional-dependencies", {}) or {})
        poetry = data.get("tool", {}).get("poetry", {})
        declared |= set(poetry.get("extras", {}) or {})
    setup_cfg = workspace / "setup.cfg"
    if setup_cfg.is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read_string(setup_cfg.read_text(errors="replace"))
            if parser.has_section("options.extras_require"):
                declared |= set(parser.options("options.extras_require"))
        except configparser.Error:
            pass
    setup_py = workspace / "setup.py"
    if setup_py.is_file():
        text = setup_py.read_text(errors="replace")
        declared |= {name for name in TEST_EXTRAS if f'"{name}"' in text or f"'{name}'" in text}
    return next((name for name in TEST_EXTRAS if name in declared), None)
