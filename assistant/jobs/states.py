"""Moved to assistant.domain.states; this name stays until the web adapter imports it from there."""
from ..domain.states import *  # noqa: F401,F403
