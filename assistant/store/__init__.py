from .models import (Artifact, Element, Feedback, Job, JobEvent, LogChunk, Message, Thread, TokenUsage,  # noqa: F401
                     User)
from .store import NotFound, StaleRun, Store  # noqa: F401
