"""Who may log in: password users from the settings (or one generated admin), and a trusted proxy header."""
from __future__ import annotations

import hmac
import os
import secrets
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
