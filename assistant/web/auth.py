"""Who may log in: password users from the settings (or one generated admin), and a trusted proxy header;
how long a login stays valid (as long as the access it was made with); how fast passwords may be guessed.

A login token names the user and an access stamp: a keyed hash of the user's password (or of the header
login) and of how often `assistant users revoke` revoked them. Removing the user, changing the password
or revoking them changes the stamp the server expects, so every older token stops working at once.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Settings

ADMIN = "admin"


def _read_or_create(path: Path, make) -> tuple[str, bool]:
    """The file's content, creating it (mode 600) on first use; the flag says whether it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    value = make()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, True


def ensure_auth_secret(settings: Settings, environ=os.environ) -> str:
    """CHAINLIT_AUTH_SECRET signs login cookies; keeping it in the data dir keeps logins valid across restarts."""
    if environ.get("CHAINLIT_AUTH_SECRET"):
        return environ["CHAINLIT_AUTH_SECRET"]
    secret, _ = _read_or_create(Path(settings.data_dir) / "auth-secret", lambda: secrets.token_urlsafe(48))
    environ["CHAINLIT_AUTH_SECRET"] = secret
    return secret


class PasswordBook:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.passwords = settings.user_passwords()
        self.generated_admin = False
        if not self.passwords:
            password, self.generated_admin = _read_or_create(
                Path(settings.data_dir) / "admin-password", lambda: secrets.token_urlsafe(12))
            self.passwords = {ADMIN: password}

    @property
    def admin_password_file(self) -> Path | None:
        return None if self.settings.users else Path(self.settings.data_dir) / "admin-password"

    def check(self, username: str, password: str) -> bool:
        expected = self.passwords.get(username)
        # Compare anyway on an unknown name so timing does not tell which names exist.
        return hmac.compare_digest((expected or "\0").encode(), password.encode()) and expected is not None

    def access_stamp(self, identifier: str, provider: str, revocations: int, secret: str) -> str | None:
        """What a token of this user must carry to be valid now; None when the user cannot log in any more."""
        if provider == "header":
            if not self.settings.header_auth:
                return None
            basis = f"header\0{self.settings.header_auth.lower()}\0{identifier}\0{revocations}"
        else:
            password = self.passwords.get(identifier)
            if password is None:
                return None
            basis = f"password\0{identifier}\0{password}\0{revocations}"
        return hmac.new(secret.encode(), basis.encode(), hashlib.sha256).hexdigest()[:32]

    def login_hint(self) -> str:
        """What the login page says about the user name and the password."""
        if self.settings.users:
            return "Log in with your user name and password (the administrator set them in ASSISTANT_USERS)."
        return f"Log in as {ADMIN}: the server made its password, in {self.admin_password_file} (printed at start)."

    def login_notice(self) -> str:
        if self.settings.users:
            return f"password login for: {', '.join(sorted(self.passwords))}"
        return (f"log in as '{ADMIN}' with the password in {self.admin_password_file}: {self.passwords[ADMIN]}")


def header_user(settings: Settings, headers) -> str | None:
    """The user a reverse proxy vouches for; only consulted when ASSISTANT_HEADER_AUTH names the header."""
    if not settings.header_auth:
        return None
    value = (headers.get(settings.header_auth) or "").strip()
    return value or None


class AccessBook:
    """Whether a login token still stands for current access: its stamp against the one expected now.
    Revocation counts come from the store (another process, `assistant users revoke`, may change them) and
    are remembered for at most `ttl_s`, so a revoke ends sessions within that time."""

    def __init__(self, passwords: PasswordBook, revocations: Callable[[str], int], secret: str, ttl_s: float = 1.0):
        self.passwords = passwords
        self.revocations = revocations
        self.secret = secret
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def revocation_count(self, identifier: str) -> int:
        now = time.monotonic()
        with self._lock:
            known = self._known.get(identifier)
        if known is not None and now - known[0] < self.ttl_s:
            return known[1]
        count = self.revocations(identifier)
        with self._lock:
            if len(self._known) > 4096:
                self._known.clear()
            self._known[identifier] = (now, count)
        return count

    def stamp(self, identifier: str, provider: str) -> str | None:
        return self.passwords.access_stamp(identifier, provider, self.revocation_count(identifier), self.secret)

    def valid(self, identifier: str | None, metadata: dict | None) -> bool:
        """Whether a token with this user and metadata may still act for the user."""
        if not identifier:
            return False
        metadata = metadata or {}
        expected = self.stamp(identifier, str(metadata.get("provider") or "credentials"))
        given = metadata.get("access")
        return expected is not None and isinstance(given, str) and hmac.compare_digest(expected, given)


# ---------------------------------------------------------------------- login throttling
class TooManyAttempts(Exception):
    def __init__(self, wait_s: float):
        self.wait_s = max(1, math.ceil(wait_s))
        super().__init__(f"too many attempts, try again in {self.wait_s} s")


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    locks: int = 0  # how many locks so far: each one lasts twice the one before


@dataclass
class LoginThrottle:
    """Wrong passwords counted per user name and per client address. After `per_name` (or `per_address`)
    of them, logins for that name (from that address) are refused for `lock_s`, and after each further wrong
    password for twice as long, up to `lock_max_s`; during a lock not even the right password is tried.
    A right password clears the counts of its name and address. Kept in this process's memory."""

    per_name: int = 5
    per_address: int = 20
    lock_s: float = 30.0
    lock_max_s: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> "LoginThrottle":
        return cls(per_name=settings.login_failures_per_name, per_address=settings.login_failures_per_address,
                   lock_s=settings.login_lock_s, lock_max_s=settings.login_lock_max_s)

    def _keys(self, name: str, address: str | None) -> list[tuple[str, int]]:
        keys = [("name:" + name.strip().lower(), self.per_name)]
        if address:
            keys.append(("addr:" + address, self.per_address))
        return keys

    def check(self, name: str, address: str | None) -> None:
        """TooManyAttempts if logins for this name or from this address are locked now."""
        now = self.clock()
        with self._lock:
            wait = max((e.locked_until - now for key, _ in self._keys(name, address)
                        if (e := self._entries.get(key)) is not None), default=0.0)
        if wait > 0:
            raise TooManyAttempts(wait)

    def failed(self, name: str, address: str | None) -> None:
        now = self.clock()
        with self._lock:
            if len(self._entries) > 100_000:  # a flood of made-up names: forget the unlocked ones
                self._entries = {k: e for k, e in self._entries.items() if e.locked_until > now}
            for key, limit in self._keys(name, address):
                entry = self._entries.setdefault(key, _Failures())
                entry.count += 1
                if entry.count >= limit:
                    entry.locked_until = now + min(self.lock_s * (2 ** entry.locks), self.lock_max_s)
                    entry.locks += 1

    def succeeded(self, name: str, address: str | None) -> None:
        with self._lock:
            for key, _ in self._keys(name, address):
                self._entries.pop(key, None)
