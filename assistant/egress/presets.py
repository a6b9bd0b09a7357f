"""Allowlist presets whose hosts come from this machine's own package clients, read when a policy is
resolved: pip's index settings (else pip's built-in default), npm's registry settings, apt's sources.

No host name is written here: change the client's configuration and the preset follows."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .apt_sources import APT_DIR, read_apt_sources

PYTHON_PACKAGES = "python-packages"
NPM_PACKAGES = "npm-packages"
DEBIAN_PACKAGES = "debian-packages"
PACKAGE_REGISTRIES = "package-registries"
PRESETS: dict[str, tuple[str, ...]] = {
    PYTHON_PACKAGES: (PYTHON_PACKAGES,),
    NPM_PACKAGES: (NPM_PACKAGES,),
    DEBIAN_PACKAGES: (DEBIAN_PACKAGES,),
    PACKAGE_REGISTRIES: (PYTHON_PACKAGES, NPM_PACKAGES, DEBIAN_PACKAGES),
}
CLIENT_TIMEOUT_S = 60

# pip's built-in default index and the host it serves files from, for when no index is configured
# (`pip config list` shows only what is configured).
_PIP_DEFAULTS = ("import json; from pip._internal.models.index import PyPI; "
                 "print(json.dumps([PyPI.simple_url, 'https://' + PyPI.file_storage_domain + '/']))")
PIP_URL_KEYS = ("index-url", "extra-index-url", "find-links")


@dataclass(frozen=True)
class PresetHosts:
    """What one preset resolved to on this machine; notes say what was skipped and why."""
    preset: str
    hosts: tuple[str, ...]
    tls_ports: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()


def preset_hosts(preset: str, *, python: str = sys.executable, npm: str | None = None,
                 apt_dir: Path = APT_DIR) -> PresetHosts:
    if preset == PYTHON_PACKAGES:
        return python_package_hosts(python)
    if preset == NPM_PACKAGES:
        return npm_package_hosts(npm if npm is not None else shutil.which("npm"))
    if preset == DEBIAN_PACKAGES:
        return debian_package_hosts(apt_dir)
    raise KeyError(preset)


def python_package_hosts(python: str = sys.executable) -> PresetHosts:
    configured = _pip_configured_urls(python)
    if configured is None:
        return PresetHosts(PYTHON_PACKAGES, (), notes=(f"could not read pip's configuration with {python}",))
    if configured["index-url"]:
        hosts = _hosts_of(PYTHON_PACKAGES, configured["index-url"] + configured["extra-index-url"]
                          + configured["find-links"])
        return _with_note(hosts, "pip's configured index; files it links to on other hosts are not included")
    defaults = _run_json([python, "-c", _PIP_DEFAULTS])
    if not isinstance(defaults, list):
        return PresetHosts(PYTHON_PACKAGES, (), notes=(f"could not read pip's default index with {python}",))
    return _hosts_of(PYTHON_PACKAGES, defaults + configured["extra-index-url"] + configured["find-links"])


def _pip_configured_urls(python: str) -> dict[str, list[str]] | None:
    """Index settings from `pip config list` (files and PIP_* variables), by key, in pip's order."""
    try:
        completed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                   timeout=CLIENT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    urls: dict[str, list[str]] = {key: [] for key in PIP_URL_KEYS}
    for line in completed.stdout.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name in urls:
            try:
                urls[name] += str(ast.literal_eval(value)).split()
            except (ValueError, SyntaxError):
                urls[name] += value.strip("'\"").split()
    return urls


def _run_json(argv: list[str]):
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
        return json.loads(completed.stdout) if completed.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return None


def npm_package_hosts(npm: str | None) -> PresetHosts:
    if not npm:
        return PresetHosts(NPM_PACKAGES, (), notes=("npm is not installed on this machine, so its registry is unknown",))
    settings = _run_json([npm, "config", "list", "--json"])
    if not isinstance(settings, dict):
        return PresetHosts(NPM_PACKAGES, (), notes=("`npm config list --json` gave no answer",))
    # "registry" plus scoped ones such as "@company:registry".
    urls = [str(value) for key, value in settings.items() if key == "registry" or key.endswith(":registry")]
    return _hosts_of(NPM_PACKAGES, urls)


def debian_package_hosts(apt_dir: Path = APT_DIR) -> PresetHosts:
    return _hosts_of(DEBIAN_PACKAGES, [source.uri for source in read_apt_sources(apt_dir)])


def _hosts_of(preset: str, urls: list[str]) -> PresetHosts:
    hosts: list[str] = []
    ports: list[int] = []
    notes: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            if parts.scheme and parts.scheme != "file":
                notes.append(f"skipped {parts.scheme}: source (only http and https pass the proxy)")
            continue
        if parts.hostname not in hosts:
            hosts.append(parts.hostname)
        if parts.scheme == "https" and parts.port and parts.port not in ports:
            ports.append(parts.port)
    if not hosts:
        notes.append("no http or https source is configured")
    return PresetHosts(preset, tuple(hosts), tuple(ports), tuple(notes))


def _with_note(hosts: PresetHosts, note: str) -> PresetHosts:
    return PresetHosts(hosts.preset, hosts.hosts, hosts.tls_ports, hosts.notes + (note,))
