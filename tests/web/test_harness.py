"""The socket the web tests speak through reads the server as the browser does. A reopened thread gets a burst of
packets at once (its cards, their buttons, Chainlit's resume events); over long polling they come in one response,
and python-engineio's client gave up on a response of more than 16 packets: the socket dropped without a word and
a test waited out its timeout for events that could no longer come. A tiny socket.io server on loopback sends such
a burst, every time."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from .harness import SocketClient, free_port

BURST = 40  # more than python-engineio's 16 packets a payload, as a reopened thread with a finished job sends


@pytest.fixture
def burst_server():
    """A socket.io server at /ws/socket.io that answers connection_successful with BURST events queued at once,
    before its long-polling response goes out; `kill` drops every socket without a goodbye (a transport error)."""
    import socketio
    import uvicorn

    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=[])
    app = socketio.ASGIApp(sio, socketio_path="/ws/socket.io")

    @sio.on("connection_successful")
    async def burst(sid):
        # Queued together: each emit is a task of its own, and all of them run before the poll waiting for the
        # first packet wakes up and drains the queue into one response.
        await asyncio.gather(*(sio.emit("burst", {"n": n}, to=sid) for n in range(BURST)))

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test socket.io server did not start"
        time.sleep(0.05)

    def kill():  # the server's sockets end without a socket.io goodbye: the client sees a transport error
        server.should_exit = server.force_exit = True
        thread.join(15)

    yield f"http://127.0.0.1:{port}", kill
    kill()


def test_a_burst_of_packets_in_one_polling_response_all_arrive(burst_server):
    url, kill = burst_server
    client = SocketClient(url, "token")
    assert client.connect(), client.error
    try:
        assert client.wait_for(lambda events: sum(1 for e, _ in events if e == "burst") == BURST, 30), \
            client.received()[-500:]
        with client._lock:
            assert sorted(d["n"] for e, d in client.events if e == "burst") == list(range(BURST))
        assert not client.disconnected.is_set() and client.dropped is None
    finally:
        kill()  # first: a client closing waits for its pending long poll, which this server never answers
        client.close()


def test_a_socket_that_drops_fails_the_wait_at_once_saying_so(burst_server):
    url, kill = burst_server
    client = SocketClient(url, "token")
    assert client.connect(), client.error
    try:
        assert client.wait_for(lambda events: any(e == "burst" for e, _ in events), 30)
        kill()
        started = time.monotonic()
        with pytest.raises(AssertionError, match="dropped"):
            client.wait_for(lambda events: any(e == "never sent" for e, _ in events), 60)
        assert time.monotonic() - started < 30  # not the whole timeout
    finally:
        client.close()
