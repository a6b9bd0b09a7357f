"""Who is asking: the user behind the current socket session or HTTP request.

Chainlit checks thread ownership on some endpoints and not others (feedback, shared threads, socket
connect), so the data layer checks again itself; for that it needs the requester's identity, which
Chainlit does not hand to the data layer. An ASGI middleware records it per HTTP request.
"""
from __future__ import annotations

import contextvars
from typing import Any

# None: not inside a request (a background task of our own); "": a request without a valid login.
_request_viewer: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_viewer", default=None)

ANONYMOUS = ""


def _session_viewer() -> str | None:
    from chainlit.context import ChainlitContextException, context
    from chainlit.session import WebsocketSession

    try:
        session = context.session
    except ChainlitContextException:
        return None
    if isinstance(session, WebsocketSession) and session.user is not None:
        return session.user.identifier
    return None


def current_viewer() -> str | None:
    """The identifier of the user asking, ANONYMOUS for an unauthenticated request, None for internal calls."""
    return _session_viewer() or _request_viewer.get()


def identify_token(token: str | None) -> str:
    from chainlit.auth.jwt import decode_jwt

    if not token:
        return ANONYMOUS
    try:
        return decode_jwt(token).identifier
    except Exception:  # expired, forged or from another secret: all mean "nobody"
        return ANONYMOUS


def _token_from_scope(scope: dict[str, Any]) -> str | None:
    from http.cookies import SimpleCookie

    from chainlit.auth.cookie import _auth_cookie_name

    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:
        return None
    # Chainlit splits long tokens over numbered cookies (access_token_0, _1, ...).
    if _auth_cookie_name in jar:
        return jar[_auth_cookie_name].value
    parts = []
    index = 0
    while f"{_auth_cookie_name}_{index}" in jar:
        parts.append(jar[f"{_auth_cookie_name}_{index}"].value)
        index += 1
    return "".join(parts) or None


class ViewerMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so the context variable reaches the endpoint unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        token = _request_viewer.set(identify_token(_token_from_scope(scope)))
        try:
            return await self.app(scope, receive, send)
        finally:
            _request_viewer.reset(token)
