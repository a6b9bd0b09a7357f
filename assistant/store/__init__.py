from .models import (Artifact, Element, Feedback, Job, JobEvent, LogChunk, Message, Notification,  # noqa: F401
                     SandboxEngine, SteerMessage, Thread, TokenUsage, User)
from .store import NotFound, StaleRun, Store, ThreadJobs  # noqa: F401
