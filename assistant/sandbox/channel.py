"""Host side of the command server protocol (see cmdserver.py), independent of the transport."""

from __future__ import annotations

import base64
import itertools
from abc import ABC, abstractmethod
import json
import logging
import queue
import threading
import time
from collections import deque
from typing import Any, Protocol

from .base import ExecResult, OutputCallback, SandboxError
from .interfaces import parse_proc_net_dev

log = logging.getLogger(__name__)

# How long past a command's own timeout the host waits for the server before calling it dead.
SERVER_GRACE_S = 15.0
TEARDOWN_WAIT_S = 120.0  # how long a second closer waits for the first one's teardown (a container removal)
CALL_TIMEOUT_S = 900.0
# A call's whole reply must fit (it is JSON, not a log to elide): the patch cap, base64, and room besides.
CALL_OUTPUT_CAP = 256 * 1024 * 1024
PUT_PIECE = 4 * 1024 * 1024


class Transport(Protocol):
    def read(self) -> bytes:
        """The next bytes of the server's stdout; b"" once it is gone."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


_SERVER_GONE = object()


class CommandChannel:
    """Sends requests tagged with ids and routes replies, so concurrent exec calls are safe."""

    def __init__(self, transport: Transport, describe_failure=lambda: ""):
        self._transport = transport
        self._describe_failure = describe_failure
        self._ids = itertools.count(1)
        self._pending: dict[str, queue.SimpleQueue] = {}
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._execs: set[str] = set()   # the ids of the exec requests under way (interrupt stops them)
        self.gone_reason: str | None = None
        self.stray_lines: deque[str] = deque(maxlen=50)
        self._reader = threading.Thread(target=self._read_loop, name="cmdchannel-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        buffer = b""
        try:
            while True:
                data = self._transport.read()
                if not data:
                    break
                buffer += data
                if b"\n" not in data:
                    continue
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._dispatch(line)
        except Exception as exc:  # a broken transport must still release every waiting caller
            self.gone_reason = f"{type(exc).__name__}: {exc}"
        with self._pending_lock:
            self._closed = True
            waiting = list(self._pending.values())
        for replies in waiting:
            replies.put(_SERVER_GONE)

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            self.stray_lines.append(line.decode("utf-8", "replace"))
            return
        replies = self._pending.get(str(message.get("id")))
        if replies is not None:
            replies.put(message)

    def _send(self, message: dict) -> tuple[str, queue.SimpleQueue]:
        request_id = str(next(self._ids))
        message["id"] = request_id
        replies: queue.SimpleQueue = queue.SimpleQueue()
        with self._pending_lock:
            if self._closed:
                raise SandboxError(self._gone_message())
            self._pending[request_id] = replies
        data = (json.dumps(message) + "\n").encode()
        try:
            with self._write_lock:
                self._transport.write(data)
        except OSError as exc:
            self._forget(request_id)
            raise SandboxError(f"the sandbox stopped accepting commands ({exc}). {self._describe_failure()}") from exc
        return request_id, replies

    def _forget(self, request_id: str) -> None:
        with self._pending_lock:
            self._pending.pop(request_id, None)

    def _gone_message(self) -> str:
        detail = self._describe_failure()
        reason = f" ({self.gone_reason})" if self.gone_reason else ""
        return f"the sandbox's command server is gone{reason}. {detail}".strip()

    def _next(self, replies: queue.SimpleQueue, deadline: float):
        try:
            message = replies.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise SandboxError("the sandbox's command server did not answer in time; the sandbox is stuck") from None
        if message is _SERVER_GONE:
            raise SandboxError(self._gone_message())
        return message

    def request(self, message: dict, timeout_s: float = 10.0) -> dict:
        """One request, one reply (ping, put, reap)."""
        request_id, replies = self._send(message)
        try:
            reply = self._next(replies, time.monotonic() + timeout_s)
        finally:
            self._forget(request_id)
        if reply.get("error"):
            raise SandboxError(f"the sandbox refused {message.get('op')}: {reply['error']}")
        return reply

    def ping(self, timeout_s: float = 10.0) -> dict:
        return self.request({"op": "ping"}, timeout_s)

    def exec(
        self,
        command: str,
        timeout_s: float,
        workdir: str | None,
        env: dict[str, str] | None,
        on_output: OutputCallback | None,
        cap_bytes: int,
    ) -> ExecResult:
        request = {"op": "exec", "cmd": command, "cwd": workdir, "env": env or {}, "timeout": timeout_s, "cap": cap_bytes}
        return self.run(request, timeout_s, on_output)

    def run(self, request: dict, timeout_s: float, on_output: OutputCallback | None = None) -> ExecResult:
        """Send an exec or call request and collect its output until it is done."""
        started = time.monotonic()
        request_id, replies = self._send(request)
        if request.get("op") == "exec":
            with self._pending_lock:
                self._execs.add(request_id)
        deadline = started + timeout_s + SERVER_GRACE_S
        pieces: list[str] = []
        try:
            while True:
                message = self._next(replies, deadline)
                if "out" in message:
                    pieces.append(message["out"])
                    if on_output is not None:
                        on_output(message["out"])
                    continue
                if message.get("done"):
                    break
        finally:
            self._forget(request_id)
            with self._pending_lock:
                self._execs.discard(request_id)
        error = message.get("error")
        if error and error != "cancelled":
            pieces.append(f"\n[sandbox: {error}]\n")
        return ExecResult(
            exit_code=message.get("exit"),
            output="".join(pieces),
            duration_s=time.monotonic() - started,
            timed_out=bool(message.get("timed_out")),
            truncated=bool(message.get("truncated")),
        )

    def interrupt(self) -> int:
        """Stop every command under way (exec requests only, never a workspace call): the server kills each one's
        process tree (the protocol's cancel op) and its exec returns what it printed so far, with no exit code. The
        sandbox stays up. How many commands were told to stop."""
        with self._pending_lock:
            targets = sorted(self._execs)
        told = 0
        for target in targets:
            try:
                reply = self.request({"op": "cancel", "target": target}, timeout_s=10)
            except SandboxError as exc:
                log.warning("could not stop command %s: %s", target, exc)
                continue
            told += bool(reply.get("cancelled"))
        return told

    def close(self) -> None:
        try:
            self._transport.close()
        except OSError:
            pass


class ChannelSandbox(ABC):
    """What both backends share once their command server is up: exec under the job's wall clock, and
    the interface listing that proves the network cut, and closing once (by the user or by the wall clock).
    Subclasses set _channel, _config, _deadline, _expired, _closed, _close_lock, _torn_down (an Event), _wall_clock and implement
    _teardown."""

    egress = None  # the job's egress proxy handle when the agent phase has internet by allowlist
    placement = None  # (engine name, container id) on a Docker engine
    disk_note: str | None = None  # set by the backend when the job's disk cap could not be enforced
    _extra_env: dict[str, str] = {}  # merged into every command's environment (the proxy variables)
    _paused_left: float | None = None  # while the wall clock is paused: the seconds it had left

    def confine_to_proxy(self, policy, config) -> str:
        raise SandboxError(f"the {self.backend} backend supports agent internet `off` only")

    def _expire(self) -> None:
        self._expired = True
        self.close()

    def restart_wall_clock(self) -> None:
        """A warm sandbox's time in the pool is not its job's: the job's wall clock starts when a job takes it."""
        self._wall_clock.cancel()
        self._deadline = time.monotonic() + self._config.job_wall_clock_s
        self._wall_clock = threading.Timer(self._config.job_wall_clock_s, self._expire)
        self._wall_clock.daemon = True
        self._wall_clock.start()

    def pause_wall_clock(self) -> None:
        """The job waits for its user's answer (agent/asking.py): its wall clock stands still until resumed."""
        if self._paused_left is not None:
            return
        self._wall_clock.cancel()
        self._paused_left = max(0.0, self._deadline - time.monotonic())
        self._deadline = float("inf")

    def resume_wall_clock(self) -> None:
        """The answer came (or the wait ended): the wall clock goes on with the time that was left."""
        left = self._paused_left
        if left is None:
            return
        self._paused_left = None
        self._deadline = time.monotonic() + left
        if self._closed:
            return
        self._wall_clock = threading.Timer(left, self._expire)
        self._wall_clock.daemon = True
        self._wall_clock.start()

    def alive(self) -> bool:
        """Whether the command server still answers (a warm sandbox's container may have died while it waited)."""
        try:
            self._live_channel().ping(timeout_s=5)
        except SandboxError:
            return False
        return True

    def close(self) -> None:
        """Tear the sandbox down once; a second caller waits for the first one's teardown (so whoever returns
        from close knows the sandbox is gone, however many threads asked)."""
        with self._close_lock:
            first = not self._closed
            self._closed = True
        if not first:
            self._torn_down.wait(TEARDOWN_WAIT_S)
            return
        try:
            self._wall_clock.cancel()
            self._teardown()
        finally:
            self._torn_down.set()

    def close_soon(self) -> None:
        """Start closing on a thread of its own and return: a cancel must not wait on a busy engine's container
        removal (the run's own thread, which closes it too, waits for it)."""
        def close() -> None:
            try:
                self.close()
            except Exception:
                log.exception("closing a %s sandbox", self.backend)
        threading.Thread(target=close, name="sandbox-close", daemon=True).start()

    @abstractmethod
    def _teardown(self) -> None:
        """Free what the backend holds (container, bubblewrap process); called exactly once."""

    def exec(
        self,
        command: str,
        timeout_s: float = 120.0,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        remaining = self._deadline - time.monotonic()
        if self._expired or remaining <= 0:
            raise self._wall_clock_error()
        channel = self._channel
        if channel is None:
            raise SandboxError("the sandbox is closed")
        try:
            env = {**self._extra_env, **env} if env and self._extra_env else (env or self._extra_env)
            return channel.exec(command, min(timeout_s, remaining), workdir, env, on_output, self._config.output_cap_bytes)
        except SandboxError:
            if self._expired:
                raise self._wall_clock_error() from None
            raise

    def interrupt(self) -> int:
        """Stop the commands running now, and only them (a steering message sent with `now`); the sandbox stays."""
        channel = self._channel
        return channel.interrupt() if channel is not None and not self._closed else 0

    def _wall_clock_error(self) -> SandboxError:
        return SandboxError(
            f"the job reached its wall-clock limit of {self._config.job_wall_clock_s} s and its sandbox was removed"
        )

    def _live_channel(self) -> CommandChannel:
        if self._expired or self._deadline - time.monotonic() <= 0:
            raise self._wall_clock_error()
        if self._channel is None:
            raise SandboxError("the sandbox is closed")
        return self._channel

    def call(self, fn: str, timeout_s: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        """Run workspace_ops.<fn>(**args) inside the sandbox, as the sandbox user; returns its result as data."""
        channel = self._live_channel()
        timeout = min(timeout_s, self._deadline - time.monotonic())
        result = channel.run({"op": "call", "fn": fn, "args": args, "timeout": timeout, "cap": CALL_OUTPUT_CAP},
                             timeout)
        if result.timed_out:
            raise SandboxError(f"the sandbox's {fn} did not finish within {timeout:.0f} s")
        try:
            reply = json.loads(result.output)
        except ValueError:
            raise SandboxError(f"the sandbox's {fn} answered no result: {result.output.strip()[-300:]}") from None
        if not reply.get("ok"):
            raise SandboxError(f"{fn} in the sandbox failed: {reply.get('error')}")
        return reply["result"]

    def put_file(self, path: str, data: bytes) -> None:
        """Write bytes into a file inside the sandbox (as the sandbox user), in pieces the channel carries well."""
        channel = self._live_channel()
        for offset in range(0, max(len(data), 1), PUT_PIECE):
            piece = base64.b64encode(data[offset:offset + PUT_PIECE]).decode()
            channel.request({"op": "put", "path": path, "data": piece, "append": offset > 0}, timeout_s=60)

    def reap(self) -> int:
        """Kill whatever setup left running (and with it the environment it was given)."""
        return int(self._live_channel().request({"op": "reap"}, timeout_s=30).get("reaped", 0))

    def network_interfaces(self) -> list[str]:
        result = self.exec("cat /proc/net/dev", timeout_s=10)
        if result.exit_code != 0:
            raise SandboxError(f"could not list the sandbox's network interfaces: {result.output.strip()}")
        return parse_proc_net_dev(result.output)
