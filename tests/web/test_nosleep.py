"""Messages built without Chainlit's 1 ms sleep on the event loop are the same messages."""
import time

import chainlit.message as chainlit_message
import chainlit.socket as chainlit_socket
import pytest
from chainlit.context import init_http_context
from chainlit.message import Message

from assistant.web.nosleep import ResumedMessage, install_resume_without_sleep, new_message

STEP = {"id": "5b8a2f0e-3c1d-4e7f-9a6b-1c2d3e4f5a6b", "threadId": "t", "parentId": None, "type": "assistant_message",
        "name": "Jobs", "output": "### Job 1", "createdAt": "2025-01-01T10:00:00.000000Z", "command": None,
        "language": None, "metadata": {"job_id": "abcd1234"}}


@pytest.fixture
async def sleeps(monkeypatch):
    """The time.sleep calls made (chainlit.message calls it through the time module)."""
    calls: list[float] = []
    monkeypatch.setattr(time, "sleep", calls.append)
    init_http_context(thread_id="t")
    return calls


async def test_chainlit_still_sleeps_when_it_builds_a_message(sleeps):
    Message.from_dict(STEP)
    assert sleeps == [0.001]  # when this fails, Chainlit dropped its sleep and nosleep.py can go


async def test_a_resumed_message_is_the_same_message_without_the_sleep(sleeps):
    resumed, plain = ResumedMessage.from_dict(STEP), Message.from_dict(STEP)
    assert sleeps == [0.001]  # Message.from_dict's only
    assert type(resumed) is Message and resumed.to_dict() == plain.to_dict()
    assert chainlit_message.time is time


async def test_new_message_is_the_same_message_without_the_sleep(sleeps):
    fields = dict(id=STEP["id"], content="hello", author="Jobs", metadata={"job_id": "abcd1234"})
    built = new_message(**fields)
    assert sleeps == []
    assert built.to_dict() == Message(**fields).to_dict()
    assert chainlit_message.time is time


def test_resumed_threads_build_their_messages_without_the_sleep(monkeypatch):
    monkeypatch.setattr(chainlit_socket, "Message", Message)
    install_resume_without_sleep()
    assert chainlit_socket.Message is ResumedMessage
