"""A sandbox over a temporary directory, for testing the job pipeline without Docker.

It implements the Sandbox protocol (assistant/sandbox/base.py): commands run as host subprocesses in the
directory, and `call` runs the real workspace operations (assistant/sandbox/guest/workspace_ops.py) in-process with
their WORKSPACE pointed at it. It isolates nothing: only test code and test repositories run in it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from assistant.sandbox.guest import apply_patch as apply_patch_engine
from assistant.sandbox.guest import workspace_ops
from assistant.sandbox.base import WORKSPACE, ExecResult, SandboxError

# workspace_ops is one module with one WORKSPACE: calls from several fake sandboxes take turns.
_OPS_LOCK = threading.Lock()


class FakeSandbox:
    backend = "fake"
    egress = None
    placement = None
    disk_note = None

    def __init__(self, root: Path):
        self.root = root
        self.workspace = root / "workspace"
        self.scratch = root / "tmp"
        self.workspace.mkdir(parents=True)
        self.scratch.mkdir()
        self.closed = False
        self.online = True
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    @classmethod
    def start(cls, *, job_id: str, config=None, image: str | None = None, network: bool = True) -> "FakeSandbox":
        sandbox = cls(Path(tempfile.mkdtemp(prefix=f"fake-sandbox-{job_id}-")))
        sandbox.online = network
        return sandbox

    def _host_path(self, path: str) -> Path:
        if path == WORKSPACE or path.startswith(WORKSPACE + "/"):
            return self.workspace / path[len(WORKSPACE):].lstrip("/")
        if path.startswith("/tmp/"):
            return self.scratch / path[len("/tmp/"):]
        raise SandboxError(f"the fake sandbox has no {path}")

    def exec(self, command, timeout_s=120.0, workdir=None, env=None, on_output=None) -> ExecResult:
        self._check_open()
        started = time.monotonic()
        full_env = {**os.environ, **(env or {}), "HOME": str(self.root)}
        full_env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        process = subprocess.Popen(["bash", "-c", command], cwd=self._host_path(workdir or WORKSPACE), env=full_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        with self._lock:
            self._running.add(process)
        timer = threading.Timer(timeout_s, self._kill, [process])
        timer.start()
        pieces = []
        try:
            for line in iter(process.stdout.readline, b""):
                text = line.decode("utf-8", "replace")
                pieces.append(text)
                if on_output:
                    on_output(text)
            code = process.wait()
        finally:
            timer.cancel()
            with self._lock:
                self._running.discard(process)
        if self.closed:
            raise SandboxError("the sandbox was closed")
        timed_out = code < 0 and time.monotonic() - started >= timeout_s
        return ExecResult(None if timed_out else code, "".join(pieces), time.monotonic() - started, timed_out)

    def call(self, fn, timeout_s=900.0, **args):
        self._check_open()
        if "bundle" in args:
            args["bundle"] = str(self._host_path(args["bundle"]))
        with _OPS_LOCK:
            saved = workspace_ops.WORKSPACE, workspace_ops.SCRATCH_ROOT, sys.modules.get("apply_patch")
            workspace_ops.WORKSPACE, workspace_ops.SCRATCH_ROOT = str(self.workspace), str(self.scratch)
            sys.modules["apply_patch"] = apply_patch_engine  # what the command server's bootstrap registers
            try:
                result = getattr(workspace_ops, fn)(**args)
            except workspace_ops.OpError as exc:
                raise SandboxError(f"{fn} in the sandbox failed: {exc}") from None
            finally:
                workspace_ops.WORKSPACE, workspace_ops.SCRATCH_ROOT = saved[0], saved[1]
                if saved[2] is None:
                    sys.modules.pop("apply_patch", None)
                else:
                    sys.modules["apply_patch"] = saved[2]
        return json.loads(json.dumps(result))  # only data leaves a sandbox

    def put_file(self, path: str, data: bytes) -> None:
        self._check_open()
        target = self._host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def reap(self) -> int:
        return 0

    def interrupt(self) -> int:
        """Kill the commands running now (their exec returns), leaving the sandbox open."""
        with self._lock:
            running = list(self._running)
        for process in running:
            self._kill(process)
        return len(running)

    def go_offline(self) -> str:
        self.online = False
        return "none (fake sandbox)"

    def network_interfaces(self) -> list[str]:
        return ["lo", "eth0"] if self.online else ["lo"]

    def close(self) -> None:
        self.closed = True
        with self._lock:
            running = list(self._running)
        for process in running:
            self._kill(process)
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self, process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _check_open(self) -> None:
        if self.closed:
            raise SandboxError("the sandbox is closed")


def run_jobs_in_fake_sandboxes(monkeypatch) -> None:
    """Jobs run by the job runner get a FakeSandbox, prepared by the real prepare (clone, setup, snapshot)."""
    from assistant.jobs import runner
    from assistant.sandbox import prepare as real_prepare

    def start(**kw):
        return FakeSandbox.start(**kw)
    start.backend = "fake"

    def prepare(request, config, *, engine=None, warm=None, **callbacks):
        return real_prepare(request, config, start=start, **callbacks)
    monkeypatch.setattr(runner, "prepare", prepare)
