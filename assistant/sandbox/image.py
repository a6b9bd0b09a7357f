"""Building the default sandbox image from Debian packages, since no container registry is reachable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from .base import AGENT_GID, AGENT_HOME, AGENT_PATH, AGENT_UID, WORKSPACE, SandboxConfig, SandboxError
from .engine import docker_client, ensure_docker

SUITE = "bookworm"
PACKAGES = [
    "bash", "git", "python3", "python3-pip", "python3-venv", "build-essential",
    "ripgrep", "ca-certificates", "procps", "less", "patch", "xz-utils", "unzip",
]
IMAGE_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
IMAGE_LABEL = "assistant.sandbox-image"


def image_status(name: str) -> tuple[bool, str]:
    try:
        client = docker_client()
    except SandboxError as exc:
        return False, str(exc)
    try:
        image = client.images.get(name)
    except Exception:
        return False, f"image {name} is missing: run `assistant sandbox build`"
    size_mb = image.attrs.get("Size", 0) / 1e6
    created = image.attrs.get("Created", "")[:19]
    return True, f"image {name} ({image.short_id.removeprefix('sha256:')}, {size_mb:.0f} MB, created {created})"


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The host's Debian mirror, read from its apt sources so no host name is baked in here."""
    candidates: list[str] = []
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (line.partition(":") for line in stanza.splitlines())
                if not key.startswith("#") and value
            )
            suites = fields.get("suites", "").split()
            if "deb" in fields.get("types", "").split() and SUITE in suites and fields.get("uris"):
                candidates.append(fields["uris"].split()[0])
    legacy = sources_dir / "sources.list"
    if legacy.exists():
        for line in legacy.read_text(errors="replace").splitlines():
            parts = re.sub(r"\[[^\]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                candidates.append(parts[1])
    if not candidates:
        raise SandboxError(
            f"no Debian {SUITE} mirror found in the host's apt sources ({sources_dir}); "
            "add one, or name an existing image in the settings"
        )
    return candidates[0]


def host_ca_bundle(setting: str | None) -> Path | None:
    """The CA bundle to trust inside the image: the setting, else SSL_CERT_FILE, else the system one."""
    if setting == "":
        return None
    if setting:
        path = Path(setting)
        if not path.is_file():
            raise SandboxError(f"the CA bundle {setting} named in the settings does not exist")
        return path
    for candidate in (os.environ.get("SSL_CERT_FILE"), SYSTEM_BUNDLE):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_image(config: SandboxConfig, on_log: Callable[[str], None] = print, force: bool = False) -> str:
    name = config.image
    ensure_docker()
    client = docker_client()
    if not force:
        try:
            client.images.get(name)
            on_log(f"image {name} already exists (pass force to rebuild)")
            return name
        except Exception:
            pass
    if os.geteuid() != 0:
        raise SandboxError("building the sandbox image runs debootstrap, which needs root: run it with sudo")
    if not shutil.which("debootstrap"):
        raise SandboxError("debootstrap is missing: apt-get install debootstrap")
    mirror = debian_mirror()
    bundle = host_ca_bundle(config.ca_bundle)
    started = time.monotonic()
    package_cache = Path(config.data_dir).resolve() / "cache" / "debootstrap"
    package_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandbox-image-") as scratch:
        root = Path(scratch) / "root"
        on_log(f"debootstrap {SUITE} from {mirror} (about two minutes)")
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", f"--cache-dir={package_cache}",
             SUITE, str(root), mirror],
            on_log,
        )
        _customise_tree(root, bundle, on_log)
        archive = Path(scratch) / "rootfs.tar"
        on_log("packing the root file system")
        with tarfile.open(archive, "w") as tar:
            for entry in sorted(root.iterdir()):
                tar.add(entry, arcname=entry.name)
        on_log(f"importing as {name}")
        repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
        client.api.import_image_from_file(str(archive), repository=repository, tag=tag, changes=_image_changes(bundle))
    on_log(f"built {name} in {time.monotonic() - started:.0f} s")
    return name


def _image_changes(bundle: Path | None) -> list[str]:
    changes = [
        f"ENV PATH={AGENT_PATH}",
        f"ENV HOME={AGENT_HOME}",
        "ENV LANG=C.UTF-8",
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1",
        "ENV PIP_NO_INPUT=1",
        f"USER {AGENT_UID}:{AGENT_GID}",
        f"WORKDIR {WORKSPACE}",
        f'LABEL {IMAGE_LABEL}="1"',
        'CMD ["/bin/bash"]',
    ]
    if bundle is not None:
        changes += [f"ENV {var}={IMAGE_BUNDLE}" for var in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")]
    return changes


def _customise_tree(root: Path, bundle: Path | None, on_log: Callable[[str], None]) -> None:
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write(f"agent:x:{AGENT_UID}:{AGENT_GID}:agent:{AGENT_HOME}:/bin/bash\n")
    with open(root / "etc/group", "a") as group:
        group.write(f"agent:x:{AGENT_GID}:\n")
    if (root / "etc/shadow").exists():
        with open(root / "etc/shadow", "a") as shadow:
            shadow.write("agent:!:19000:0:99999:7:::\n")
    for directory in (AGENT_HOME, WORKSPACE):
        path = root / directory.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, AGENT_UID, AGENT_GID)
    if bundle is not None:
        on_log(f"trusting the host's CA bundle {bundle}")
        target = root / IMAGE_BUNDLE.lstrip("/")
        own = target.read_bytes() if target.exists() else b""
        target.unlink(missing_ok=True)  # it may be a symlink into the tree
        target.write_bytes(own + b"\n" + bundle.read_bytes())
    for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / leftovers).glob("*"):
            if entry.is_file() and entry.name not in ("lock",):
                entry.unlink()


def _run(argv: list[str], on_log: Callable[[str], None]) -> None:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-30:]
        # debootstrap names every package it fetches and configures; the stage changes are enough.
        if line.startswith(("I: Retrieving InRelease", "I: Validating", "I: Installing", "I: Unpacking the base",
                            "I: Configuring the base", "I: Base system", "E:", "W:")):
            on_log(line)
    if process.wait() != 0:
        raise SandboxError(f"{argv[0]} failed (exit {process.returncode}):\n" + "\n".join(tail))
