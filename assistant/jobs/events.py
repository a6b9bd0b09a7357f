"""Moved to assistant.domain.events; this name stays until the web adapter imports it from there."""
from ..domain.events import *  # noqa: F401,F403
