"""A scripted OpenAI-compatible model server on loopback, for tests and benchmarks.

It plays fixed replies (text, tool calls, HTTP errors, garbage) over real HTTP so that everything above
the model — the SDK, retries, the agent, the router — runs for real. Rules pick which script answers a
request (the router, the answerer and the agent each get their own lane); a reply may be a function of
the request so a scripted agent can cite the chunk id the previous tool result carried.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union


@dataclass
class Reply:
    content: str | None = None
    tool_calls: list[tuple[str, dict | str]] = field(default_factory=list)  # (name, arguments)
    status: int = 200             # non-200: an error response with this status
    raw: bytes | None = None      # sent as is with status 200 (garbage)
    raw_type: str = "text/html"   # the Content-Type sent with raw
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0    # between streamed chunks
    cut_after: int | None = None  # streamed: drop the connection after this many content chunks
    finish_reason: str | None = None  # default: "tool_calls" with tool calls, else "stop" ("length": cut at max_tokens)

    @staticmethod
    def text(content: str, **kw: Any) -> "Reply":
        return Reply(content=content, **kw)

    @staticmethod
    def call(name: str, **arguments: Any) -> "Reply":
        return Reply(tool_calls=[(name, arguments)])

    @staticmethod
    def error(status: int) -> "Reply":
        return Reply(status=status)


ReplyLike = Union[Reply, Callable[[dict], Reply]]


@dataclass
class Exchange:
    """One request as the server saw it, with perf_counter() times for latency measurements."""
    request: dict
    received_at: float
    first_chunk_at: float | None = None  # streamed replies: when the first content chunk went out


@dataclass
class Rule:
    match: Callable[[dict], bool]
    replies: deque
    repeat_last: bool = False
    name: str = ""


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # clients that hang up mid-stream are normal here
        pass


def system_text(request: dict) -> str:
    return "\n".join(m.get("content") or "" for m in request.get("messages", []) if m.get("role") == "system")


def last_tool_output(request: dict) -> str:
    for m in reversed(request.get("messages", [])):
        if m.get("role") == "tool":
            return m.get("content") or ""
        if m.get("role") == "user" and "tool_result" in (m.get("content") or ""):
            return m.get("content") or ""
    return ""


def chunk_ids(request: dict) -> list[str]:
    """Chunk ids of every tool result in the conversation, oldest first."""
    ids = []
    for m in request.get("messages", []):
        if m.get("role") in ("tool", "user"):
            ids += re.findall(r"chunk ([0-9a-f]{6})", m.get("content") or "")
    return ids


class ScriptedModelServer:
    def __init__(self, model: str = "scripted-model"):
        self.model = model
        self.rules: list[Rule] = []
        self.requests: list[dict] = []
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ scripting
    def script(self, replies: list[ReplyLike], *, match: Callable[[dict], bool] | None = None,
               repeat_last: bool = False, name: str = "") -> "ScriptedModelServer":
        with self._lock:
            self.rules.append(Rule(match or (lambda _r: True), deque(replies), repeat_last, name))
        return self

    def when_system_contains(self, marker: str, replies: list[ReplyLike], repeat_last: bool = False) -> "ScriptedModelServer":
        return self.script(replies, match=lambda r: marker in system_text(r), repeat_last=repeat_last, name=marker)

    def reset(self) -> None:
        with self._lock:
            self.rules.clear()
            self.requests.clear()
            self.exchanges.clear()

    def _next_reply(self, exchange: Exchange) -> Reply:
        request = exchange.request
        with self._lock:
            self.requests.append(request)
            self.exchanges.append(exchange)
            for rule in self.rules:
                if rule.replies and rule.match(request):
                    item = rule.replies[0] if (rule.repeat_last and len(rule.replies) == 1) else rule.replies.popleft()
                    break
            else:
                return Reply(status=500, content="scripted model server: no scripted reply left for this request")
        return item(request) if callable(item) else item

    # ------------------------------------------------------------------ serving
    @property
    def base_url(self) -> str:
        assert self._httpd, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ScriptedModelServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as real model servers (uvicorn, llama.cpp's) set it: with Nagle's algorithm the
            # first streamed chunk waits for the client's delayed ACK of the headers (~40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *_args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    body = {"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "tests"}]}
                    return self._send(200, json.dumps(body).encode())
                self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                received_at = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    request = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    return self._send(400, b'{"error": {"message": "bad json"}}')
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, b'{"error": {"message": "not found"}}')
                exchange = Exchange(request, received_at)
                reply = server._next_reply(exchange)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.raw is not None:
                    return self._send(200, reply.raw, reply.raw_type)
                if reply.status != 200:
                    msg = reply.content or f"scripted error {reply.status}"
                    return self._send(reply.status, json.dumps({"error": {"message": msg, "type": "scripted"}}).encode())
                if request.get("stream"):
                    return self._stream(exchange, reply)
                self._send(200, json.dumps(server._completion(request, reply)).encode())

            def _stream(self, exchange: Exchange, reply: Reply) -> None:
                request = exchange.request
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def emit(obj: dict | str) -> None:
                    data = obj if isinstance(obj, str) else json.dumps(obj)
                    payload = f"data: {data}\n\n".encode()
                    self.wfile.write(f"{len(payload):X}\r\n".encode() + payload + b"\r\n")
                    self.wfile.flush()

                cid = "chatcmpl-" + uuid.uuid4().hex[:12]
                base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": server.model}
                pieces = re.findall(r"\S+\s*|\s+", reply.content or "")
                for index, piece in enumerate(pieces):
                    if index == reply.cut_after:
                        self.close_connection = True  # no terminating chunk: the client sees a cut stream
                        return
                    emit({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                    if exchange.first_chunk_at is None:
                        exchange.first_chunk_at = time.perf_counter()
                    if reply.chunk_delay_s:
                        time.sleep(reply.chunk_delay_s)
                for i, (name, args) in enumerate(reply.tool_calls):
                    arguments = args if isinstance(args, str) else json.dumps(args)
                    delta = {"tool_calls": [{"index": i, "id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                                             "function": {"name": name, "arguments": arguments}}]}
                    emit({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
                emit({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                if (request.get("stream_options") or {}).get("include_usage"):
                    emit({**base, "choices": [], "usage": server._usage(request, reply)})
                emit("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-model", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedModelServer":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ bodies
    def _usage(self, request: dict, reply: Reply) -> dict:
        prompt = sum(len(str(m.get("content") or "")) for m in request.get("messages", [])) // 4 + 1
        completion = len(reply.content or "") // 4 + sum(len(json.dumps(a)) for _n, a in reply.tool_calls) // 4 + 1
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion(self, request: dict, reply: Reply) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                 "function": {"name": n, "arguments": a if isinstance(a, str) else json.dumps(a)}}
                for n, a in reply.tool_calls]
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
            "model": server_model(self, request),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")}],
            "usage": self._usage(request, reply),
        }


def server_model(server: ScriptedModelServer, request: dict) -> str:
    return request.get("model") or server.model


def by_turn(*steps: ReplyLike) -> Callable[[dict], Reply]:
    """A stateless script for one conversation: the reply is chosen by how many assistant turns the
    request already holds, so parallel conversations (best-of-N attempts) each get the whole script."""
    def reply(request: dict) -> Reply:
        turn = sum(1 for m in request.get("messages", []) if m.get("role") == "assistant")
        step = steps[min(turn, len(steps) - 1)]
        return step(request) if callable(step) else step
    return reply
