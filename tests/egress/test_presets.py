"""Preset hosts come from the real package clients' configuration (pip, npm, apt); nothing is fetched."""

import os
import shutil
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from assistant.egress.apt_sources import read_apt_sources
from assistant.egress.presets import debian_package_hosts, npm_package_hosts, python_package_hosts


def _pip_default_hosts() -> tuple[str, ...]:
    """What pip itself says its built-in index and file host are."""
    script = ("from pip._internal.models.index import PyPI; "
              "print(PyPI.netloc); print(PyPI.file_storage_domain)")
    return tuple(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
                 .stdout.split())


def test_python_preset_without_an_index_setting_is_pips_default(monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip then reads no configuration file at all
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/wheels/simple")
    found = python_package_hosts()
    assert found.hosts == _pip_default_hosts()
    assert found.tls_ports == ()


def test_python_preset_follows_pips_configured_index(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example.invalid:8443/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "http://extra.example.invalid/simple file:///opt/local")
    found = python_package_hosts()
    assert found.hosts == ("mirror.example.invalid", "extra.example.invalid")
    assert found.tls_ports == (8443,)
    assert any("files it links to on other hosts" in note for note in found.notes)


def test_python_preset_says_so_when_pip_cannot_be_asked(tmp_path):
    found = python_package_hosts(str(tmp_path / "no-python"))
    assert found.hosts == () and "could not read pip's configuration" in found.notes[0]


def test_npm_preset_follows_npms_registry_setting(monkeypatch):
    npm = shutil.which("npm")
    if not npm:
        pytest.skip("npm is not installed on this machine")
    monkeypatch.setenv("npm_config_registry", "https://npm.example.invalid/")
    assert npm_package_hosts(npm).hosts == ("npm.example.invalid",)
    monkeypatch.delenv("npm_config_registry")
    configured = subprocess.run([npm, "config", "get", "registry"], capture_output=True, text=True).stdout.strip()
    assert npm_package_hosts(npm).hosts == (urlsplit(configured).hostname,)


def test_npm_preset_without_npm():
    found = npm_package_hosts(None)
    assert found.hosts == () and "npm is not installed" in found.notes[0]


def test_apt_sources_in_both_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example.invalid/debian bookworm main contrib\n"
        "deb-src http://src.example.invalid/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: https://two.example.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "\n"
        "Types: deb\nURIs: http://off.example.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n")
    (tmp_path / "sources.list.d" / "extra.list.disabled").write_text("deb http://never.example.invalid/ x main\n")
    sources = read_apt_sources(tmp_path)
    assert [(s.uri, s.suite, s.components) for s in sources] == [
        ("http://one.example.invalid/debian", "bookworm", ("main", "contrib")),
        ("https://two.example.invalid/debian", "bookworm", ("main",)),
        ("https://two.example.invalid/debian", "bookworm-updates", ("main",)),
    ]
    assert sources[0].line() == "deb http://one.example.invalid/debian bookworm main contrib"
    assert debian_package_hosts(tmp_path).hosts == ("one.example.invalid", "two.example.invalid")


def test_debian_preset_without_sources_says_so(tmp_path):
    found = debian_package_hosts(tmp_path)
    assert found.hosts == () and "no http or https source" in found.notes[0]
