"""The Chainlit data layer on a real SQLite store: round trips, paging, and ownership through every method."""
from __future__ import annotations

import json

import asyncio
import uuid

import pytest
from chainlit.context import init_ws_context
from chainlit.session import WebsocketSession
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User
from sqlalchemy import event

from assistant.web import viewer
from assistant.web.datalayer import NotOwner, StoreDataLayer
from assistant.web.relay import web_card


def as_viewer(identifier: str | None):
    return viewer._request_viewer.set(identifier)


@pytest.fixture
def layer(store):
    return StoreDataLayer(store)


def step(thread_id: str, text: str, *, kind: str = "assistant_message", created: str | None = None, **extra):
    return {"id": str(uuid.uuid4()), "threadId": thread_id, "name": "Assistant", "type": kind, "output": text,
            "createdAt": created or "2025-01-01T10:00:00.000Z", "metadata": extra.pop("metadata", {}), **extra}


async def new_thread(layer: StoreDataLayer, owner: str, name: str = "a thread") -> str:
    user = await layer.create_user(User(identifier=owner))
    thread_id = str(uuid.uuid4())
    token = as_viewer(owner)
    try:
        await layer.update_thread(thread_id, name=name, user_id=user.id)
    finally:
        viewer._request_viewer.reset(token)
    return thread_id


async def test_users_are_created_once_and_found_by_identifier(layer):
    first = await layer.create_user(User(identifier="ada", display_name="Ada L."))
    again = await layer.create_user(User(identifier="ada"))
    found = await layer.get_user("ada")
    assert first.id == again.id == found.id
    assert found.display_name == "Ada L."
    assert await layer.get_user("nobody") is None


async def test_steps_round_trip_in_order_with_extras(layer):
    thread_id = await new_thread(layer, "ada")
    token = as_viewer("ada")
    try:
        question = step(thread_id, "", kind="user_message", created="2025-01-01T10:00:00.000Z", input="hi",
                        command="ask")
        answer = step(thread_id, "hello 【F:a.py†L1-L2】", created="2025-01-01T10:00:01.000Z",
                      metadata={"k": 1}, showInput=False, defaultOpen=True)
        await layer.create_step(answer)
        await layer.create_step(question)
        await layer.update_step({**answer, "output": "hello again", "isError": True})
        thread = await layer.get_thread(thread_id)
    finally:
        viewer._request_viewer.reset(token)
    assert [s["id"] for s in thread["steps"]] == [question["id"], answer["id"]]
    got = thread["steps"][1]
    assert got["output"] == "hello again" and got["isError"] is True
    assert got["metadata"] == {"k": 1} and got["showInput"] is False and got["defaultOpen"] is True
    assert thread["steps"][0]["command"] == "ask"
    assert thread["userIdentifier"] == "ada" and thread["name"] == "a thread"


async def test_a_step_for_an_unknown_thread_creates_it_for_the_writer(layer, store):
    await layer.create_user(User(identifier="ada"))
    thread_id = str(uuid.uuid4())
    token = as_viewer("ada")
    try:
        await layer.create_step(step(thread_id, "first"))
    finally:
        viewer._request_viewer.reset(token)
    assert await layer.get_thread_author(thread_id) == "ada"


async def test_second_user_sees_nothing_through_any_method(layer, store):
    thread_id = await new_thread(layer, "ada", name="secret plans")
    bob = await layer.create_user(User(identifier="bob"))
    ada = await layer.get_user("ada")
    token = as_viewer("ada")
    try:
        msg = step(thread_id, "private")
        await layer.create_step(msg)
        feedback_id = await layer.upsert_feedback(Feedback(forId=msg["id"], value=1, threadId=thread_id))
        from chainlit.element import Text
        element = Text(name="notes", content="private notes", thread_id=thread_id, for_id=msg["id"])
        await layer.create_element(element)
    finally:
        viewer._request_viewer.reset(token)

    token = as_viewer("bob")
    try:
        # Not None (Chainlit would take the id for a new thread of bob's): a thread of nobody bob can be,
        # carrying nothing of ada's, which Chainlit's connect and resume refuse.
        foreign = await layer.get_thread(thread_id)
        assert foreign is not None and foreign["userIdentifier"] not in ("bob", "ada", "")
        assert foreign["steps"] == [] and foreign["elements"] == [] and foreign["metadata"] == {}
        assert "secret" not in json.dumps(foreign) and "private" not in json.dumps(foreign)
        assert await layer.get_element(thread_id, element.id) is None
        listed = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=ada.id))
        assert listed.data == []
        own = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=bob.id))
        assert own.data == []
        with pytest.raises(NotOwner):
            await layer.create_step(step(thread_id, "injected"))
        with pytest.raises(NotOwner):
            await layer.update_step({**msg, "output": "overwritten"})
        with pytest.raises(NotOwner):
            await layer.delete_step(msg["id"])
        with pytest.raises(NotOwner):
            await layer.update_thread(thread_id, name="mine now")
        with pytest.raises(NotOwner):
            await layer.upsert_feedback(Feedback(forId=msg["id"], value=0, threadId=thread_id))
        with pytest.raises(NotOwner):
            await layer.delete_feedback(feedback_id)
        with pytest.raises(NotOwner):
            await layer.delete_element(element.id, thread_id)
        with pytest.raises(NotOwner):
            await layer.delete_thread(thread_id)
    finally:
        viewer._request_viewer.reset(token)

    token = as_viewer(viewer.ANONYMOUS)
    try:
        assert await layer.get_thread(thread_id) is None
    finally:
        viewer._request_viewer.reset(token)

    token = as_viewer("ada")
    try:
        thread = await layer.get_thread(thread_id)
        assert thread["name"] == "secret plans"
        assert [s["output"] for s in thread["steps"]] == ["private"]
        assert thread["steps"][0]["feedback"]["value"] == 1
        got = await layer.get_element(thread_id, element.id)
        assert got["props"]["content"] == "private notes"
    finally:
        viewer._request_viewer.reset(token)


async def test_element_is_only_found_under_its_own_thread(layer):
    first = await new_thread(layer, "ada")
    second = await new_thread(layer, "ada")
    from chainlit.element import Text
    element = Text(name="n", content="c", thread_id=first)
    token = as_viewer("ada")
    try:
        await layer.create_step(step(first, "x"))
        await layer.create_element(element)
        assert await layer.get_element(second, element.id) is None
        assert (await layer.get_element(first, element.id))["name"] == "n"
    finally:
        viewer._request_viewer.reset(token)


async def test_list_threads_pages_newest_first_and_searches(layer, store):
    ids = []
    for i in range(5):
        thread_id = await new_thread(layer, "ada", name=f"thread {i}")
        ids.append(thread_id)
    ada = await layer.get_user("ada")
    token = as_viewer("ada")
    try:
        page1 = await layer.list_threads(Pagination(first=2), ThreadFilter(userId=ada.id))
        page2 = await layer.list_threads(Pagination(first=2, cursor=page1.pageInfo.endCursor),
                                         ThreadFilter(userId=ada.id))
        page3 = await layer.list_threads(Pagination(first=2, cursor=page2.pageInfo.endCursor),
                                         ThreadFilter(userId=ada.id))
        found = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=ada.id, search="read 3"))
    finally:
        viewer._request_viewer.reset(token)
    seen = [t["id"] for t in page1.data + page2.data + page3.data]
    assert seen == list(reversed(ids))
    assert page1.pageInfo.hasNextPage and page2.pageInfo.hasNextPage and not page3.pageInfo.hasNextPage
    assert [t["name"] for t in found.data] == ["thread 3"]


async def test_job_cards_are_rendered_from_the_job_at_read_time(store):
    rendered = {}
    layer = StoreDataLayer(store, render_job_card=lambda job_id, _source: rendered.get(job_id))
    thread_id = await new_thread(layer, "ada")
    token = as_viewer("ada")
    try:
        card = step(thread_id, "job 1 · queued", metadata={"job_id": "abcd1234"})
        plain = step(thread_id, "just text", created="2025-01-01T10:00:05.000Z")
        await layer.create_step(card)
        await layer.create_step(plain)
        rendered["abcd1234"] = "job 1 · succeeded"
        thread = await layer.get_thread(thread_id)
    finally:
        viewer._request_viewer.reset(token)
    assert [s["output"] for s in thread["steps"]] == ["job 1 · succeeded", "just text"]
    assert store.get_message(card["id"]).job_id == "abcd1234"


async def test_a_thread_with_many_job_cards_takes_as_many_queries_as_one_with_few(store):
    """No N+1: every card of the thread is rendered from one batched load of its jobs, events and diffs,
    and the cards say what rendering each from the store says."""
    layer = StoreDataLayer(store, render_job_card=lambda job_id, source: web_card(source, job_id))
    counts, outputs = [], []
    for jobs in (2, 9):
        thread_id = await new_thread(layer, "ada", f"{jobs} jobs")
        for n in range(jobs):
            job = store.create_job(task=f"change {n}", repo="/r", thread_id=thread_id, title=f"change {n}")
            store.transition(job.id, "preparing")
            store.add_event(job.id, "step", {"step": 1, "tool": "shell", "title": f"$ make {n}", "exit_code": 0})
            store.put_artifact(job.id, "diff", f"diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+{n}\n")
            store.put_artifact(job.id, "patch", "a patch")
            store.transition(job.id, "running")
            store.transition(job.id, "succeeded")
            store.upsert_message(str(uuid.uuid4()), thread_id, type="assistant_message", name="Jobs", job_id=job.id,
                                 meta={"metadata": {"job_id": job.id}})
        seen: list[str] = []
        record = lambda *args: seen.append(args[2])  # noqa: E731
        event.listen(store.engine, "before_cursor_execute", record)
        try:
            thread = await layer.get_thread(thread_id)
        finally:
            event.remove(store.engine, "before_cursor_execute", record)
        counts.append(len(seen))
        outputs.append([(s["output"], web_card(store, s["metadata"]["job_id"])) for s in thread["steps"]])
    assert counts[0] == counts[1]
    for pairs in outputs:
        assert all(batched == alone and "✓ succeeded" in batched and "Download the patch" in batched
                   for batched, alone in pairs)


async def test_writers_are_checked_once_per_thread_and_again_after_it_is_deleted(layer, store):
    thread_id = await new_thread(layer, "ada")
    token = as_viewer("bob")
    try:
        with pytest.raises(NotOwner):
            await layer.create_step(step(thread_id, "bob's first try"))
        with pytest.raises(NotOwner):  # a refusal is not remembered as a pass
            await layer.create_step(step(thread_id, "bob's second try"))
    finally:
        viewer._request_viewer.reset(token)
    token = as_viewer("ada")
    try:
        await layer.create_step(step(thread_id, "before"))
        await layer.delete_thread(thread_id)
        await layer.create_step(step(thread_id, "after"))  # the thread is made again for its writer
        thread = await layer.get_thread(thread_id)
    finally:
        viewer._request_viewer.reset(token)
    assert [s["output"] for s in thread["steps"]] == ["after"]
    assert thread["userIdentifier"] == "ada"


async def test_a_resume_takes_the_read_its_socket_connect_made_unless_the_thread_was_written(layer, store):
    """Chainlit's connect handler reads the whole thread to check its author, then the resume reads it again."""
    thread_id = await new_thread(layer, "ada")
    seen: list[str] = []
    record = lambda *args: seen.append(args[2])  # noqa: E731
    token = as_viewer("ada")
    try:
        await layer.create_step(step(thread_id, "first"))
        at_connect = await layer.get_thread(thread_id)
        event.listen(store.engine, "before_cursor_execute", record)
        try:
            resumed = await read_as_resume(layer, thread_id)
            read_by_page = len(seen)
            await layer.get_thread(thread_id)  # not a resume: read again
        finally:
            event.remove(store.engine, "before_cursor_execute", record)
        resumed["steps"].append({"id": "x"})  # a caller's changes stay its own
        await layer.create_step(step(thread_id, "second", created="2025-01-01T10:00:01.000Z"))
        after_write = await read_as_resume(layer, thread_id)
    finally:
        viewer._request_viewer.reset(token)
    token = as_viewer("bob")
    try:
        other = await read_as_resume(layer, thread_id)  # another viewer is checked, not served the read
        assert other["userIdentifier"] != "bob" and other["steps"] == []
    finally:
        viewer._request_viewer.reset(token)
    assert read_by_page == 0 and len(seen) > 0
    assert [s["output"] for s in at_connect["steps"]] == [s["output"] for s in resumed["steps"][:-1]] == ["first"]
    assert [s["output"] for s in after_write["steps"]] == ["first", "second"]


async def read_as_resume(layer: StoreDataLayer, thread_id: str):
    """get_thread as Chainlit's connection_successful calls it: in a socket session resuming the thread
    (in a task of its own, so the test's context stays without a session)."""
    session = WebsocketSession(id=str(uuid.uuid4()), socket_id="sid", emit=lambda *a: None,
                               emit_call=lambda *a: None, user_env={}, client_type="webapp", thread_id=thread_id)
    session.thread_id_to_resume = thread_id

    async def resume():
        init_ws_context(session)
        return await layer.get_thread(thread_id)
    try:
        return await asyncio.create_task(resume())
    finally:
        await session.delete()


async def test_internal_calls_without_a_viewer_are_trusted(layer):
    thread_id = await new_thread(layer, "ada")
    await layer.create_step(step(thread_id, "from a background job"))
    thread = await layer.get_thread(thread_id)
    assert [s["output"] for s in thread["steps"]] == ["from a background job"]


async def test_thread_metadata_merges_and_owner_cannot_be_reassigned(layer):
    thread_id = await new_thread(layer, "ada")
    bob = await layer.create_user(User(identifier="bob"))
    token = as_viewer("ada")
    try:
        await layer.update_thread(thread_id, metadata={"a": 1})
        await layer.update_thread(thread_id, metadata={"b": 2}, user_id=bob.id, tags=["x"])
        thread = await layer.get_thread(thread_id)
    finally:
        viewer._request_viewer.reset(token)
    assert thread["metadata"] == {"a": 1, "b": 2}
    assert thread["tags"] == ["x"]
    assert thread["userIdentifier"] == "ada"


def test_tokens_identify_their_user_and_forgeries_nobody(monkeypatch):
    from chainlit.auth.jwt import create_jwt

    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "s" * 40)
    token = create_jwt(User(identifier="ada"))
    assert viewer.identify_token(token) == "ada"
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "t" * 40)
    assert viewer.identify_token(token) == viewer.ANONYMOUS
    assert viewer.identify_token(None) == viewer.ANONYMOUS
    scope = {"type": "http", "headers": [(b"cookie", b"x=1; access_token_0=ab; access_token_1=cd")]}
    assert viewer._token_from_scope(scope) == "abcd"


def test_conversation_names_show_the_repository_and_tell_identical_titles_apart():
    from datetime import datetime
    from types import SimpleNamespace

    from assistant.web.datalayer import listed_names, repo_label

    def thread(name, repo, minute):
        return SimpleNamespace(name=name, repo=repo, created_at=datetime(2025, 3, 4, 10, minute))

    assert repo_label("/home/me/calc/") == "calc" and repo_label("https://host/org/calc.git") == "calc"
    assert repo_label("git@host:org/calc.git") == "calc" and repo_label(None) == ""
    names = listed_names([thread("Fix the add function", "/src/calc", 1), thread("Fix the add function", "/src/calc", 2),
                          thread("Fix the add function", "/src/other", 3), thread("calc — Renamed", "/src/calc", 4),
                          thread(None, None, 5), thread("Same", "/r/x", 6), thread("Same", "/r/x", 6)])
    assert names[0] == "calc — Fix the add function · Mar 04 10:01"
    assert names[1] == "calc — Fix the add function · Mar 04 10:02"
    assert names[2] == "other — Fix the add function"
    assert names[3] == "calc — Renamed" and names[4] == "New conversation"
    assert names[5:] == ["x — Same · Mar 04 10:06 (1)", "x — Same · Mar 04 10:06 (2)"]
    typed = listed_names([thread("/code Create module m1", "/r/calc", 7), thread("/review  job 2", "/r/calc", 8),
                          thread("/code", "/r/calc", 9), thread("/tmp is full again", "/r/calc", 10),
                          thread("/codes are wrong", "/r/calc", 11)])
    assert typed == ["calc — Create module m1", "calc — job 2", "calc — New conversation",
                     "calc — /tmp is full again", "calc — /codes are wrong"]


def test_the_names_strip_every_command_of_the_composer():
    from assistant.app import COMMANDS
    from assistant.web.datalayer import SLASH_COMMANDS

    assert sorted(c["id"] for c in COMMANDS) == sorted(SLASH_COMMANDS)
