"""The sandbox: one isolated computer per job, set up with network, then offline."""

from .base import (
    DEFAULT_IMAGE, ExecResult, PreparedSandbox, PrepareRequest, RepoError, Sandbox, SandboxConfig, SandboxError,
    SetupFailed,
)
from .diff import WorkspaceDiff
from .engine import docker_status, resolve_backend, sweep_orphans
from .image import build_image, image_status
from .output import head_and_tail
from .prepare import prepare
from .workspace import FileTexts, PatchResult, SetupChanges, Workspace, workspace_diff

__all__ = [
    "DEFAULT_IMAGE", "ExecResult", "PreparedSandbox", "PrepareRequest", "RepoError", "Sandbox", "SandboxConfig",
    "SandboxError", "SetupFailed", "WorkspaceDiff", "build_image", "docker_status",
    "head_and_tail", "image_status", "prepare", "resolve_backend", "sweep_orphans", "workspace_diff",
    "Workspace", "FileTexts", "PatchResult", "SetupChanges",
]
