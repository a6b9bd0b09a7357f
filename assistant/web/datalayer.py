"""Chainlit's persistence on the project's own store: users, threads, steps, elements, feedback.

Every read and write checks that the user asking owns the thread (through ownership.py), because several
Chainlit endpoints (feedback, shared threads, the socket's resume) do not. Calls from our own background
tasks carry no user and are trusted. A thread that exists but is someone else's is never read as a new
one: get_thread answers it as a thread of nobody anyone can be, which Chainlit's own checks refuse.

Job cards are messages with a ``job_id``; their text is rendered from the job row at read time, so a
reopened thread shows the job as it is now, whatever happened while no browser was connected.
"""
from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from chainlit.data.base import BaseDataLayer
from chainlit.context import ChainlitContextException, context
from chainlit.data.utils import queue_until_user_message as _chainlit_queue
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadDict, ThreadFilter
from chainlit.user import PersistedUser, User
from sqlalchemy.exc import IntegrityError

from .. import ownership
from ..store import models
from ..store.store import Store
from .threadview import ThreadJobsView
from .viewer import ANONYMOUS, current_viewer

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict


class NotOwner(PermissionError):
    pass


# StepDict keys without a column of their own; kept in Message.meta["step"].
_STEP_EXTRAS = ("tags", "command", "modes", "defaultOpen", "autoCollapse", "icon", "waitForAnswer", "generation")

# (job id, the store or a ThreadJobsView of the job's thread) -> the card's text
JobCardRenderer = Callable[[str, Any], Optional[str]]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands datetimes back naive; they were written as UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _resuming(thread_id: str) -> bool:
    """Whether this is the resume of `thread_id` by a socket session (Chainlit's connection_successful)."""
    try:
        return getattr(context.session, "thread_id_to_resume", None) == thread_id
    except ChainlitContextException:
        return False


def queue_until_user_message():
    """Chainlit's queueing of step writes before a thread's first message, usable outside any session too."""
    def decorator(method):
        queued = _chainlit_queue()(method)

        @functools.wraps(method)
        async def wrapper(self, *args, **kwargs):
            try:
                context.session
            except ChainlitContextException:
                return await method(self, *args, **kwargs)
            return await queued(self, *args, **kwargs)
        return wrapper
    return decorator


NOBODY = "\0someone else"  # no user identifier can be this
WRITERS_KEPT = 4096
# A socket that resumes a thread reads it whole twice within milliseconds: Chainlit's connect handler (only to
# check its author), then the resume. The resume takes a read this recent, with no write since, as its own.
RECENT_READ_S = 1.0


class StoreDataLayer(BaseDataLayer):
    def __init__(self, store: Store, render_job_card: JobCardRenderer | None = None):
        self.store = store
        self.render_job_card = render_job_card
        # (thread id, viewer) pairs already allowed to write: a thread's owner never changes, and every
        # message, step and card update is a write (two queries each to check it again).
        self._writers: set[tuple[str, str | None]] = set()
        self._recent: dict[tuple[str, str | None], tuple[float, int, ThreadDict]] = {}  # (when, version, dict)
        self._versions: dict[str, int] = {}  # thread id -> writes seen through this layer

    def _written(self, thread_id: str | None) -> None:
        """After a write to the thread: a recent read of it is out of date, and so is one under way."""
        if thread_id:
            self._versions[thread_id] = self._versions.get(thread_id, 0) + 1
            for key in [k for k in self._recent if k[0] == thread_id]:
                self._recent.pop(key, None)

    # ------------------------------------------------------------------ ownership
    def _owner_identifier(self, thread: models.Thread | None) -> str | None:
        return ownership.owner_of(self.store, thread)

    def _may_see(self, thread: models.Thread | None, viewer: str | None) -> bool:
        return ownership.may_touch(self.store, thread, viewer)

    def _check_write(self, thread_id: str, viewer: str | None) -> None:
        """A write to a thread that exists must come from its owner; a new thread is created for the writer."""
        if (thread_id, viewer) in self._writers:
            return
        self._check_first_write(thread_id, viewer)
        if len(self._writers) >= WRITERS_KEPT:
            self._writers.clear()
        self._writers.add((thread_id, viewer))

    def _check_first_write(self, thread_id: str, viewer: str | None) -> None:
        thread = self.store.get_thread(thread_id)
        if thread is None:
            if viewer == ANONYMOUS:
                raise NotOwner("not logged in")
            owner = self.store.get_or_create_user(viewer) if viewer else None
            if self._create_thread(thread_id, owner.id if owner else None):
                return
            thread = self.store.get_thread(thread_id)
        if not self._may_see(thread, viewer):
            raise NotOwner(f"thread {thread_id} belongs to someone else")

    def _create_thread(self, thread_id: str, owner_id: str | None) -> bool:
        """False when another request created it first (the first message races the thread's own write)."""
        try:
            self.store.create_thread(user_id=owner_id, thread_id=thread_id)
            return True
        except IntegrityError:
            return False

    # ------------------------------------------------------------------ users
    @staticmethod
    def _persisted(user: models.User) -> PersistedUser:
        meta = dict(user.meta or {})
        return PersistedUser(id=user.id, identifier=user.identifier, createdAt=_iso(user.created_at) or "",
                             metadata=meta, display_name=meta.get("display_name"))

    async def get_user(self, identifier: str) -> Optional[PersistedUser]:
        user = await asyncio.to_thread(self.store.get_user, identifier)
        return self._persisted(user) if user else None

    async def create_user(self, user: User) -> Optional[PersistedUser]:
        meta = {k: v for k, v in (user.metadata or {}).items() if k != "access"}  # the login's, not the user's
        if user.display_name:
            meta["display_name"] = user.display_name
        row = await asyncio.to_thread(self.store.get_or_create_user, user.identifier, meta)
        return self._persisted(row)

    # ------------------------------------------------------------------ feedback
    def _feedback_thread(self, for_id: str, thread_id: str | None) -> str | None:
        message = self.store.get_message(for_id)
        return message.thread_id if message else thread_id

    async def upsert_feedback(self, feedback: Feedback) -> str:
        viewer = current_viewer()

        def write() -> str:
            thread_id = self._feedback_thread(feedback.forId, feedback.threadId)
            if thread_id is None or not self._may_see(self.store.get_thread(thread_id), viewer):
                raise NotOwner("feedback on a message you cannot see")
            row = models.Feedback(for_id=feedback.forId, thread_id=thread_id, value=int(feedback.value),
                                  comment=feedback.comment)
            if feedback.id:
                row.id = feedback.id
            try:
                return self.store.upsert_feedback(row)
            finally:
                self._written(thread_id)

        return await asyncio.to_thread(write)

    async def delete_feedback(self, feedback_id: str) -> bool:
        viewer = current_viewer()

        def delete() -> bool:
            with self.store.session() as s:
                row = s.get(models.Feedback, feedback_id)
            if row is None:
                return False
            thread_id = self._feedback_thread(row.for_id, row.thread_id)
            if thread_id is None or not self._may_see(self.store.get_thread(thread_id), viewer):
                raise NotOwner("feedback on a message you cannot see")
            try:
                return self.store.delete_feedback(feedback_id)
            finally:
                self._written(thread_id)

        return await asyncio.to_thread(delete)

    # ------------------------------------------------------------------ elements
    @queue_until_user_message()
    async def create_element(self, element: "Element"):
        viewer = current_viewer()
        content = element.content if isinstance(getattr(element, "content", None), str) else None
        row = models.Element(id=element.id, thread_id=element.thread_id, for_id=element.for_id,
                             type=element.type, name=element.name, display=element.display,
                             mime=element.mime, url=element.url, content=content,
                             language=getattr(element, "language", None),
                             props=dict(getattr(element, "props", None) or {}))

        def write() -> None:
            if element.thread_id:
                self._check_write(element.thread_id, viewer)
            self.store.upsert_element(row)
            self._written(element.thread_id)

        await asyncio.to_thread(write)

    def _element_dict(self, row: models.Element) -> "ElementDict":
        return {"id": row.id, "threadId": row.thread_id, "type": row.type, "name": row.name,
                "display": row.display, "mime": row.mime, "url": row.url, "forId": row.for_id,
                "language": row.language, "props": {**(row.props or {}), **({"content": row.content} if row.content else {})},
                "chainlitKey": None, "objectKey": None, "path": None}

    async def get_element(self, thread_id: str, element_id: str) -> Optional["ElementDict"]:
        viewer = current_viewer()

        def read():
            row = self.store.get_element(element_id)
            if row is None or row.thread_id != thread_id:
                return None
            if not self._may_see(self.store.get_thread(thread_id), viewer):
                return None
            return self._element_dict(row)

        return await asyncio.to_thread(read)

    @queue_until_user_message()
    async def delete_element(self, element_id: str, thread_id: Optional[str] = None):
        viewer = current_viewer()

        def delete() -> None:
            row = self.store.get_element(element_id)
            if row is None or (thread_id and row.thread_id != thread_id):
                return
            if row.thread_id and not self._may_see(self.store.get_thread(row.thread_id), viewer):
                raise NotOwner("element of a thread you cannot see")
            self.store.delete_element(element_id)
            self._written(row.thread_id)

        await asyncio.to_thread(delete)

    # ------------------------------------------------------------------ steps
    def _message_fields(self, step: "StepDict") -> dict[str, Any]:
        metadata = dict(step.get("metadata") or {})
        extras = {k: step[k] for k in _STEP_EXTRAS if step.get(k) is not None}
        show_input = step.get("showInput")
        fields: dict[str, Any] = {
            "parent_id": step.get("parentId"), "name": step.get("name") or "", "type": step.get("type") or "undefined",
            "input": step.get("input"), "output": step.get("output") or "",
            "start": _parse_time(step.get("start")), "end": _parse_time(step.get("end")),
            "is_error": bool(step.get("isError")), "language": step.get("language"),
            "show_input": None if show_input is None else str(show_input).lower() if isinstance(show_input, bool) else show_input,
            "meta": {"metadata": metadata, "step": extras},
        }
        if metadata.get("job_id"):
            fields["job_id"] = metadata["job_id"]
        created = _parse_time(step.get("createdAt"))
        if created:
            fields["created_at"] = created
        return fields

    def _write_step(self, step: "StepDict", viewer: str | None) -> None:
        thread_id = step.get("threadId")
        if not thread_id or not step.get("id"):
            return
        self._check_write(thread_id, viewer)
        existing = self.store.get_message(step["id"])
        if existing is not None and existing.thread_id != thread_id:
            raise NotOwner("a step id of another thread")
        fields = self._message_fields(step)
        self.store.upsert_message(step["id"], thread_id, **fields)
        self._written(thread_id)

    @queue_until_user_message()
    async def create_step(self, step_dict: "StepDict"):
        await asyncio.to_thread(self._write_step, dict(step_dict), current_viewer())

    @queue_until_user_message()
    async def update_step(self, step_dict: "StepDict"):
        await asyncio.to_thread(self._write_step, dict(step_dict), current_viewer())

    @queue_until_user_message()
    async def delete_step(self, step_id: str):
        viewer = current_viewer()

        def delete() -> None:
            message = self.store.get_message(step_id)
            if message is None:
                return
            if not self._may_see(self.store.get_thread(message.thread_id), viewer):
                raise NotOwner("step of a thread you cannot see")
            self.store.delete_message(step_id)
            self._written(message.thread_id)

        await asyncio.to_thread(delete)

    def _show_input(self, value: str | None) -> bool | str | None:
        if value in ("true", "false"):
            return value == "true"
        return value

    def _step_dict(self, message: models.Message, feedback: models.Feedback | None,
                   cards: ThreadJobsView | None = None) -> "StepDict":
        meta = message.meta or {}
        output = message.output or ""
        if message.job_id and self.render_job_card:
            output = self.render_job_card(message.job_id, cards or self.store) or output
        step: dict[str, Any] = {
            "id": message.id, "threadId": message.thread_id, "parentId": message.parent_id,
            "name": message.name, "type": message.type, "input": message.input or "", "output": output,
            "createdAt": _iso(message.created_at), "start": _iso(message.start), "end": _iso(message.end),
            "isError": message.is_error, "language": message.language,
            "showInput": self._show_input(message.show_input), "metadata": dict(meta.get("metadata") or {}),
            "streaming": False,
        }
        step.update(meta.get("step") or {})
        if feedback is not None:
            step["feedback"] = {"id": feedback.id, "forId": feedback.for_id, "threadId": feedback.thread_id,
                                "value": feedback.value, "comment": feedback.comment}
        return step  # type: ignore[return-value]

    async def get_favorite_steps(self, user_id: str) -> list["StepDict"]:
        def read() -> list:
            favorites = []
            with self.store.session() as s:
                user = s.get(models.User, user_id)
            viewer = current_viewer()
            if user is None or (viewer is not None and viewer != user.identifier):
                return []
            for thread in self.store.list_threads(user_id, limit=1000):
                for message in self.store.list_messages(thread.id):
                    if ((message.meta or {}).get("metadata") or {}).get("favorite"):
                        favorites.append(self._step_dict(message, None))
            return favorites

        return await asyncio.to_thread(read)

    # ------------------------------------------------------------------ threads
    async def get_thread_author(self, thread_id: str) -> str:
        thread = await asyncio.to_thread(self.store.get_thread, thread_id)
        return (await asyncio.to_thread(self._owner_identifier, thread)) or ""

    async def delete_thread(self, thread_id: str):
        viewer = current_viewer()

        def delete() -> None:
            thread = self.store.get_thread(thread_id)
            if thread is None:
                return
            if not self._may_see(thread, viewer):
                raise NotOwner(f"thread {thread_id} belongs to someone else")
            self.store.delete_thread(thread_id)
            self._written(thread_id)
            self._writers = {key for key in self._writers if key[0] != thread_id}

        await asyncio.to_thread(delete)

    def _thread_dict(self, thread: models.Thread, with_steps: bool) -> ThreadDict:
        steps: list = []
        elements: list = []
        if with_steps:
            messages = self.store.list_messages(thread.id)
            feedback = self.store.feedback_for(m.id for m in messages)
            # Every job card of the thread from one load, not four queries per card.
            cards = ThreadJobsView(self.store, thread.id) if any(m.job_id for m in messages) else None
            steps = [self._step_dict(m, feedback.get(m.id), cards) for m in messages]
            elements = [self._element_dict(e) for e in self.store.list_elements(thread.id)]
        return {"id": thread.id, "createdAt": _iso(thread.created_at) or "", "name": thread.name,
                "userId": thread.user_id, "userIdentifier": self._owner_identifier(thread),
                "tags": list(thread.tags or []), "metadata": dict(thread.meta or {}),
                "steps": steps, "elements": elements}

    async def get_thread(self, thread_id: str) -> Optional[ThreadDict]:
        viewer = current_viewer()
        resuming = _resuming(thread_id)

        def read() -> Optional[ThreadDict]:
            recent = self._recent.get((thread_id, viewer))
            version = self._versions.get(thread_id, 0)
            if resuming and recent is not None and time.monotonic() - recent[0] < RECENT_READ_S and recent[1] == version:
                return {**recent[2], "steps": list(recent[2]["steps"]), "elements": list(recent[2]["elements"])}
            thread = self.store.get_thread(thread_id)
            if thread is None or viewer == ANONYMOUS:
                return None
            if not self._may_see(thread, viewer):
                return self._someone_elses(thread)
            read_at, found = time.monotonic(), self._thread_dict(thread, with_steps=True)
            for key in [k for k, v in self._recent.items() if read_at - v[0] >= RECENT_READ_S]:
                self._recent.pop(key, None)
            if self._versions.get(thread_id, 0) == version:  # no write while it was read
                self._recent[(thread_id, viewer)] = (read_at, version, found)
            return {**found, "steps": list(found["steps"]), "elements": list(found["elements"])}

        return await asyncio.to_thread(read)

    @staticmethod
    def _someone_elses(thread: models.Thread) -> ThreadDict:
        """A thread that exists but is not the viewer's: no name, no steps, and an author no user can be, so
        Chainlit's connect and resume refuse it instead of taking its id for a new thread."""
        return {"id": thread.id, "createdAt": _iso(thread.created_at) or "", "name": None, "userId": None,
                "userIdentifier": NOBODY, "tags": [], "metadata": {}, "steps": [], "elements": []}

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> PaginatedResponse[ThreadDict]:
        viewer = current_viewer()

        def read() -> PaginatedResponse[ThreadDict]:
            empty = PaginatedResponse(pageInfo=PageInfo(hasNextPage=False, startCursor=None, endCursor=None), data=[])
            if not filters.userId:
                return empty
            with self.store.session() as s:
                user = s.get(models.User, filters.userId)
            if user is None or (viewer is not None and viewer != user.identifier):
                return empty
            before = None
            if pagination.cursor:
                cursor_thread = self.store.get_thread(pagination.cursor)
                before = cursor_thread.updated_at if cursor_thread else None
            # One extra row tells whether another page exists.
            threads = self.store.list_threads(user.id, search=filters.search, limit=pagination.first + 1,
                                              before=before)
            if filters.feedback is not None:
                threads = [t for t in threads if self._has_feedback(t.id, filters.feedback)]
            page = threads[:pagination.first]
            data = [self._thread_dict(t, with_steps=False) for t in page]
            for item, name in zip(data, listed_names(page)):
                item["name"] = name
            return PaginatedResponse(
                pageInfo=PageInfo(hasNextPage=len(threads) > pagination.first,
                                  startCursor=page[0].id if page else None,
                                  endCursor=page[-1].id if page else None),
                data=data)

        return await asyncio.to_thread(read)

    def _has_feedback(self, thread_id: str, value: int) -> bool:
        messages = self.store.list_messages(thread_id)
        return any(f.value == value for f in self.store.feedback_for(m.id for m in messages).values())

    async def update_thread(self, thread_id: str, name: Optional[str] = None, user_id: Optional[str] = None,
                            metadata: Optional[dict] = None, tags: Optional[list[str]] = None):
        viewer = current_viewer()

        def write() -> None:
            thread = self.store.get_thread(thread_id)
            if thread is None:
                owner_id = user_id
                if owner_id is None and viewer:
                    owner_id = self.store.get_or_create_user(viewer).id
                elif viewer == ANONYMOUS:
                    raise NotOwner("not logged in")
                created = self._create_thread(thread_id, owner_id)
                thread = self.store.get_thread(thread_id)
                if not created and not self._may_see(thread, viewer):
                    raise NotOwner(f"thread {thread_id} belongs to someone else")
            elif not self._may_see(thread, viewer):
                raise NotOwner(f"thread {thread_id} belongs to someone else")
            fields: dict[str, Any] = {}
            if name is not None:
                fields["name"] = name
            if user_id is not None and thread.user_id is None:
                fields["user_id"] = user_id
            if metadata is not None:
                fields["meta"] = {**(thread.meta or {}), **metadata}
            if tags is not None:
                fields["tags"] = list(tags)
            if fields:
                self.store.update_thread(thread_id, **fields)
                self._written(thread_id)

        await asyncio.to_thread(write)

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        pass  # the store belongs to the Assistant, which closes it


def repo_label(repo: str | None) -> str:
    """A repository as a conversation list names it: the last part of its path or URL, without `.git`."""
    text = str(repo or "").rstrip("/\\")
    return re.split(r"[/\\:]", text)[-1].removesuffix(".git") if text else ""


# The composer's commands (app.COMMANDS): a conversation whose first message was typed as "/code Fix …" is named
# "Fix …" in the list, not after the command.
SLASH_COMMANDS = ("ask", "code", "jobs", "steer", "review")
_LEADING_COMMAND = re.compile(r"^/(?:" + "|".join(SLASH_COMMANDS) + r")(?:\s+|$)")


def listed_names(threads: list) -> list[str]:
    """The conversation list's names: "calc — Fix the add function" (the repository first, so conversations
    about different code tell apart), and a name two conversations share gets the time each began."""
    names = []
    for thread in threads:
        name = _LEADING_COMMAND.sub("", " ".join(str(thread.name or "").split())) or "New conversation"
        label = repo_label(thread.repo)
        names.append(f"{label} — {name}" if label and not name.startswith(f"{label} — ") else name)
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    out = []
    for thread, name in zip(threads, names):
        if counts[name] > 1 and thread.created_at is not None:
            name = f"{name} · {thread.created_at:%b %d %H:%M}"
        out.append(name)
    repeated = {name for name in out if out.count(name) > 1}  # begun in the same minute: number them
    seen: dict[str, int] = {}
    for i, name in enumerate(out):
        if name in repeated:
            seen[name] = seen.get(name, 0) + 1
            out[i] = f"{name} ({seen[name]})"
    return out
