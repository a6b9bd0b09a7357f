"""cl.Message without the 1 ms sleep Chainlit's Message.__init__ makes on the event loop.

Chainlit 2.x sleeps 1 ms in every Message.__init__ (time.sleep, not asyncio): the event loop stands still.
That is half a second for a resumed thread of 500 messages (connection_successful builds a Message from
each message step, only to fill chat_context, which this app does not read), and 1 ms per card a reopened
thread refreshes or per answer. A message's timestamps come from its step (created_at is set in send(),
or given), not from that pause, so building one without it changes nothing else.
"""
from __future__ import annotations

import time

import chainlit.message as chainlit_message
import chainlit.socket as chainlit_socket
from chainlit.message import Message


class _TimeWithoutSleep:
    """The time module as chainlit.message sees it while a message is built here: everything but sleep."""

    @staticmethod
    def sleep(_seconds: float) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(time, name)


_WITHOUT_SLEEP = _TimeWithoutSleep()


def _unslept(build):
    # Swapped for the one synchronous call on the event loop's thread: nothing else runs in between.
    if getattr(chainlit_message, "time", None) is not time:  # a Chainlit that no longer imports time so
        return build()
    chainlit_message.time = _WITHOUT_SLEEP
    try:
        return build()
    finally:
        chainlit_message.time = time


def new_message(**fields) -> Message:
    """cl.Message(**fields), without the sleep."""
    return _unslept(lambda: Message(**fields))


class ResumedMessage(Message):
    """What chainlit.socket builds a resumed thread's messages with (see install_resume_without_sleep)."""

    @classmethod
    def from_dict(cls, _dict) -> Message:
        return _unslept(lambda: Message.from_dict(_dict))


def install_resume_without_sleep() -> None:
    """Resumed threads build their messages without the sleep (chainlit.socket's `Message` only)."""
    if chainlit_socket.Message is Message:
        chainlit_socket.Message = ResumedMessage
