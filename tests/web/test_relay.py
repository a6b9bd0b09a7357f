"""The relay's card writes into a session (a recording Chainlit session, no browser): a finished card is complete
whatever this process remembers sending, one failing part does not hold back the others, a handler that refreshes
a card keeps its own session, and two writes of one card never interleave."""
from __future__ import annotations

import asyncio
import uuid

import chainlit as cl
import pytest
from chainlit.context import ChainlitContext, context_var
from chainlit.session import WebsocketSession, ws_sessions_id, ws_sessions_sid

from assistant.domain import states
from assistant.web.relay import JobRelay, action_id

NAMES = ("cancel_job", "retry_job")


def buttons(job, _source):
    payload = {"job_id": job.id}
    if job.state in states.ACTIVE:
        return [cl.Action(name="cancel_job", payload=payload, label="Cancel")]
    return [cl.Action(name="retry_job", payload=payload, label="Retry")]


@pytest.fixture
def sessions():
    made = []

    def make(thread_id="t1"):
        events = []

        async def emit(event, data):
            events.append((event, data))

        session = WebsocketSession(id=str(uuid.uuid4()), socket_id=str(uuid.uuid4()), emit=emit, emit_call=None,
                                   user_env={}, client_type="webapp", thread_id=thread_id)
        made.append(session)
        return session, events

    yield make
    for session in made:
        ws_sessions_id.pop(session.id, None)
        ws_sessions_sid.pop(session.socket_id, None)


def run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def action_events(events):
    return [(event, data["id"]) for event, data in events if event in ("action", "remove_action")]


def test_a_finished_card_clears_a_cancel_button_this_process_forgot_it_sent(store, sessions):
    job = store.create_job(task="t", repo="/r", thread_id="t1", state=states.RUNNING)
    session, events = sessions()

    async def scenario():
        relay = JobRelay(store, asyncio.get_running_loop(), buttons, NAMES)
        await relay.show_card(session, store.get_job(job.id), "running")
        relay.forget_now(session.id)  # what a restart, or the old forget-on-every-socket-drop, leaves
        store.transition(job.id, states.SUCCEEDED, "done")
        assert await relay.show_card(session, store.get_job(job.id), "succeeded") is True

    run(scenario())
    cancel, retry = action_id(job.id, "cancel_job"), action_id(job.id, "retry_job")
    seen = action_events(events)
    assert seen[0] == ("action", cancel)
    assert ("remove_action", cancel) in seen[1:]
    assert seen[-1] == ("action", retry)
    assert seen.index(("remove_action", cancel)) < seen.index(("action", retry))
    assert seen.count(("action", cancel)) == 1  # never sent again once the job ended


def test_a_part_that_fails_does_not_hold_back_the_buttons(store, sessions, monkeypatch):
    job = store.create_job(task="t", repo="/r", thread_id="t1", state=states.SUCCEEDED)
    session, events = sessions()

    async def broken(*_args, **_kwargs):
        raise OSError("disk full")

    async def scenario():
        relay = JobRelay(store, asyncio.get_running_loop(), buttons, NAMES)
        monkeypatch.setattr(relay, "_sync_diff", broken)
        return await relay.show_card(session, store.get_job(job.id), "succeeded", {"files": []})

    assert run(scenario()) is False  # not complete: the relay tries the final card again later
    assert ("action", action_id(job.id, "retry_job")) in action_events(events)
    assert any(event == "update_message" for event, _ in events)


def test_refreshing_a_card_leaves_the_callers_session_as_it_was(store, sessions):
    job = store.create_job(task="t", repo="/r", thread_id="t1", state=states.RUNNING)
    mine, my_events = sessions()
    other, other_events = sessions()

    async def scenario():
        relay = JobRelay(store, asyncio.get_running_loop(), buttons, NAMES)
        context_var.set(ChainlitContext(mine))
        await relay.show_card(other, store.get_job(job.id), "running")
        return context_var.get().session

    assert run(scenario()) is mine
    assert other_events and not my_events


def test_writes_of_one_card_never_interleave(store):
    order = []

    async def scenario():
        relay = JobRelay(store, asyncio.get_running_loop(), buttons, NAMES)

        async def write(name, hold):
            async with relay._job_lock("j1"):
                order.append(f"{name} in")
                await asyncio.sleep(hold)
                order.append(f"{name} out")

        first = asyncio.ensure_future(write("a", 0.05))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(write("b", 0.05))  # waits for a
        await first
        third = asyncio.ensure_future(write("c", 0))       # arrives while b holds the lock: must wait for b
        await asyncio.gather(second, third)
        assert "j1" not in relay._locks  # nobody holds or waits: dropped

    run(scenario())
    assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]


def test_a_card_shown_from_a_handler_is_a_top_level_message_in_every_session(store, sessions):
    """A job started in one tab is refreshed from that tab's `on_message`, whose run step is open in the context:
    the card must not name that step as its parent, which no other tab has (a browser drops such a message)."""
    job = store.create_job(task="t", repo="/r", thread_id="t1", state=states.RUNNING)
    starter, _ = sessions()
    other, other_events = sessions()

    async def scenario():
        relay = JobRelay(store, asyncio.get_running_loop(), buttons, NAMES)
        context_var.set(ChainlitContext(starter))
        async with cl.Step(name="on_message", type="run") as run_step:
            await relay.show_card(other, store.get_job(job.id), "running")
            inner = cl.Message(content="after")  # the handler's own messages still nest under its run
        return run_step.id, inner.parent_id

    run_id, inner_parent = run(scenario())
    assert inner_parent == run_id
    cards = [data for event, data in other_events if event in ("new_message", "update_message")]
    assert cards and all(data.get("parentId") is None for data in cards), cards
    assert any(event == "new_message" for event, _ in other_events)
