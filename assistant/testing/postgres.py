"""A PostgreSQL server of a test's or a benchmark's own: initdb in a temporary directory, a free loopback port.

Scale-out tests restart and stop the database on purpose; doing that to the machine's shared cluster would
break everyone else's tests, so each run gets a server nobody else uses. Needs Debian's postgresql package
and root (the server runs as the postgres user).
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (./test.sh does it)")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    def __init__(self, database: str = "assistant"):
        self.root = Path(tempfile.mkdtemp(prefix="assistant-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.database = database
        shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://assistant:assistant@127.0.0.1:{self.port}/{self.database}"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=check,
                              timeout=120, cwd="/")

    def start(self) -> "PrivatePostgres":
        if not self.data.exists():
            self._as_postgres(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                           "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n")
            self._pg_ctl("start")
            self._psql("CREATE ROLE assistant LOGIN PASSWORD 'assistant' SUPERUSER")
            self._psql(f"CREATE DATABASE {self.database} OWNER assistant")
        else:
            self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l", str(self.root / "log"),
                          action, *extra)

    def _psql(self, sql: str) -> None:
        self._as_postgres(_bin("psql"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                          "-qc", sql)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def restart(self) -> float:
        """Stop (closing every connection) and start again; returns how long the server was away, in seconds."""
        started = time.monotonic()
        self.stop()
        self._pg_ctl("start")
        return time.monotonic() - started

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-w", "stop", "-m", "immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PrivatePostgres":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.close()


def available() -> str | None:
    """Why a private server cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a private PostgreSQL server needs root (it runs as the postgres user)"
    try:
        _bin("initdb")
    except RuntimeError as exc:
        return str(exc)
    return None
