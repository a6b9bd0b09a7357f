"""JSON replies that always parse, for models too small to follow a format on their own.

The reply is constrained by the server where it can be (llama.cpp grammars from a JSON
Schema, or OpenAI's structured outputs), then parsed and checked against the schema
here anyway, so a server that ignores the constraint can never hand garbage onwards.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass

import openai

from assistant.llm.jsonshape import schema_violations
from assistant.prompts import render_prompt
from assistant.llm.textproto import ParsedCall, function_spec, render_tool_list

# How the schema travels: OpenAI's structured outputs, llama-cpp-python's schema inside
# json_object, or only as words in the prompt for servers that accept neither.
STYLES = ("json_schema", "json_object_schema", "prompt")

_accepted_styles: dict[str, str] = {}
_accepted_styles_lock = threading.Lock()


class ModelOutputError(Exception):
    """The model's reply could not be turned into what was asked for."""

    def __init__(self, problem: str, raw: str | None):
        super().__init__(problem)
        self.problem = problem
        self.raw = raw


@dataclass(frozen=True)
class FinalAnswer:
    text: str


def constrained_json(
    client: openai.OpenAI,
    model: str,
    messages: list[dict],
    schema: dict,
    *,
    attempts: int = 2,
    style: str | None = None,
    **create_kwargs,
) -> dict:
    """A JSON object from the model that matches `schema`.

    Raises ModelOutputError when no attempt gives one; errors from the endpoint itself
    (connection, authentication) pass through as the SDK's exceptions.
    """
    create_kwargs.setdefault("max_tokens", 1024)
    conversation = list(messages)
    problem, raw = "no attempt was made", None
    for _ in range(max(1, attempts)):
        raw, finish_reason = _create_constrained(client, model, conversation, schema, style, create_kwargs)
        value, problem = _read_json_reply(raw, finish_reason, schema)
        if problem is None:
            return value  # type: ignore[return-value]
        conversation += [
            {"role": "assistant", "content": raw},
            {"role": "user", "content": _prompt("constrained_json_retry.md", schema=_schema_text(schema), problem=problem)},
        ]
    raise ModelOutputError(f"the model gave no usable JSON after {max(1, attempts)} attempt(s): {problem}", raw)


def action_schema(tools: list[dict]) -> dict:
    """A schema whose every instance is one tool call or a final answer."""
    choices = []
    for tool in tools:
        spec = function_spec(tool)
        arguments = copy.deepcopy(spec.get("parameters") or {"type": "object", "properties": {}})
        # Closed argument objects keep a grammar from inventing argument names.
        arguments.setdefault("additionalProperties", False)
        choices.append(
            {
                "type": "object",
                "properties": {"tool": {"const": spec["name"]}, "arguments": arguments},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    choices.append(
        {
            "type": "object",
            "properties": {"final_answer": {"type": "string"}},
            "required": ["final_answer"],
            "additionalProperties": False,
        }
    )
    return {"anyOf": choices}


def next_action(
    client: openai.OpenAI, model: str, messages: list[dict], tools: list[dict], **kwargs
) -> ParsedCall | FinalAnswer:
    """The model's next step as one well-formed tool call or its final answer.

    The instructions for the reply format are added as the last system message; the
    caller keeps the conversation and should append ``call.raw`` as the assistant turn.
    """
    instructions = {"role": "system", "content": _prompt("constrained_action.md", tools=render_tool_list(tools))}
    value = constrained_json(client, model, [*messages, instructions], action_schema(tools), **kwargs)
    return action_from_json(value, tools)


def action_from_json(value: dict, tools: list[dict]) -> ParsedCall | FinalAnswer:
    """Reads an action object; raises ModelOutputError when it is neither a call nor an answer."""
    raw = json.dumps(value)
    if not isinstance(value, dict):
        raise ModelOutputError(f"the action is not a JSON object: {raw}", raw)
    specs = {spec["name"]: spec for spec in map(function_spec, tools)}
    if isinstance(value.get("final_answer"), str) and "tool" not in value:
        return FinalAnswer(value["final_answer"])
    name, arguments = value.get("tool"), value.get("arguments")
    if name not in specs:
        raise ModelOutputError(f"the action names no known tool: {raw}", raw)
    if not isinstance(arguments, dict):
        raise ModelOutputError(f"the action's arguments are not an object: {raw}", raw)
    problems = schema_violations(arguments, specs[name].get("parameters") or {}, where="arguments")
    if problems:
        raise ModelOutputError(f"wrong arguments for {name}: " + "; ".join(problems), raw)
    return ParsedCall(name=name, arguments=arguments, raw=raw)


def _create_constrained(
    client: openai.OpenAI, model: str, messages: list[dict], schema: dict, style: str | None, create_kwargs: dict
) -> tuple[str, str | None]:
    endpoint = str(client.base_url)
    remembered = _accepted_styles.get(endpoint)
    candidates = [style] if style else ([remembered] if remembered else list(STYLES))
    probing = style is None and remembered is None
    # A probe must not sit through the SDK's retries: llama-cpp-python answers an
    # unknown response_format with a 500, which the SDK would retry twice.
    caller = client.with_options(max_retries=0) if probing else client
    rejection: Exception | None = None
    for candidate in candidates:
        request = _request_for_style(candidate, messages, schema)
        try:
            response = caller.chat.completions.create(model=model, **request, **create_kwargs)
        except openai.APIStatusError as exc:
            if not _rejects_response_format(exc):
                raise
            rejection = exc
            continue
        with _accepted_styles_lock:
            _accepted_styles[endpoint] = candidate
        if not response.choices:
            return "", None
        choice = response.choices[0]
        return choice.message.content or "", choice.finish_reason
    assert rejection is not None
    raise rejection


def _rejects_response_format(exc: openai.APIStatusError) -> bool:
    return exc.status_code in (400, 422) or "response_format" in str(exc)


def _request_for_style(style: str, messages: list[dict], schema: dict) -> dict:
    if style == "json_schema":
        return {
            "messages": messages,
            "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": False}},
        }
    if style == "json_object_schema":
        return {"messages": messages, "response_format": {"type": "json_object", "schema": schema}}
    if style == "prompt":
        instructions = {"role": "system", "content": _prompt("constrained_json_prompt.md", schema=_schema_text(schema))}
        return {"messages": [*messages, instructions]}
    raise ValueError(f"unknown constrained-output style {style!r}; choose from {STYLES}")


def _read_json_reply(raw: str, finish_reason: str | None, schema: dict) -> tuple[object, str | None]:
    if finish_reason == "length":
        return None, "the reply was cut off by the token limit before the JSON was complete"
    value = _first_json_value(raw)
    if value is _NOT_FOUND:
        excerpt = raw.strip()[:200] or "(empty)"
        return None, f"the reply contains no JSON object: {excerpt}"
    problems = schema_violations(value, schema)
    if problems:
        return None, "the JSON does not match the schema: " + "; ".join(problems[:5])
    return value, None


_NOT_FOUND = object()


def _first_json_value(text: str) -> object:
    decoder = json.JSONDecoder(strict=False)
    # Models that ignore the constraint like to wrap JSON in prose or a code fence.
    for start, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text, start)
                return value
            except json.JSONDecodeError:
                continue
    return _NOT_FOUND


def _schema_text(schema: dict) -> str:
    return json.dumps(schema, indent=2)


def _prompt(name: str, **values: str) -> str:
    return render_prompt(name, **values).strip()
