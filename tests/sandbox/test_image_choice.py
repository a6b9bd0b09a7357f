"""Choosing a job's image: a repository that needs the default image costs no question to the engine."""

from __future__ import annotations

import dataclasses

import pytest

from assistant.sandbox import image_choice
from assistant.sandbox.base import SandboxConfig
from assistant.sandbox.image_choice import choose_image
from assistant.sandbox.repo import prepare_source
from assistant.sandbox.setup_commands import KnownFiles

from .conftest import make_repo


@pytest.fixture
def no_engine(monkeypatch):
    """Any question to the engine fails the test (and records who asked)."""
    asked: list[str] = []

    def refuse(*args, **kwargs):
        asked.append("engine")
        raise AssertionError("the engine was asked")
    monkeypatch.setattr(image_choice, "docker_client", refuse)
    monkeypatch.setattr(image_choice, "toolchain_image_status", refuse)
    monkeypatch.setattr(image_choice, "ensure_toolchain_image", refuse)
    return asked


@pytest.mark.parametrize("detection", [True, False])
def test_a_python_repository_gets_the_default_image_without_asking_the_engine(tmp_path, no_engine, detection):
    repo = make_repo(tmp_path / "py", {"pyproject.toml": "[project]\nname = 'x'\n", "x.py": "X = 1\n",
                                       ".assistant/config.toml": "[agent_internet]\nmode = 'off'\n"})
    config = dataclasses.replace(SandboxConfig(data_dir=tmp_path / "data"), toolchain_images=detection)
    source = KnownFiles(prepare_source(str(repo), None, config.data_dir))
    chosen = choose_image(config, source, backend="docker")
    assert chosen.image == config.image and chosen.toolchains == () and no_engine == []


def test_a_node_repository_asks_the_engine_for_its_toolchain_image(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "node", {"package.json": "{}\n"})
    config = SandboxConfig(data_dir=tmp_path / "data")
    asked = []

    def status(base, names, engine=None):
        asked.append(list(names))
        return "node-image:latest", True, "ready"
    monkeypatch.setattr(image_choice, "toolchain_image_status", status)
    chosen = choose_image(config, KnownFiles(prepare_source(str(repo), None, config.data_dir)), backend="docker")
    assert (chosen.image, chosen.toolchains, asked) == ("node-image:latest", ("node",), [["node"]])
