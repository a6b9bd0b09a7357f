from .models import (Artifact, Element, Feedback, Job, JobEvent, LogChunk, Message, SandboxEngine, Thread,  # noqa: F401
                     TokenUsage, User)
from .store import NotFound, StaleRun, Store  # noqa: F401
