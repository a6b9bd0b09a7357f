"""Byte transports to a command server: a docker attach socket or a child process's pipes."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections import deque

_FRAME_HEADER = struct.Struct(">BxxxL")
_STDOUT, _STDERR = 1, 2


class DockerAttachTransport:
    """Docker multiplexes stdout and stderr of a tty-less container in framed chunks on one socket."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = b""
        self.stderr_tail: deque[str] = deque(maxlen=40)

    def read(self) -> bytes:
        while True:
            payload = self._next_frame()
            if payload is None:
                return b""
            stream, data = payload
            if stream == _STDERR:
                self.stderr_tail.extend(data.decode("utf-8", "replace").splitlines())
                continue
            if data:
                return data

    def _next_frame(self) -> tuple[int, bytes] | None:
        while len(self._buffer) < _FRAME_HEADER.size:
            if not self._fill():
                return None
        stream, size = _FRAME_HEADER.unpack_from(self._buffer)
        while len(self._buffer) < _FRAME_HEADER.size + size:
            if not self._fill():
                return None
        end = _FRAME_HEADER.size + size
        data = self._buffer[_FRAME_HEADER.size:end]
        self._buffer = self._buffer[end:]
        return stream, data

    def _fill(self) -> bool:
        try:
            data = self._sock.recv(262144)
        except OSError:
            return False
        if not data:
            return False
        self._buffer += data
        return True

    def write(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class ProcessTransport:
    """The server's stdin/stdout are the pipes of a child process (the local backend's bwrap)."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self._out = process.stdout.fileno()

    def read(self) -> bytes:
        try:
            return os.read(self._out, 262144)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
