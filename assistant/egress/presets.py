"""Allowlist presets whose hosts come from this machine's own package clients, read when a policy is
resolved: pip's index settings (else pip's built-in default), npm's registry settings, apt's sources, and for
the ecosystems of the toolchain images Go's module proxy and checksum database (`go env`), RubyGems' sources
(`gem sources`) and Composer's repositories (`composer config`) — from the client on this machine, else from the
one in the toolchain image (what the agent's own client would use). Cargo and Maven name their registries in no
configuration they print, so they have no preset (and the toolchain images point them at Debian's packages).

No host name is written here: change the client's configuration and the preset follows."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .apt_sources import APT_DIR, read_apt_sources

PYTHON_PACKAGES = "python-packages"
NPM_PACKAGES = "npm-packages"
DEBIAN_PACKAGES = "debian-packages"
GO_MODULES = "go-modules"
RUBY_GEMS = "ruby-gems"
PHP_PACKAGES = "php-packages"
PACKAGE_REGISTRIES = "package-registries"
PRESETS: dict[str, tuple[str, ...]] = {
    PYTHON_PACKAGES: (PYTHON_PACKAGES,),
    NPM_PACKAGES: (NPM_PACKAGES,),
    DEBIAN_PACKAGES: (DEBIAN_PACKAGES,),
    GO_MODULES: (GO_MODULES,),
    RUBY_GEMS: (RUBY_GEMS,),
    PHP_PACKAGES: (PHP_PACKAGES,),
    PACKAGE_REGISTRIES: (PYTHON_PACKAGES, NPM_PACKAGES, DEBIAN_PACKAGES, GO_MODULES, RUBY_GEMS, PHP_PACKAGES),
}
# The toolchain image whose client a preset reads when this machine has no such client.
PRESET_TOOLCHAIN = {GO_MODULES: ("go", "go"), RUBY_GEMS: ("ruby", "gem"), PHP_PACKAGES: ("php", "composer")}
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
    if preset in PRESET_TOOLCHAIN:
        return toolchain_client_hosts(preset)
    raise KeyError(preset)


Runner = Callable[[list[str]], "str | None"]  # runs a client command line; its standard output, None on failure


def toolchain_client_hosts(preset: str, run: Runner | None = None) -> PresetHosts:
    """A toolchain ecosystem's registry hosts, from its client's own configuration."""
    toolchain, client = PRESET_TOOLCHAIN[preset]
    run, where = (run, "") if run is not None else _client_runner(toolchain, client)
    if run is None:
        return PresetHosts(preset, (), notes=(where,))
    if preset == GO_MODULES:
        return go_module_hosts(run, where)
    if preset == RUBY_GEMS:
        output = run(["gem", "sources", "--list"])
        urls = [line.strip() for line in (output or "").splitlines() if "://" in line]
        return _noted(_hosts_of(preset, urls), where, output is None, "`gem sources --list`")
    output = run(["composer", "config", "--global", "--list", "--no-interaction"])
    urls = [line.split("]", 1)[1].strip() for line in (output or "").splitlines()
            if line.startswith("[repositories.") and line.split("]", 1)[0].endswith(".url")]
    return _noted(_hosts_of(preset, urls), where, output is None, "`composer config --global --list`")


def go_module_hosts(run: Runner, where: str = "") -> PresetHosts:
    """GOPROXY's proxies (`direct` fetches from version control hosts, which cannot be listed) and GOSUMDB's
    checksum database: a bare name is served at https://NAME, `NAME+KEY URL` at URL."""
    output = run(["go", "env", "-json", "GOPROXY", "GOSUMDB"])
    try:
        env = json.loads(output) if output else None
    except json.JSONDecodeError:
        env = None
    if not isinstance(env, dict):
        return _noted(PresetHosts(GO_MODULES, ()), where, True, "`go env`")
    urls, notes = [], []
    for entry in re.split(r"[,|]", env.get("GOPROXY", "")):
        entry = entry.strip()
        if entry == "direct":
            notes.append("GOPROXY includes direct (modules fetched from their version control hosts are not included)")
        elif entry and entry != "off":
            urls.append(entry)
    sumdb = env.get("GOSUMDB", "").strip()
    if sumdb and sumdb != "off":
        parts = sumdb.split()
        urls.append(parts[1] if len(parts) > 1 else "https://" + parts[0].split("+", 1)[0])
    found = _hosts_of(GO_MODULES, urls)
    return _noted(PresetHosts(found.preset, found.hosts, found.tls_ports, found.notes + tuple(notes)), where, False, "")


def _noted(found: PresetHosts, where: str, failed: bool, what: str) -> PresetHosts:
    notes = found.notes + ((f"{what} gave no answer",) if failed else ()) + ((where,) if where else ())
    return PresetHosts(found.preset, found.hosts, found.tls_ports, notes)


def _client_runner(toolchain: str, client: str) -> tuple[Runner | None, str]:
    """The client on this machine, else the one in the toolchain image (run offline), else (None, why)."""
    env = {**os.environ, "COMPOSER_ALLOW_SUPERUSER": "1", "COMPOSER_NO_INTERACTION": "1"}
    if shutil.which(client):
        def on_host(argv: list[str]) -> str | None:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, env=env)
            except (OSError, subprocess.TimeoutExpired):
                return None
            return done.stdout if done.returncode == 0 else None
        return on_host, ""
    try:
        from ..sandbox.base import DEFAULT_IMAGE
        from ..sandbox.engine import docker_client
        from ..sandbox.toolchains import toolchain_image_status
        image, ready, _ = toolchain_image_status(DEFAULT_IMAGE, [toolchain])
        client_api = docker_client()
    except Exception:
        ready = False
    if not ready:
        return None, (f"{client} is not installed on this machine and the {toolchain} toolchain image is not built "
                      f"(`assistant sandbox build --lang {toolchain}`), so its registry is unknown")

    def in_image(argv: list[str]) -> str | None:
        try:
            output = client_api.containers.run(image, argv, network_mode="none", remove=True, stdout=True, stderr=False)
        except Exception:
            return None
        return output.decode(errors="replace")
    return in_image, f"read from {client} in the toolchain image {image}"


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
