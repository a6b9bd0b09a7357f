"""A chat client that speaks to the running web app the way the browser does, for tests and benchmarks.

It logs in over HTTP (POST /login sets the `access_token` cookie), connects to Chainlit's socket.io
endpoint with a session id, and records every event the server emits with the perf_counter() time it
arrived, so that latencies (message sent -> first streamed token, say) can be read off afterwards.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import socketio

SOCKET_PATH = "/ws/socket.io"


@dataclass
class Received:
    at: float        # time.perf_counter() on arrival
    event: str
    data: Any


class ChatSession:
    """One browser tab: one login, one socket session, one conversation."""

    def __init__(self, base_url: str, user: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.password = password
        self.session_id = str(uuid.uuid4())
        self.thread_id: str | None = None
        self.received: list[Received] = []
        self.token: str | None = None
        self._arrived = asyncio.Event()
        self._sio = socketio.AsyncClient(reconnection=False)
        self._sio.on("*", self._record)

    async def login(self) -> str:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            response = await http.post("/login", data={"username": self.user, "password": self.password})
            response.raise_for_status()
            self.token = response.cookies["access_token"]
        return self.token

    async def open(self, thread_id: str | None = None) -> "ChatSession":
        """Connect like a freshly loaded page (or, with thread_id, like a reopened conversation)."""
        if self.token is None:
            await self.login()
        auth = {"sessionId": self.session_id, "clientType": "webapp", "userEnv": "{}", "chatProfile": None,
                "threadId": thread_id}
        await self._sio.connect(self.base_url, headers={"Cookie": f"access_token={self.token}"}, auth=auth,
                                socketio_path=SOCKET_PATH, transports=["websocket"], wait_timeout=30)
        await self._sio.emit("connection_successful")
        self.thread_id = thread_id
        return self

    async def send(self, text: str, command: str | None = None) -> float:
        """Send a user message; returns the perf_counter() time just before it left."""
        message = {"id": str(uuid.uuid4()), "threadId": self.thread_id or "", "type": "user_message",
                   "name": self.user, "output": text, "createdAt": datetime.now(timezone.utc).isoformat(),
                   "command": command}
        sent_at = time.perf_counter()
        await self._sio.emit("client_message", {"message": message, "fileReferences": []})
        return sent_at

    async def change_settings(self, values: dict[str, Any]) -> None:
        """Submit the chat settings panel (repository, ref, attempts) as the browser does."""
        await self._sio.emit("chat_settings_change", values)

    async def wait_for(self, predicate: Callable[[Received], bool], *, since: float = 0.0,
                       timeout: float = 30.0) -> Received:
        """The first event after `since` that satisfies the predicate, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.first(predicate, since=since)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kinds = sorted({r.event for r in self.received})
                raise TimeoutError(f"no matching event within {timeout:.0f} s (saw: {', '.join(kinds)})")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass

    def first(self, predicate: Callable[[Received], bool], *, since: float = 0.0) -> Received | None:
        return next((r for r in self.received if r.at >= since and predicate(r)), None)

    async def close(self) -> None:
        await self._sio.disconnect()

    async def _record(self, event: str, data: Any = None) -> None:
        self.received.append(Received(time.perf_counter(), event, data))
        if event == "first_interaction" and isinstance(data, dict):
            self.thread_id = data.get("thread_id") or self.thread_id
        self._arrived.set()


def is_token(received: Received) -> bool:
    """A streamed token: Chainlit sends a message's first one as stream_start, the rest as stream_token."""
    return received.event in ("stream_start", "stream_token")


def message_with(text: str) -> Callable[[Received], bool]:
    """A new or updated message whose text contains `text`."""
    def match(received: Received) -> bool:
        return (received.event in ("new_message", "update_message") and isinstance(received.data, dict)
                and text in (received.data.get("output") or ""))
    return match
