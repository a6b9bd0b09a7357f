"""The proxy image: Debian's squid installed on top of the sandbox image (no registry can be pulled from),
built once and reused while its recipe is unchanged.

On top of the sandbox image rather than a second debootstrap: it shares that image's layers, so the
build is one `apt-get install` (about 15 s) and costs one small layer of disk."""

from __future__ import annotations

import fcntl
import hashlib
import io
import secrets
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from ..sandbox.base import DEFAULT_IMAGE, SandboxError
from ..sandbox.engine import docker_client, ensure_docker
from ..sandbox.image import SUITE
from .apt_sources import APT_DIR, AptSource, read_apt_sources

EGRESS_IMAGE = "assistant-egress:latest"
RECIPE_LABEL = "assistant.egress-image"
PACKAGES = ("squid",)
BUILD_TIMEOUT_S = 900
# Keeps the package's maintainer scripts from starting squid inside the build container.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"
BUILD_SCRIPT = (
    "set -e\n"
    "apt-get update -qq\n"
    f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {' '.join(PACKAGES)}\n"
    "rm -f /usr/sbin/policy-rc.d\n"
    "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb\n"
    "squid -v | head -n 1\n"
)
IMAGE_CHANGES = [
    "USER proxy",
    "WORKDIR /",
    'CMD ["squid", "-N", "-f", "/etc/squid/egress.conf"]',
]
RECIPE = hashlib.sha256("\n".join([BUILD_SCRIPT, POLICY_RC_D, *IMAGE_CHANGES]).encode()).hexdigest()[:16]

_build_lock = threading.Lock()


def proxy_image_status(name: str = EGRESS_IMAGE) -> tuple[bool, str]:
    try:
        image = docker_client().images.get(name)
    except SandboxError as exc:
        return False, str(exc)
    except Exception:
        return False, f"the egress proxy image {name} is missing: run `assistant egress build`"
    if (image.labels or {}).get(RECIPE_LABEL) != RECIPE:
        return False, f"the egress proxy image {name} is from an older recipe: run `assistant egress build`"
    return True, f"image {name} ({image.short_id.removeprefix('sha256:')})"


def ensure_proxy_image(name: str = EGRESS_IMAGE, base: str = DEFAULT_IMAGE, on_log: Callable[[str], None] = print,
                       force: bool = False) -> str:
    """Build the proxy image unless one from the current recipe exists; safe to call from many jobs and
    processes at once (the first builds, the others wait and reuse)."""
    ensure_docker()
    with _build_lock, _machine_lock():
        if not force and proxy_image_status(name)[0]:
            return name
        _build(name, base, on_log)
    return name


class _machine_lock:
    """A lock file, so two processes on this machine do not build the same image at once."""

    def __enter__(self):
        self._file = open(Path(tempfile.gettempdir()) / "assistant-egress-image.lock", "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _build(name: str, base: str, on_log: Callable[[str], None]) -> None:
    import docker

    client = docker_client()
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        raise SandboxError(f"the egress proxy is built on the sandbox image {base}, which is missing: "
                           "run `assistant sandbox build` first") from None
    replaced = _image_id(client, name)
    started = time.monotonic()
    on_log(f"installing {', '.join(PACKAGES)} from Debian into a container of {base}")
    container = client.containers.create(
        base, command=["sh", "-c", BUILD_SCRIPT], user="0:0", working_dir="/", network_mode="bridge",
        name=f"assistant-egress-build-{secrets.token_hex(3)}",
    )
    try:
        container.put_archive("/", _build_files(read_apt_sources(APT_DIR)))
        container.start()
        exit_code = container.wait(timeout=BUILD_TIMEOUT_S).get("StatusCode")
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        if exit_code != 0:
            raise SandboxError(f"installing squid into the proxy image failed (exit {exit_code}):\n{output[-2000:]}")
        on_log(output.strip().splitlines()[-1] if output.strip() else "squid installed")
        repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
        container.commit(repository=repository, tag=tag,
                         changes=IMAGE_CHANGES + [f'LABEL {RECIPE_LABEL}="{RECIPE}"'])
    finally:
        container.remove(force=True)
    if replaced and replaced != _image_id(client, name):
        try:
            client.images.remove(replaced)
        except docker.errors.APIError:
            pass  # a proxy of a running job still uses it
    on_log(f"built {name} in {time.monotonic() - started:.0f} s")


def _image_id(client, name: str) -> str | None:
    try:
        return client.images.get(name).id
    except Exception:
        return None


def _build_files(host_sources: list[AptSource]) -> bytes:
    """policy-rc.d, and the host's sources for this Debian release (with its security suite) in place of
    the single mirror the sandbox image was bootstrapped from; none found keeps the image's own."""
    files = {"usr/sbin/policy-rc.d": (POLICY_RC_D, 0o755)}
    release = [s for s in host_sources if s.suite == SUITE or s.suite.startswith(SUITE + "-")]
    if release:
        files["etc/apt/sources.list"] = ("".join(source.line() + "\n" for source in release), 0o644)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, (text, mode) in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
