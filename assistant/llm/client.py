"""The one place that talks to the model: the official openai SDK over Chat Completions.

Transient faults are retried with exponential backoff: 429, 5xx, timeouts and refused connections by
the SDK's own retry loop; a 200 whose body is not a chat completion (a proxy's login page, a gateway's
HTML error) and a stream cut short by our loop here, which the SDK does not retry. Both are told how
many times by settings. Every failure that is left surfaces as a ModelError whose message says what
went wrong and what to do. Token usage is recorded per job and per thread.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from ..config import Settings
from .tokens import count_message_tokens, count_tokens

log = logging.getLogger(__name__)

# Our retries of faults the SDK does not retry follow the SDK's own schedule: 0.5 s doubling to 8 s, jittered.
RETRY_FIRST_WAIT_S = 0.5
RETRY_MAX_WAIT_S = 8.0
RESTART_NOTICE = "\n\n(the model's stream broke off; its answer starts again)\n\n"


class ModelError(RuntimeError):
    """A model request that failed for good; the message is meant for the user."""


class ModelUnavailable(ModelError):
    pass


class ModelUnreachable(ModelUnavailable):
    """Nothing answers at the endpoint's address (no server there, a wrong host or port)."""


class ModelGarbage(ModelError):
    pass


class StreamCut(ModelUnavailable):
    pass


class ToolsUnsupported(ModelError):
    pass


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str

    def as_message_part(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Completion:
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""

    def as_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content or ""}
        if self.tool_calls:
            msg["tool_calls"] = [c.as_message_part() for c in self.tool_calls]
        return msg


class _Replay:
    """Which part of a repeated stream's text the caller has not been shown yet."""

    def __init__(self, shown: str):
        self.shown = shown          # what the caller has from the attempts before this one
        self.text = ""              # this attempt's text so far
        self.caught_up = not shown  # past the point where this attempt repeats what was shown

    def feed(self, delta: str) -> str:
        self.text += delta
        if self.caught_up:
            return delta
        if self.shown.startswith(self.text):
            return ""
        self.caught_up = True
        if self.text.startswith(self.shown):
            return self.text[len(self.shown):]
        return RESTART_NOTICE + self.text

    def seen_by_caller(self) -> str:
        """The answer the caller now holds, for the next attempt to be compared with."""
        return self.text if self.caught_up else self.shown


UsageSink = Callable[[str, str, int, int, "str | None", "str | None"], None]


def _tools_rejected(exc: openai.BadRequestError) -> bool:
    text = str(exc).lower()
    return "tool" in text or "function" in text


class ModelClient:
    def __init__(self, settings: Settings, *, base_url: str | None = None, api_key: str | None = None,
                 usage_sink: UsageSink | None = None, ensure_server: Callable[[], object] | None = None):
        self.settings = settings
        self._ensure_server = ensure_server or (lambda: None)  # restarts the embedded model if it died
        self.base_url = base_url or settings.openai_base_url or "https://api.openai.com/v1"
        self._sdk = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or settings.openai_api_key or "not-needed",
            timeout=settings.model_timeout_s,
            max_retries=settings.model_max_retries,
        )
        self._usage_sink = usage_sink

    # ------------------------------------------------------------------ helpers
    def model_for(self, role: str) -> str:
        return self.settings.model_for(role)  # type: ignore[arg-type]

    def _record(self, role: str, model: str, prompt: int, completion: int, job_id: str | None,
                thread_id: str | None) -> None:
        if self._usage_sink:
            try:
                self._usage_sink(role, model, prompt, completion, job_id, thread_id)
            except Exception:  # usage accounting must never fail a request
                log.exception("recording token usage failed")

    def _translate(self, exc: Exception) -> ModelError:
        where = self.base_url
        if isinstance(exc, openai.APITimeoutError):
            return ModelUnavailable(f"the model endpoint at {where} did not answer within {self.settings.model_timeout_s:.0f} s "
                                    f"(after {self.settings.model_max_retries} retries); try again, or raise ASSISTANT_MODEL_TIMEOUT_S")
        if isinstance(exc, openai.APIConnectionError):
            return ModelUnreachable(f"cannot reach the model endpoint at {where} ({exc.__cause__ or exc}); "
                                    f"start the model server that serves {where}, or set OPENAI_BASE_URL to the /v1 "
                                    "URL of one that runs")
        if isinstance(exc, openai.AuthenticationError):
            return ModelError(f"the model endpoint at {where} refused the API key (401); set OPENAI_API_KEY")
        if isinstance(exc, openai.NotFoundError):
            return ModelError(f"the model endpoint at {where} answered 404: {exc.message}; check ASSISTANT_MODEL and OPENAI_BASE_URL")
        if isinstance(exc, openai.RateLimitError):
            return ModelUnavailable(f"the model endpoint at {where} is rate limiting (429) and kept doing so through "
                                    f"{self.settings.model_max_retries} retries; wait and retry")
        if isinstance(exc, openai.APIStatusError):
            return ModelError(f"the model endpoint at {where} answered {exc.status_code}: {exc.message}")
        if isinstance(exc, (openai.APIResponseValidationError, ValueError, KeyError, TypeError, AttributeError)):
            return ModelGarbage(f"the model endpoint at {where} answered something that is not an OpenAI chat "
                                f"completion ({type(exc).__name__}: {str(exc)[:200]}); is OPENAI_BASE_URL an OpenAI-compatible /v1 URL?")
        return ModelError(f"model request failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ requests
    def _create(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self._sdk.chat.completions.create(**kwargs)
        except openai.BadRequestError as exc:
            if kwargs.get("tools") and _tools_rejected(exc):
                raise ToolsUnsupported(f"the model endpoint rejected function tools: {exc.message}") from exc
            if "stream_options" in kwargs and "stream_options" in str(exc):  # a server without include_usage
                return self._create({k: v for k, v in kwargs.items() if k != "stream_options"})
            raise self._translate(exc) from exc
        except Exception as exc:
            raise self._translate(exc) from exc

    def complete(self, role: str, messages: list[dict[str, Any]], *, tools: list[dict] | None = None,
                 job_id: str | None = None, thread_id: str | None = None,
                 response_format: dict | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, model: str | None = None) -> Completion:
        self._ensure_server()
        model = model or self.model_for(role)
        kwargs: dict[str, Any] = {"model": model, "messages": messages}
        if tools:
            kwargs["tools"] = tools
        if response_format:
            kwargs["response_format"] = response_format
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        return self._retrying(lambda: self._parse(self._create(kwargs), role, model, messages, job_id, thread_id))

    def _retrying(self, request: Callable[[], Any]) -> Any:
        """Run one request, retrying the transient faults the SDK leaves to us (ModelGarbage) with backoff."""
        retries = self.settings.model_max_retries
        for attempt in range(retries + 1):
            try:
                return request()
            except ModelGarbage as exc:
                if attempt == retries:
                    raise ModelGarbage(f"{exc} (the same after {retries} retries)") from exc
                self._wait_before_retry(attempt, exc)
        raise AssertionError("unreachable")

    def _guarded(self, request: Callable[[], Any]) -> Any:
        """An SDK call whose failures come out as ModelErrors; a reply that is no completion is garbage."""
        try:
            return request()
        except (openai.APIError, httpx.HTTPError, AttributeError, TypeError, ValueError) as exc:
            raise self._translate(exc) from exc

    def _wait_before_retry(self, attempt: int, exc: Exception) -> None:
        wait = min(RETRY_MAX_WAIT_S, RETRY_FIRST_WAIT_S * 2 ** attempt) * random.uniform(0.75, 1.0)
        log.warning("model request failed (%s); retry %d of %d in %.1f s", exc, attempt + 1,
                    self.settings.model_max_retries, wait)
        time.sleep(wait)

    def _parse(self, resp: Any, role: str, model: str, messages: list[dict], job_id: str | None,
               thread_id: str | None) -> Completion:
        try:
            choice = resp.choices[0]
            msg = choice.message
            calls = [ToolCall(id=c.id or f"call_{i}", name=c.function.name, arguments=c.function.arguments or "{}")
                     for i, c in enumerate(msg.tool_calls or [])]
            content = msg.content
        except Exception as exc:
            raise self._translate(exc if isinstance(exc, (ValueError, KeyError, TypeError)) else ValueError(repr(resp)[:200])) from exc
        if content is None and not calls:
            raise ModelGarbage(f"the model endpoint at {self.base_url} answered an empty message (finish_reason="
                               f"{choice.finish_reason!r}); retry, or try another model")
        usage = getattr(resp, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None) or count_message_tokens(messages, model)
        completion = getattr(usage, "completion_tokens", None) or count_tokens(
            (content or "") + "".join(c.arguments for c in calls), model)
        self._record(role, model, prompt, completion, job_id, thread_id)
        return Completion(content=content, tool_calls=calls, finish_reason=choice.finish_reason,
                          prompt_tokens=prompt, completion_tokens=completion, model=getattr(resp, "model", model) or model)

    def stream(self, role: str, messages: list[dict[str, Any]], *, job_id: str | None = None,
               thread_id: str | None = None, model: str | None = None,
               max_tokens: int | None = None) -> Iterator[str]:
        """Yield text deltas as they arrive; records usage when the stream ends."""
        for kind, value in self.stream_turn(role, messages, job_id=job_id, thread_id=thread_id, model=model,
                                            max_tokens=max_tokens):
            if kind == "text":
                yield value

    def stream_turn(self, role: str, messages: list[dict[str, Any]], *, tools: list[dict] | None = None,
                    job_id: str | None = None, thread_id: str | None = None, model: str | None = None,
                    max_tokens: int | None = None) -> Iterator[tuple[str, Any]]:
        """One streamed model turn: ("text", delta) as text arrives, then ("completion", Completion)
        with the whole text and any tool calls (assembled from their deltas).

        A stream that breaks off, or that carries no completion at all, is requested again with backoff.
        Text the caller already has is not sent twice; when the new answer differs from it, a notice
        says the answer starts again (the completion holds the new answer only)."""
        self._ensure_server()
        model = model or self.model_for(role)
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                                  "stream_options": {"include_usage": True}}
        if tools:
            kwargs["tools"] = tools
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        retries = self.settings.model_max_retries
        shown = ""
        for attempt in range(retries + 1):
            replay = _Replay(shown)
            try:
                for kind, value in self._stream_once(kwargs, role, model, messages, job_id, thread_id):
                    if kind == "completion":
                        yield kind, value
                        return
                    fresh = replay.feed(value)
                    if fresh:
                        yield "text", fresh
            except (StreamCut, ModelGarbage) as exc:
                if attempt == retries:
                    raise type(exc)(f"{exc} (the same after {retries} retries)") from exc
                shown = replay.seen_by_caller()
                self._wait_before_retry(attempt, exc)

    def _stream_once(self, kwargs: dict[str, Any], role: str, model: str, messages: list[dict[str, Any]],
                     job_id: str | None, thread_id: str | None) -> Iterator[tuple[str, Any]]:
        stream = self._create(kwargs)
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish = None
        usage = None
        events = 0
        try:
            for chunk in stream:
                events += 1
                if getattr(chunk, "usage", None):
                    usage = chunk.usage
                for choice in getattr(chunk, "choices", None) or []:
                    finish = choice.finish_reason or finish
                    delta = getattr(choice.delta, "content", None)
                    if delta:
                        text.append(delta)
                        yield "text", delta
                    for tc in getattr(choice.delta, "tool_calls", None) or []:
                        slot = calls.setdefault(tc.index or 0, {"id": "", "name": "", "arguments": ""})
                        slot["id"] = tc.id or slot["id"]
                        if tc.function is not None:
                            slot["name"] += tc.function.name or ""
                            slot["arguments"] += tc.function.arguments or ""
        except ModelError:
            raise
        except (httpx.HTTPError, openai.APIError) as exc:
            raise StreamCut(f"the model endpoint at {self.base_url} broke off the stream ({exc}); "
                            "try again") from exc
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            full = "".join(text)
            prompt = getattr(usage, "prompt_tokens", None) or count_message_tokens(messages, model)
            completion = getattr(usage, "completion_tokens", None) or count_tokens(full, model)
            self._record(role, model, prompt, completion, job_id, thread_id)
        if not events:
            raise ModelGarbage(f"the model endpoint at {self.base_url} answered a streamed request without a "
                               "single stream event; is OPENAI_BASE_URL an OpenAI-compatible /v1 URL?")
        tool_calls = [ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"] or "{}")
                      for i, c in sorted(calls.items())]
        yield "completion", Completion(content="".join(text), tool_calls=tool_calls, finish_reason=finish,
                                       prompt_tokens=prompt, completion_tokens=completion, model=model)

    def next_action(self, role: str, messages: list[dict[str, Any]], tools: list[dict], *,
                    job_id: str | None = None, thread_id: str | None = None) -> Completion:
        """One grammar-constrained step for models that ignore native tools: a tool call or a final answer.
        Raises constrained.ModelOutputError when the model gives no well-formed action."""
        from .constrained import FinalAnswer, next_action
        self._ensure_server()
        model = self.model_for(role)
        action = self._retrying(lambda: self._guarded(lambda: next_action(self._sdk, model, messages, tools)))
        raw = action.text if isinstance(action, FinalAnswer) else action.raw
        prompt, completion = count_message_tokens(messages, model), count_tokens(raw, model)
        self._record(role, model, prompt, completion, job_id, thread_id)
        if isinstance(action, FinalAnswer):
            return Completion(content=action.text, prompt_tokens=prompt, completion_tokens=completion, model=model)
        call = ToolCall(id=f"action_{len(messages)}", name=action.name, arguments=json.dumps(action.arguments))
        return Completion(content=raw, tool_calls=[call], finish_reason="tool_calls", prompt_tokens=prompt,
                          completion_tokens=completion, model=model)

    def constrained_json(self, role: str, messages: list[dict[str, Any]], schema: dict, *,
                         thread_id: str | None = None, max_tokens: int = 200) -> dict:
        from .constrained import constrained_json
        self._ensure_server()
        model = self.model_for(role)
        value = self._retrying(lambda: self._guarded(
            lambda: constrained_json(self._sdk, model, messages, schema, max_tokens=max_tokens)))
        self._record(role, model, count_message_tokens(messages, model), count_tokens(json.dumps(value), model),
                     None, thread_id)
        return value

    def list_models(self) -> list[str]:
        try:
            return [m.id for m in self._sdk.models.list()]
        except Exception as exc:
            raise self._translate(exc) from exc

