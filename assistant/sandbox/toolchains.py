"""Toolchain images: the sandbox image with one ecosystem's Debian packages added (Node.js, Go, Rust, Java, Ruby,
PHP), built on this machine on first use, since no container registry is reachable.

Why one layer per ecosystem on top of the default image rather than one image with every toolchain: a Python
repository keeps the small default image (its cold start and its build stay as they were), each ecosystem costs
its own build time and disk only once somebody needs it, and a layer shares the default image's ~500 MB
(bench/sandbox.py measures all three shapes). A repository with several ecosystems gets one image with the union
of their packages.

Where a language's own registry cannot be reached (only PyPI, the npm registry and Debian's archive are, here),
the image points the client at what Debian packages instead: cargo at the crates `librust-*-dev` install under
/usr/share/cargo/registry (a vendored directory source), Maven at Debian's Maven repository under
/usr/share/maven-repo (its JUnit and plugins included), and Debian's Gradle (4.4.1, which runs on JDK 17) at the
same repository through an init script that replaces every remote repository a build names. The host's CA bundle the
default image trusts is kept through the install (package triggers rebuild the system bundle without it)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import secrets
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .base import AGENT_GID, AGENT_HOME, AGENT_UID, SandboxError
from .engine import EngineSpec, docker_client

TOOLCHAIN_LABEL = "assistant.toolchains"     # comma-separated toolchain names of the image
RECIPE_LABEL = "assistant.toolchain-recipe"  # what the image was built from (packages, files, base image id)
BUILD_TIMEOUT_S = 1800
CARGO_REGISTRY = "/usr/share/cargo/registry"
MAVEN_REPO = "/usr/share/maven-repo"
CARGO_CONFIG = f"""# Crates come from what Debian's librust-*-dev packages install (a vendored directory source): the
# crates registry is not reachable from this machine's sandboxes.
[source.crates-io]
replace-with = "debian-packages"

[source.debian-packages]
directory = "{CARGO_REGISTRY}"
"""
MAVEN_SETTINGS = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Artifacts and plugins come from Debian's Maven repository (what Debian's Java packages install): Maven
     Central is not reachable from this machine's sandboxes. -->
<settings>
  <mirrors>
    <mirror>
      <id>debian-packages</id>
      <mirrorOf>*</mirrorOf>
      <url>file://{MAVEN_REPO}</url>
    </mirror>
  </mirrors>
</settings>
"""
GRADLE_HOME = "/usr/share/gradle"  # Debian's Gradle; a repository's own (./gradlew) lives elsewhere
GRADLE_INIT = f"""// With Debian's Gradle, every remote repository a build names (mavenCentral(), a plugin or company one) is
// replaced by Debian's Maven repository (what Debian's Java packages install): none is reachable from these
// sandboxes. A repository's own Gradle (./gradlew) keeps the repositories its build names.
if (gradle.gradleHomeDir?.canonicalPath == '{GRADLE_HOME}') {{
    def debianOnly = {{ RepositoryHandler repos ->
        repos.all {{ ArtifactRepository repo ->
            if ((repo instanceof MavenArtifactRepository || repo instanceof IvyArtifactRepository)
                    && repo.url?.scheme in ['http', 'https']) {{
                repos.remove(repo)
            }}
        }}
        repos.maven {{ url 'file://{MAVEN_REPO}' }}
    }}
    allprojects {{
        debianOnly(buildscript.repositories)
        debianOnly(repositories)
        // A failed assertion's message (expected and actual) in the output, not only its class and line.
        tasks.withType(Test) {{ testLogging.exceptionFormat = 'full' }}
    }}
}}
"""
# Debian's Gradle asks gradle-debian-helper (a Debian packaging tool, not installed) about every dependency taken
# from {MAVEN_REPO} and prints a stack trace when it is missing; the property turns that lookup off.
GRADLE_PROPERTIES = "systemProp.gradle-debian-helper.hook.enabled=false\n"


@dataclass(frozen=True)
class Toolchain:
    name: str
    packages: tuple[str, ...]
    version: str                                  # prints the toolchain's versions at the end of the build
    env: tuple[tuple[str, str], ...] = ()
    home_files: tuple[tuple[str, str], ...] = ()  # (path under the agent's home, text)
    root_steps: tuple[str, ...] = ()              # shell lines run as root after the install
    notes: tuple[str, ...] = field(default=(), compare=False)


TOOLCHAINS: dict[str, Toolchain] = {t.name: t for t in (
    Toolchain("node", ("nodejs", "npm"), "node --version && npm --version",
              env=(("npm_config_update_notifier", "false"), ("npm_config_fund", "false"),
                   ("NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt"))),
    Toolchain("go", ("golang-go",), "go version",
              env=(("GOPATH", f"{AGENT_HOME}/go"), ("GOTOOLCHAIN", "local"))),
    Toolchain("rust", ("rustc", "cargo"), "rustc --version && cargo --version",
              # Build output outside the workspace: no `target/` in a diff, and the setup cache keeps it.
              env=(("CARGO_HOME", f"{AGENT_HOME}/.cargo"), ("CARGO_TARGET_DIR", f"{AGENT_HOME}/.cache/cargo-target")),
              home_files=((".cargo/config.toml", CARGO_CONFIG),),
              root_steps=(f"mkdir -p {CARGO_REGISTRY}",)),
    Toolchain("java", ("default-jdk-headless", "maven", "gradle", "junit4", "libmaven-compiler-plugin-java",
                       "libmaven-resources-plugin-java", "libsurefire-java", "libmaven-jar-plugin-java"),
              "java -version 2>&1 | head -n 1 && mvn -B -v 2>/dev/null | head -n 1 "
              "&& gradle --version 2>/dev/null | grep ^Gradle",
              home_files=((".m2/settings.xml", MAVEN_SETTINGS),
                          (".gradle/init.d/debian-maven-repo.gradle", GRADLE_INIT),
                          (".gradle/gradle.properties", GRADLE_PROPERTIES)),
              notes=("Gradle is bookworm's 4.4.1: Groovy build scripts only (no Kotlin DSL), JUnit 4 (no "
                     "useJUnitPlatform, which came in 4.6); a repository with gradlew runs its own Gradle",)),
    Toolchain("ruby", ("ruby", "ruby-bundler", "rake"), "ruby --version && bundle --version",
              env=(("BUNDLE_PATH", f"{AGENT_HOME}/.bundle"), ("GEM_HOME", f"{AGENT_HOME}/.gem"))),
    Toolchain("php", ("php-cli", "php-xml", "php-mbstring", "composer"), "php --version | head -n 1 && composer --version",
              env=(("COMPOSER_HOME", f"{AGENT_HOME}/.composer"), ("COMPOSER_NO_INTERACTION", "1"))),
)}


def toolchain_image_name(base: str, names: list[str] | tuple[str, ...]) -> str:
    """assistant-sandbox:latest + [go, node] -> assistant-sandbox-go-node:latest (distinct from any other image)."""
    repository, tag = _split(base)
    return f"{repository}-{'-'.join(sorted(names))}:{tag}"


def _split(name: str) -> tuple[str, str]:
    if ":" in name.rsplit("/", 1)[-1]:
        repository, _, tag = name.rpartition(":")
        return repository, tag
    return name, "latest"


def build_script(chains: list[Toolchain]) -> str:
    packages = sorted({p for chain in chains for p in chain.packages})
    lines = [
        "set -e",
        "cp /etc/ssl/certs/ca-certificates.crt /tmp/host-ca-bundle.crt",
        "nice -n 10 apt-get update -q",
        "DEBIAN_FRONTEND=noninteractive nice -n 10 apt-get install -y -q --no-install-recommends "
        + " ".join(packages),
        # Package triggers rebuild the system bundle from Debian's CAs: the host's one, added at image build, goes back.
        "cp /tmp/host-ca-bundle.crt /etc/ssl/certs/ca-certificates.crt && rm /tmp/host-ca-bundle.crt",
        "rm -f /usr/sbin/policy-rc.d",
        "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb",
    ]
    for chain in chains:
        lines += list(chain.root_steps)
    lines.append(f"export HOME={AGENT_HOME}")
    for chain in chains:
        exports = " ".join(f"{key}={value}" for key, value in chain.env)
        lines.append(f"echo \"{chain.name}: $({exports + ' ' if exports else ''}sh -c '{chain.version}' | tr '\\n' ' ')\"")
    lines.append(f"chown -R {AGENT_UID}:{AGENT_GID} {AGENT_HOME}")  # after the checks, which may write there as root
    return "\n".join(lines) + "\n"


def image_changes(chains: list[Toolchain], recipe: str) -> list[str]:
    changes = [f"ENV {key}={value}" for chain in chains for key, value in chain.env]
    return changes + [
        f"USER {AGENT_UID}:{AGENT_GID}",
        "WORKDIR /workspace",
        'CMD ["/bin/bash"]',
        f'LABEL {TOOLCHAIN_LABEL}="{",".join(c.name for c in chains)}"',
        f'LABEL {RECIPE_LABEL}="{recipe}"',
    ]


def recipe(chains: list[Toolchain], base_id: str) -> str:
    material = [build_script(chains), base_id, *(f"{c.name}:{c.env}:{c.home_files}" for c in chains)]
    return hashlib.sha256("\n".join(material).encode()).hexdigest()[:16]


def resolve(names: list[str] | tuple[str, ...]) -> list[Toolchain]:
    unknown = [name for name in names if name not in TOOLCHAINS]
    if unknown:
        raise SandboxError(f"unknown toolchain {', '.join(unknown)}: choose from {', '.join(TOOLCHAINS)}")
    return [TOOLCHAINS[name] for name in sorted(set(names))]


def toolchain_image_status(base: str, names: list[str] | tuple[str, ...], engine: EngineSpec | None = None
                           ) -> tuple[str, bool, str]:
    """(image name, ready, what to tell): ready when it exists and was built from the current recipe on the
    current base image (a rebuilt base makes it stale)."""
    chains = resolve(names)
    name = toolchain_image_name(base, [c.name for c in chains])
    client = docker_client(engine)
    base_id = _image_id(client, base)
    if base_id is None:
        return name, False, f"the base image {base} is missing: run `assistant sandbox build`"
    current = _image(client, name)
    if current is None:
        return name, False, f"image {name} is not built yet (`assistant sandbox build --lang {','.join(names)}`)"
    if (current.labels or {}).get(RECIPE_LABEL) != recipe(chains, base_id):
        return name, False, f"image {name} is from an older recipe or base image: it is rebuilt on first use"
    size_mb = current.attrs.get("Size", 0) / 1e6
    return name, True, f"image {name} ({size_mb:.0f} MB)"


def built_toolchain_images(engine: EngineSpec | None = None) -> list[tuple[str, float]]:
    """(name, size in MB) of the toolchain images on the engine (what `assistant doctor` lists)."""
    found = []
    for image in docker_client(engine).images.list(filters={"label": RECIPE_LABEL}):
        if "assistant.setup-cache" in (image.labels or {}):  # a set-up job's commit inherits the labels
            continue
        for tag in image.tags:
            found.append((tag, image.attrs.get("Size", 0) / 1e6))
    return sorted(found)


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def ensure_toolchain_image(base: str, names: list[str] | tuple[str, ...], *, on_log: Callable[[str], None] = print,
                           engine: EngineSpec | None = None, force: bool = False) -> str:
    """The toolchain image for `names` on `base`, built when missing or stale; safe to call from many jobs and
    processes at once (the first builds, the others wait and reuse it)."""
    chains = resolve(names)
    name = toolchain_image_name(base, [c.name for c in chains])
    with _locks_guard:
        lock = _locks.setdefault(name, threading.Lock())
    with lock, _machine_lock(name):
        _, ready, _ = toolchain_image_status(base, names, engine)
        if ready and not force:
            return name
        _build(name, base, chains, on_log, engine)
    return name


class _machine_lock:
    """A lock file per image, so two processes on this machine do not build the same image at once."""

    def __init__(self, name: str):
        self._path = Path(tempfile.gettempdir()) / f"assistant-image-{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock"

    def __enter__(self):
        self._file = open(self._path, "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _build(name: str, base: str, chains: list[Toolchain], on_log: Callable[[str], None],
           engine: EngineSpec | None) -> None:
    import docker

    client = docker_client(engine)
    base_id = _image_id(client, base)
    if base_id is None:
        raise SandboxError(f"the toolchain image {name} is built on the sandbox image {base}, which is missing: "
                           "run `assistant sandbox build` first")
    replaced = _image_id(client, name)
    started = time.monotonic()
    packages = sorted({p for chain in chains for p in chain.packages})
    on_log(f"building the sandbox image {name} once: {', '.join(packages)} from Debian on {base} "
           "(one to three minutes)")
    script = build_script(chains)
    container = client.containers.create(
        base, command=["sh", "-c", script], user="0:0", working_dir="/", network_mode="bridge",
        name=f"assistant-toolchain-build-{secrets.token_hex(3)}", labels={TOOLCHAIN_LABEL: "build"},
    )
    try:
        container.put_archive("/", _build_files(chains))
        container.start()
        tail: list[str] = []
        configured = 0
        for raw in container.logs(stream=True, follow=True):
            for line in raw.decode(errors="replace").splitlines():
                tail = (tail + [line])[-40:]
                if line.startswith("Setting up "):  # npm alone brings some 300 packages: their count is enough
                    configured += 1
                    if configured % 50 == 0 or line.split()[2] in packages:
                        on_log(f"{line} ({configured} packages set up)")
                elif line.startswith(("E: ", "W: ", "Need to get ")) or line.split(":")[0] in {c.name for c in chains}:
                    on_log(line)
        exit_code = container.wait(timeout=BUILD_TIMEOUT_S).get("StatusCode")
        if exit_code != 0:
            raise SandboxError(f"building the sandbox image {name} failed (exit {exit_code}):\n" + "\n".join(tail))
        repository, tag = _split(name)
        container.commit(repository=repository, tag=tag, changes=image_changes(chains, recipe(chains, base_id)))
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
    if replaced and replaced != _image_id(client, name):
        try:
            client.images.remove(replaced)
        except docker.errors.APIError:
            pass  # a setup-cache image or a running job still uses it
    on_log(f"built {name} in {time.monotonic() - started:.0f} s")


def _build_files(chains: list[Toolchain]) -> bytes:
    """policy-rc.d (no service starts in the build), the host's sources for this Debian release (its security
    suite included), and each toolchain's files in the agent's home."""
    from ..egress.apt_sources import APT_DIR, read_apt_sources
    from .image import SUITE

    files: dict[str, tuple[str, int, int]] = {"usr/sbin/policy-rc.d": ("#!/bin/sh\nexit 101\n", 0o755, 0)}
    release = [s for s in read_apt_sources(APT_DIR) if s.suite == SUITE or s.suite.startswith(SUITE + "-")]
    if release:
        files["etc/apt/sources.list"] = ("".join(source.line() + "\n" for source in release), 0o644, 0)
    for chain in chains:
        for path, text in chain.home_files:
            files[f"{AGENT_HOME.lstrip('/')}/{path}"] = (text, 0o644, AGENT_UID)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        made: set[str] = set()
        for path, (text, mode, owner) in files.items():
            parts = path.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory in made or not directory.startswith(AGENT_HOME.lstrip("/") + "/"):
                    continue
                made.add(directory)
                info = tarfile.TarInfo(directory)
                info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, AGENT_UID, AGENT_GID
                tar.addfile(info)
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid = len(data), mode, owner, owner
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _image(client, name: str):
    try:
        return client.images.get(name)
    except Exception:
        return None


def _image_id(client, name: str) -> str | None:
    image = _image(client, name)
    return image.id if image is not None else None
