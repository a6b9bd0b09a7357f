"""Outgoing notifications of job events to webhooks (ASSISTANT_WEBHOOK_URLS): signed, retried, recorded.

`Notifier` records and delivers (notifier.py), `JobNotification` is what one says (payload.py), `signing` is the
signature scheme receivers check. The job recorder calls `Notifier.job_ended` when it announces a job's end.
"""
from .notifier import Notifier, delivery_line, shown_url  # noqa: F401
from .payload import ENDED, EVENTS, WAITING, JobNotification, job_notification  # noqa: F401
from .signing import verify  # noqa: F401
