"""The embedded local model: a llama-cpp-python server run as a managed child process.

Used when the user configures no model endpoint. The server listens on a free loopback
port, is health-checked before use, restarted when it dies, stopped at exit, and logs
to ``data_dir/logs/local-model.log``.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from assistant.llm import weights as weights_mod
from assistant.llm.weights import ModelWeights

LOCAL_EXTRA_INSTALL = "pip install -e '.[local]'"
_HEALTH_POLL_S = 0.2
_STOP_GRACE_S = 5.0
_LOG_TAIL_CHARS = 2000
_PORT_ATTEMPTS = 3


class LocalModelError(RuntimeError):
    """The local model cannot be found, started or reached."""


@dataclass
class LocalModelConfig:
    model_path: Path | str | None  # None: the default bundled model; a bundled model's name; or a GGUF file
    data_dir: Path
    n_ctx: int = 8192
    n_threads: int | None = None  # None means all cores but one (see _default_threads)
    n_batch: int = 512
    prompt_cache_mb: int = 512    # 0: no cache of whole prompt states beside the live one
    chat_format: str | None = None  # a llama-cpp-python chat format; None lets the GGUF's own template decide

    @classmethod
    def from_settings(cls, settings) -> "LocalModelConfig":
        """From assistant.config.Settings (local_model, local_ctx, local_threads, ..., data_dir)."""
        return cls(
            model_path=settings.local_model,
            data_dir=settings.data_dir,
            n_ctx=settings.local_ctx,
            n_threads=settings.local_threads,
            n_batch=settings.local_batch,
            prompt_cache_mb=settings.local_prompt_cache_mb,
        )

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "local-model.log"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def bundled(self) -> ModelWeights | None:
        """The bundled model this config names, or None for a GGUF file of the user's."""
        return bundled_weights(self.model_path)


def bundled_weights(model: Path | str | None) -> ModelWeights | None:
    if model is None or str(model) == "":
        return weights_mod.DEFAULT
    return weights_mod.BUNDLED.get(str(model))


def bundled_model_path(models_dir: Path, weights: ModelWeights = weights_mod.DEFAULT) -> Path:
    """A bundled model's GGUF, assembled from its pinned part packages and verified on first use."""
    try:
        return weights_mod.ensure_weights(weights, models_dir)
    except weights_mod.WeightsError as exc:
        raise LocalModelError(str(exc)) from None
    except OSError as exc:
        raise LocalModelError(f"could not assemble {weights.description} into {models_dir}: {exc}") from exc


def weights_verified(config: LocalModelConfig) -> bool:
    """A bundled model whose file in the data dir was assembled and verified (so a start is instant)."""
    weights = config.bundled
    return weights is not None and weights_mod.is_verified(config.models_dir / weights.filename, weights.sha256)


def describe_model(config: LocalModelConfig) -> str:
    """Which model, its size and whether it was verified, for the start-up print and `assistant doctor`."""
    weights = config.bundled
    if weights is None:
        path = Path(str(config.model_path))
        size = f", {path.stat().st_size / 1e9:.2f} GB" if path.is_file() else ""
        return f"{path.name} (your GGUF file {path}{size}; not verified: not a bundled model)"
    target = config.models_dir / weights.filename
    state = ("sha256 verified" if weights_verified(config)
             else "assembled from its packages and sha256-checked at first start")
    return f"{weights.description} ({weights.size_text}, {weights.size:,} bytes; {state}; {target})"


def local_model_available(model: Path | str | None = None) -> tuple[bool, str]:
    """Whether the local model could start, and if not the command that fixes it (for `assistant doctor`)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False, f"llama-cpp-python is not installed; run: {LOCAL_EXTRA_INSTALL}"
    weights = bundled_weights(model)
    if weights is None:
        path = Path(str(model))
        if not path.is_file():
            names = ", ".join(weights_mod.BUNDLED)
            return False, (f"the local model file {path} does not exist; set ASSISTANT_LOCAL_MODEL to a GGUF file "
                           f"or a bundled model ({names})")
        return True, f"local model {path}"
    try:
        weights_mod.part_files(weights)
    except weights_mod.WeightsError as exc:
        return False, str(exc)
    return True, f"bundled model {weights.description}"


class LocalModelServer:
    """One llama-cpp-python server child process serving one GGUF model."""

    def __init__(self, config: LocalModelConfig):
        self.config = config
        self.api_key = secrets.token_urlsafe(24)  # other local users must not borrow the server
        self._process: subprocess.Popen | None = None
        self._port: int | None = None
        self._last_port: int | None = None  # reused on restart so that clients keep their base URL
        self._model_path: Path | None = None
        self._lock = threading.RLock()
        self._atexit_registered = False

    @property
    def model_name(self) -> str:
        if self._model_path is not None:
            return self._model_path.stem
        weights = self.config.bundled
        return Path(weights.filename if weights else str(self.config.model_path)).stem

    def describe(self) -> str:
        """Which model, its size and whether it was verified."""
        return describe_model(self.config)

    @property
    def base_url(self) -> str | None:
        return f"http://127.0.0.1:{self._port}/v1" if self._port is not None else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout_s: float = 120) -> str:
        """Starts the server (if not running) and returns its base URL once it answers."""
        with self._lock:
            if self._alive():
                return self.base_url  # type: ignore[return-value]
            model_path = self.resolve_model()
            self.config.log_path.parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(_PORT_ATTEMPTS):
                port = _free_loopback_port(self._last_port if attempt == 0 else None)
                try:
                    self._spawn(model_path, port, timeout_s)
                    return self.base_url  # type: ignore[return-value]
                except _PortTaken:
                    # Another process took the port between our probe and the server's bind.
                    self._last_port = None
            raise LocalModelError(f"no free loopback port after {_PORT_ATTEMPTS} attempts")

    def _spawn(self, model_path: Path, port: int, timeout_s: float) -> None:
        log_offset = self.config.log_path.stat().st_size if self.config.log_path.exists() else 0
        with open(self.config.log_path, "ab") as log:
            log.write(f"\n--- starting {model_path} on 127.0.0.1:{port} ---\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self._command(model_path, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches every descendant
                # The key goes in the environment, where other users cannot read it as they could argv.
                env={**os.environ, "PYTHONUNBUFFERED": "1", "API_KEY": self.api_key},
            )
        self._port = self._last_port = port
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        self._wait_until_healthy(timeout_s, log_offset)

    def ensure_running(self) -> str:
        """The base URL of a live server, restarting it if the child died."""
        with self._lock:
            if self._alive():
                return self.base_url  # type: ignore[return-value]
            return self.start()

    def stop(self) -> None:
        with self._lock:
            process, self._process, self._port = self._process, None, None
            if process is None or process.poll() is not None:
                return
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()

    def status(self) -> tuple[bool, str]:
        with self._lock:
            if not self._alive():
                available, detail = local_model_available(self.config.model_path)
                return False, "local model server is not running" + ("" if available else f"; {detail}")
            try:
                self._get_models(timeout_s=5)
            except (OSError, ValueError) as exc:
                return False, f"local model server (pid {self.pid}) does not answer at {self.base_url}: {exc}"
            return True, f"local model {self.model_name} serving at {self.base_url} (pid {self.pid})"

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def resolve_model(self) -> Path:
        """The GGUF file to serve; a bundled model is assembled and verified here on first use."""
        weights = self.config.bundled
        if weights is None:
            path = Path(str(self.config.model_path))
            if not path.is_file():
                raise LocalModelError(f"local model file {path} does not exist")
            self._model_path = path
        else:
            self._model_path = bundled_model_path(self.config.models_dir, weights)
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalModelError(f"llama-cpp-python is not installed; run: {LOCAL_EXTRA_INSTALL}")
        return self._model_path

    def _command(self, model_path: Path, port: int) -> list[str]:
        threads = self.config.n_threads or _default_threads()
        command = self._base_command(model_path, port, threads)
        if self.config.chat_format is not None:  # else the GGUF's own chat template
            command += ["--chat_format", self.config.chat_format]
        if self.config.prompt_cache_mb > 0:
            command += ["--cache", "true", "--cache_type", "ram", "--cache_size", str(self.config.prompt_cache_mb << 20)]
        return command

    def _base_command(self, model_path: Path, port: int, threads: int) -> list[str]:
        return [
            sys.executable,
            str(Path(__file__).with_name("local_child.py")),
            str(os.getpid()),
            "--model", str(model_path),
            "--model_alias", self.model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(self.config.n_ctx),
            "--n_threads", str(threads),
            "--n_threads_batch", str(threads),
            "--n_batch", str(self.config.n_batch),
            # The server's default computes logits for every prompt token; we never ask for prompt logprobs.
            "--logits_all", "false",
        ]

    def _wait_until_healthy(self, timeout_s: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout_s
        last_problem = "no answer yet"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process, self._port = None, None
                tail = self._log_tail(log_offset)
                if "address already in use" in tail.lower():
                    raise _PortTaken()
                raise LocalModelError(
                    f"local model server exited with code {code} while starting; "
                    f"log {self.config.log_path}:\n{tail}"
                )
            try:
                self._get_models(timeout_s=2)
                return
            except (OSError, ValueError) as exc:
                last_problem = str(exc)
            time.sleep(_HEALTH_POLL_S)
        self.stop()
        raise LocalModelError(
            f"local model server did not answer within {timeout_s:.0f} s ({last_problem}); "
            f"log {self.config.log_path}:\n{self._log_tail(log_offset)}"
        )

    def _get_models(self, timeout_s: float) -> dict:
        request = urllib.request.Request(f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"})
        # Loopback traffic must never go through a proxy named in the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=timeout_s) as response:
            body = json.loads(response.read())
        if not isinstance(body, dict) or not body.get("data"):
            raise ValueError(f"unexpected /v1/models answer: {body!r}")
        return body

    def _log_tail(self, offset: int) -> str:
        try:
            with open(self.config.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return text[-_LOG_TAIL_CHARS:]


def _default_threads() -> int:
    # llama.cpp's threads spin while they wait for each other, so one more thread than
    # there are free cores collapses decoding (measured here on 2 cores under a running
    # job: 16 tokens/s with 1 thread, 3.5 with 2). One core stays for the app and sandbox.
    return max(1, (os.cpu_count() or 2) - 1)


class _PortTaken(Exception):
    pass


def _free_loopback_port(preferred: int | None = None) -> int:
    if preferred is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # The old server's connections linger in TIME_WAIT; the new server binds with
            # SO_REUSEADDR (uvicorn does), so the probe must too or it would see a false conflict.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
