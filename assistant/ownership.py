"""Who may touch which conversation and job: the one place that decides, for the web app and the CLI.

A thread belongs to the user who created it; a job belongs to its thread's owner. A client names threads
and jobs (a socket's thread id, an action's job id, a URL), and every such name is checked here against
the authenticated user, never against what the same client said earlier (its session's thread).

A thread that does not exist yet may be created by whoever names it; one that exists and is someone
else's is refused, with the same answer as for a job or thread that does not exist, so ids cannot be
probed. `user=None` is a call of our own (a background task, the single-user CLI) and is trusted.
"""
from __future__ import annotations

from .store import Job, Store, models


class NotYours(PermissionError):
    """The thread or job exists but belongs to someone else (or does not exist, for jobs): refuse, say nothing."""

    def __init__(self, what: str = "not found"):
        super().__init__(what)


def owner_of(store: Store, thread: models.Thread | None) -> str | None:
    """The identifier of the thread's owner, None for a missing thread or one without an owner."""
    if thread is None or thread.user_id is None:
        return None
    with store.session() as s:
        user = s.get(models.User, thread.user_id)
        return user.identifier if user else None


def may_touch(store: Store, thread: models.Thread | None, user: str | None) -> bool:
    """Whether `user` may read or write this existing thread (False for a missing one)."""
    if thread is None:
        return False
    if user is None:
        return True
    return bool(user) and owner_of(store, thread) == user


def thread_for(store: Store, thread_id: str | None, user: str | None) -> models.Thread | None:
    """The thread if it exists and `user` owns it; None if it does not exist (the user may create it);
    NotYours if it exists and is someone else's."""
    if not thread_id:
        return None
    thread = store.get_thread(thread_id)
    if thread is None:
        return None
    if not may_touch(store, thread, user):
        raise NotYours("this conversation is not yours")
    return thread


def owned_thread(store: Store, thread_id: str | None, user: str | None) -> models.Thread:
    """The thread if it exists and `user` owns it; NotYours otherwise (missing or someone else's)."""
    thread = thread_for(store, thread_id, user)
    if thread is None:
        raise NotYours("no such conversation")
    return thread


def owned_job(store: Store, job_id: str | None, user: str | None) -> Job:
    """The job if its thread's owner is `user`; NotYours for a missing job, a job without a thread (made by
    the CLI) asked for by a web user, or someone else's."""
    try:
        job = store.get_job(str(job_id or ""))
    except LookupError:
        raise NotYours("no such job") from None
    if user is None:
        return job
    if not job.thread_id:
        raise NotYours("no such job")
    try:
        owned_thread(store, job.thread_id, user)
    except NotYours:
        raise NotYours("no such job") from None  # the same words as for a job that does not exist
    return job
