"""The door of the web app, one ASGI middleware in front of Chainlit that sees every request and socket:

- a login token that no longer stands for current access (user removed, password changed, `assistant users
  revoke`) is taken off the request, so every route, REST endpoint and the socket see nobody;
- password logins are throttled per user name and per client address (auth.LoginThrottle), with the
  answer "too many attempts, try again in N s";
- cross-origin requests get CORS headers only for the app's own origin and ASSISTANT_ALLOWED_ORIGINS, and
  the chat socket refuses other origins (Chainlit's own CORS setup echoes any origin with credentials).
"""
from __future__ import annotations

import json
import logging
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from .auth import AccessBook, LoginThrottle, TooManyAttempts

log = logging.getLogger(__name__)

TOKEN_COOKIE = "access_token"  # chainlit.auth.cookie._auth_cookie_name; long tokens: access_token_0, _1, ...
SOCKET_PATH = "/ws/socket.io"
WRONG_PASSWORD = "wrong user name or password"
LOGIN_BODY_MAX = 64 * 1024  # a login form is two short fields


def _headers(scope) -> list[tuple[bytes, bytes]]:
    return list(scope.get("headers") or [])


def _header(scope, name: bytes) -> str | None:
    for key, value in _headers(scope):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def token_of(scope) -> str | None:
    """The login token a request carries: a bearer header or the (possibly split) cookie."""
    auth = _header(scope, b"authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    jar = SimpleCookie()
    try:
        jar.load(_header(scope, b"cookie") or "")
    except Exception:
        return None
    if TOKEN_COOKIE in jar:
        return jar[TOKEN_COOKIE].value
    parts, index = [], 0
    while f"{TOKEN_COOKIE}_{index}" in jar:
        parts.append(jar[f"{TOKEN_COOKIE}_{index}"].value)
        index += 1
    return "".join(parts) or None


def without_token(scope) -> dict:
    """The scope with its login token removed (the other cookies stay)."""
    headers = []
    for key, value in _headers(scope):
        name = key.lower()
        if name == b"authorization" and value.decode("latin-1").lower().startswith("bearer "):
            continue
        if name == b"cookie":
            kept = [part for part in value.decode("latin-1").split(";")
                    if not part.strip().split("=", 1)[0].startswith(TOKEN_COOKIE)]
            if not any(p.strip() for p in kept):
                continue
            value = ";".join(kept).strip().encode("latin-1")
        headers.append((key, value))
    return {**scope, "headers": headers}


def own_origin(scope) -> str | None:
    """scheme://host[:port] the request was addressed to (behind a proxy: what the proxy forwarded)."""
    host = _header(scope, b"x-forwarded-host") or _header(scope, b"host")
    if not host:
        return None
    scheme = (_header(scope, b"x-forwarded-proto") or scope.get("scheme") or "http").split(",")[0].strip()
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return f"{scheme}://{host.split(',')[0].strip()}"


class Gate:
    """What the middleware needs, set once the app has its settings (app.py)."""

    def __init__(self, access: AccessBook | None = None, throttle: LoginThrottle | None = None,
                 origins: tuple[str, ...] = ()):
        self.access = access
        self.throttle = throttle
        self.origins = tuple(o.rstrip("/") for o in origins)

    def token_valid(self, token: str | None) -> bool:
        """A token signed by us whose access stamp is current; without an AccessBook, any signed token."""
        from chainlit.auth.jwt import decode_jwt

        if not token:
            return False
        try:
            user = decode_jwt(token)
        except Exception:
            return False
        return self.access is None or self.access.valid(user.identifier, user.metadata)

    def origin_allowed(self, origin: str, scope) -> bool:
        origin = origin.rstrip("/")
        return origin == own_origin(scope) or origin in self.origins


GATE = Gate()


class GateMiddleware:
    def __init__(self, app, gate: Gate = GATE):
        self.app = app
        self.gate = gate

    async def __call__(self, scope, receive, send):
        if scope.get("type") not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        token = token_of(scope)
        if token and not self.gate.token_valid(token):
            scope = without_token(scope)  # a stale or forged login is nobody's
        origin = _header(scope, b"origin")
        path = scope.get("path") or ""
        if origin and not self.gate.origin_allowed(origin, scope):
            if scope["type"] == "websocket" or path.startswith(SOCKET_PATH) or scope.get("method") == "OPTIONS":
                return await _refuse(scope, receive, send, 403, "this origin may not use the app")
            return await self.app(scope, receive, _without_cors(send))
        if scope["type"] == "http" and scope.get("method") == "POST" and path == "/login" and self.gate.throttle:
            return await self._login(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _login(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body") or len(body) > LOGIN_BODY_MAX:
                break
        if len(body) > LOGIN_BODY_MAX:
            return await _json(send, 413, {"detail": "the login form is too large"})
        name = await login_name(scope, body)
        address = (scope.get("client") or (None,))[0]
        throttle = self.gate.throttle
        try:
            throttle.check(name, address)
        except TooManyAttempts as exc:
            log.warning("login for %r from %s refused: %s", name, address, exc)
            return await _json(send, 429, {"detail": str(exc)}, {b"retry-after": str(exc.wait_s).encode()})

        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = {"code": 0}
        rewrite = {"on": False}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if message["status"] == 401:
                    throttle.failed(name, address)
                    rewrite["on"] = True
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
                    payload = json.dumps({"detail": WRONG_PASSWORD}).encode()
                    rewrite["payload"] = payload
                    message = {**message, "headers": headers + [(b"content-length", str(len(payload)).encode())]}
                elif 200 <= message["status"] < 300:
                    throttle.succeeded(name, address)
            elif message["type"] == "http.response.body" and rewrite["on"]:
                if message.get("more_body"):
                    return
                message = {**message, "body": rewrite["payload"]}
            await send(message)

        await self.app(scope, replay, watch)


async def login_name(scope, body: bytes) -> str:
    """The user name a login form names, however it was encoded: the login page posts multipart form data,
    scripts post urlencoded; a body that is neither names nobody ("")."""
    content_type = (_header(scope, b"content-type") or "").lower()
    if content_type.startswith("multipart/form-data"):
        from starlette.requests import Request

        async def once():
            return {"type": "http.request", "body": body, "more_body": False}
        try:
            form = await Request(scope, once).form(max_files=0, max_fields=20)
        except Exception:  # malformed: nobody, and Chainlit refuses it too
            return ""
        value = form.get("username")
        return value if isinstance(value, str) else ""
    return (parse_qs(body.decode("utf-8", "replace")).get("username") or [""])[0]


def _without_cors(send):
    async def strip(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [(k, v) for k, v in message.get("headers", [])
                                               if not k.lower().startswith(b"access-control-")]}
        await send(message)
    return strip


async def _json(send, status: int, payload: dict, extra: dict[bytes, bytes] | None = None) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse(scope, receive, send, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await _json(send, status, {"detail": detail})


def limit_cors(app, origins: tuple[str, ...]) -> None:
    """Chainlit adds Starlette's CORS middleware with .chainlit/config.toml's allow_origins and credentials on;
    with ["*"] that echoes any origin. Ours: only the listed origins (same-origin requests need no CORS)."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    for index, entry in enumerate(app.user_middleware):
        if entry.cls is CORSMiddleware:
            app.user_middleware[index] = Middleware(CORSMiddleware, allow_origins=list(origins),
                                                    allow_credentials=True, allow_methods=["*"], allow_headers=["*"])
