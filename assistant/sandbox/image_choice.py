"""Which image a job's sandbox runs: the image the repository names in .assistant/config.toml, else the toolchain
image its files call for (built on first use), else the default one.

The repository's `[sandbox]` table (read from the host mirror, as committed):

    [sandbox]
    image = "my-team/sandbox:2"     # an image on the engine; it needs python3 and bash (the command server's)
    toolchains = ["node", "go"]     # instead of detection: the toolchain image with these (or [] for none)

With several users a repository may name only the images the settings allow (ASSISTANT_SANDBOX_ALLOWED_IMAGES),
since an image is code that runs with the job's network during setup."""

from __future__ import annotations

import threading
import tomllib
from dataclasses import dataclass
from typing import Callable

from .base import SandboxConfig, SandboxError
from .engine import EngineSpec, docker_client
from .setup_commands import ecosystems
from .toolchains import TOOLCHAINS, ensure_toolchain_image, toolchain_image_name, toolchain_image_status

REPO_CONFIG = ".assistant/config.toml"
# Runs in a candidate image: the command server is a Python 3 program and commands run with bash.
IMAGE_CHECK = ("import shutil, sys; ok = sys.version_info >= (3, 8) and shutil.which('bash'); "
               "print(sys.version.split()[0]); sys.exit(0 if ok else 3)")


@dataclass(frozen=True)
class ImageChoice:
    image: str
    toolchains: tuple[str, ...] = ()
    why: str = "the default image"


def repo_sandbox_table(text: str | None) -> dict:
    if not text:
        return {}
    try:
        table = tomllib.loads(text).get("sandbox", {})
    except tomllib.TOMLDecodeError as exc:
        raise SandboxError(f"the repository's {REPO_CONFIG} is not valid TOML ({exc}); fix it or remove it") from None
    if not isinstance(table, dict):
        raise SandboxError(f"[sandbox] in the repository's {REPO_CONFIG} must be a table")
    unknown = sorted(set(table) - {"image", "toolchains"})
    if unknown:
        raise SandboxError(f"[sandbox] in the repository's {REPO_CONFIG} has unknown keys {', '.join(unknown)}: "
                           "it takes image and toolchains")
    image = table.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image)):
        raise SandboxError(f'[sandbox] image in the repository\'s {REPO_CONFIG} must be an image name such as '
                           '"my-team/sandbox:2"')
    names = table.get("toolchains")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SandboxError(f"[sandbox] toolchains in the repository's {REPO_CONFIG} must be a list such as "
                               f"[\"node\"] (known: {', '.join(TOOLCHAINS)})")
        unknown = [n for n in names if n not in TOOLCHAINS]
        if unknown:
            raise SandboxError(f"[sandbox] toolchains in the repository's {REPO_CONFIG} names unknown toolchains "
                               f"{', '.join(unknown)}: choose from {', '.join(TOOLCHAINS)}")
    return table


def choose_image(config: SandboxConfig, source, *, backend: str = "docker", engine: EngineSpec | None = None,
                 build: bool = True, on_log: Callable[[str], None] = lambda _line: None) -> ImageChoice | None:
    """The job's image. `build=False` (the warm pool) gives None where a toolchain image would have to be built
    first. Bad names, refused names and unfit images raise a SandboxError that says what to do."""
    if backend != "docker":
        return ImageChoice(config.image, why="the host's own tools (no container image)")
    table = repo_sandbox_table(source.read(REPO_CONFIG))
    named = table.get("image")
    if named:
        return _named_image(config, named, engine, build, on_log)
    if "toolchains" in table:
        names, why = sorted(set(table["toolchains"])), f"named in {REPO_CONFIG}"
    elif config.toolchain_images:
        names, why = ecosystems(source), "detected from the repository's files"
    else:
        names, why = [], ""
    if not names:
        return ImageChoice(config.image)
    image, ready, _ = toolchain_image_status(config.image, names, engine)
    if not ready:
        if not build:
            return None
        ensure_toolchain_image(config.image, names, on_log=on_log, engine=engine)
    return ImageChoice(image, tuple(names), f"{', '.join(names)} toolchain image ({why})")


def _named_image(config: SandboxConfig, named: str, engine: EngineSpec | None, build: bool,
                 on_log: Callable[[str], None]) -> ImageChoice | None:
    ours = {config.image} | {toolchain_image_name(config.image, [name]) for name in TOOLCHAINS}
    if config.allowed_images is not None and named not in ours and named not in config.allowed_images:
        allowed = ", ".join(config.allowed_images) or "none"
        raise SandboxError(
            f"the repository's {REPO_CONFIG} names the sandbox image {named}, which this server does not allow "
            f"(several users can log in; allowed: {allowed}). Ask the administrator to add it to "
            "ASSISTANT_SANDBOX_ALLOWED_IMAGES, or remove `image` from its [sandbox] table.")
    toolchain = next((t for t in TOOLCHAINS if named == toolchain_image_name(config.image, [t])), None)
    if toolchain is not None:  # one of ours: built on first use like a detected one
        if not build and not toolchain_image_status(config.image, [toolchain], engine)[1]:
            return None
        ensure_toolchain_image(config.image, [toolchain], on_log=on_log, engine=engine)
        return ImageChoice(named, (toolchain,), f"{toolchain} toolchain image (named in {REPO_CONFIG})")
    check_image(named, engine)
    return ImageChoice(named, why=f"named in {REPO_CONFIG}")


_checked: dict[str, str] = {}  # image id -> the Python version it runs (images are immutable by id)
_checked_lock = threading.Lock()


def check_image(name: str, engine: EngineSpec | None = None) -> str:
    """Prove the image can run the sandbox (python3 3.8+ and bash); its Python version. Once per image id."""
    import docker

    client = docker_client(engine)
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        raise SandboxError(f"the sandbox image {name} named in the repository's {REPO_CONFIG} is not on the Docker "
                           f"engine: build or load it there (`docker load`, `docker build`), or remove the name") from None
    with _checked_lock:
        if image.id in _checked:
            return _checked[image.id]
    try:
        output = client.containers.run(image.id, ["python3", "-c", IMAGE_CHECK], entrypoint=[], network_mode="none",
                                       remove=True, stdout=True, stderr=True, user="0:0")
        version = output.decode(errors="replace").strip()
    except (docker.errors.ContainerError, docker.errors.APIError) as exc:
        raise SandboxError(
            f"the sandbox image {name} cannot run the sandbox: it needs python3 (3.8 or later) and bash, which "
            f"the command server uses ({_short(exc)}). Install them in the image, or name another one.") from None
    with _checked_lock:
        _checked[image.id] = version
    return version


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return text.strip().splitlines()[-1][:300] if text.strip() else type(exc).__name__
