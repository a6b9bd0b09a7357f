"""Tool calls written as fenced text blocks, for models without native function calling.

A call is a fenced block whose info string is ``tool NAME``; its body is a JSON object
of arguments, or, for ``apply_patch``, the raw patch text. The reply's remaining prose
is the model's commentary; a reply with no tool block is its final answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from assistant.llm.jsonshape import schema_violations
from assistant.prompts import render_prompt

PATCH_TOOL = "apply_patch"
PATCH_BEGIN = "*** Begin Patch"
PATCH_END = "*** End Patch"

# Closing fences must start at column 0: a patch context line such as " ```" (a space,
# then backticks) is part of the patch, not the end of the block.
_OPEN_FENCE = re.compile(r"^(?P<fence>`{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")
_TOOL_INFO = re.compile(r"^tool[ \t]+(?P<name>[A-Za-z_][\w.-]*)$")
# Near misses: info strings that look like an attempt at a call (Gemma's ``tool_code``,
# ``tool_call``, ``tool:shell``, ``TOOL shell``), which must not pass as a final answer.
_TOOLISH_INFO = re.compile(r"^tool", re.IGNORECASE)
_XML_TOOL_CALL = re.compile(r"<tool_call>|<function=|<\|tool_call", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict
    raw: str = field(repr=False)


class TextProtocolError(Exception):
    """The reply tried to call a tool but did not follow the protocol.

    ``reminder`` is the message to send back to the model so it can try again.
    """

    def __init__(self, problem: str, reminder: str):
        super().__init__(problem)
        self.problem = problem
        self.reminder = reminder


@dataclass(frozen=True)
class _FencedBlock:
    info: str
    body: str
    raw: str
    closed: bool


def render_tool_instructions(tools: list[dict]) -> str:
    """The system-prompt section that teaches the protocol and lists `tools`."""
    return render_prompt("text_tools.md", tools=render_tool_list(tools)).strip() + "\n"


def render_tool_list(tools: list[dict]) -> str:
    """Each tool's name, description and arguments, as Markdown for a prompt."""
    return "\n\n".join(_render_tool(function_spec(tool)) for tool in tools)


def render_tool_result(call: ParsedCall, output: str) -> str:
    """The message that carries a tool's output back to the model."""
    return render_prompt("text_tool_result.md", tool=call.name, output=output).strip() + "\n"


def parse_tool_calls(text: str, tools: list[dict]) -> list[ParsedCall]:
    """The calls in a model reply, in order; empty when the reply is a final answer.

    Raises TextProtocolError when any attempted call is malformed, so that no part of
    a half-understood reply runs.
    """
    specs = {spec["name"]: spec for spec in map(function_spec, tools)}
    calls: list[ParsedCall] = []
    for block in _fenced_blocks(text):
        tool_match = _TOOL_INFO.match(block.info)
        if tool_match is None:
            _reject_near_miss(block, specs)
            continue
        calls.append(_parse_call_block(tool_match.group("name"), block, specs))
    if not calls and _XML_TOOL_CALL.search(text):
        raise _error("the reply uses tool-call tags, which this protocol does not read; use a ```tool NAME block", specs)
    return calls


def _parse_call_block(name: str, block: _FencedBlock, specs: dict[str, dict]) -> ParsedCall:
    if name not in specs:
        raise _error(f"there is no tool named {name!r}", specs)
    if not block.closed:
        raise _error(f"the ```tool {name} block is never closed with ``` on a line of its own", specs)
    body = block.body.strip()
    if name == PATCH_TOOL and body.startswith(PATCH_BEGIN):
        arguments: object = {"patch": block.body.strip("\n") + "\n"}
    elif not body:
        arguments = {}
    else:
        try:
            # strict=False lets raw newlines inside strings through: the block's fences
            # already delimit the body, so the meaning stays unambiguous.
            arguments = json.loads(body, strict=False)
        except json.JSONDecodeError as exc:
            raise _error(f"the body of the ```tool {name} block is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", specs) from None
    if not isinstance(arguments, dict):
        raise _error(f"the body of the ```tool {name} block must be a JSON object of arguments", specs)
    problems = schema_violations(arguments, specs[name].get("parameters") or {}, where="arguments", closed_objects=True)
    if problems:
        raise _error(f"wrong arguments for {name}: " + "; ".join(problems), specs)
    return ParsedCall(name=name, arguments=arguments, raw=block.raw)


def _reject_near_miss(block: _FencedBlock, specs: dict[str, dict]) -> None:
    if _TOOLISH_INFO.match(block.info):
        raise _error(f"a block opened with ```{block.info} is not a tool call; write ```tool NAME", specs)
    if block.info.lower() in ("", "json"):
        try:
            payload = json.loads(block.body, strict=False)
        except json.JSONDecodeError:
            return
        if isinstance(payload, dict) and payload.get("name") in specs and any(
            key in payload for key in ("arguments", "parameters", "args")
        ):
            raise _error(f"a JSON block names the tool {payload['name']!r}; write it as ```tool {payload['name']}", specs)


def _fenced_blocks(text: str) -> list[_FencedBlock]:
    lines = text.splitlines(keepends=True)
    blocks: list[_FencedBlock] = []
    index = 0
    while index < len(lines):
        opening = _OPEN_FENCE.match(lines[index].rstrip("\r\n"))
        if opening is None:
            index += 1
            continue
        fence, info = opening.group("fence"), opening.group("info")
        body_start = index + 1
        end = _closing_line(lines, body_start, fence, raw_patch=_is_raw_patch_block(info, lines, body_start))
        closed = end is not None
        stop = end if closed else len(lines)
        body = "".join(lines[body_start:stop])
        raw = "".join(lines[index : stop + 1 if closed else stop])
        blocks.append(_FencedBlock(info=info, body=body, raw=raw, closed=closed))
        index = stop + 1
    return blocks


def _is_raw_patch_block(info: str, lines: list[str], body_start: int) -> bool:
    match = _TOOL_INFO.match(info)
    if match is None or match.group("name") != PATCH_TOOL:
        return False
    first = next((line for line in lines[body_start:] if line.strip()), "")
    return first.strip().startswith(PATCH_BEGIN)


def _closing_line(lines: list[str], start: int, fence: str, raw_patch: bool) -> int | None:
    index = start
    if raw_patch:
        # A patch may add a Markdown file with its own fences; only the patch's end
        # marker tells where the patch stops.
        while index < len(lines) and lines[index].rstrip() != PATCH_END:
            index += 1
        index += 1
    for position in range(index, len(lines)):
        candidate = lines[position].rstrip()
        if candidate.startswith(fence) and set(candidate) == {"`"}:
            return position
        if raw_patch and candidate:
            return None
    return None


def function_spec(tool: dict) -> dict:
    """The function part of an OpenAI tool spec; bare function specs pass through."""
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool["function"]
    if "name" in tool:
        return tool
    raise ValueError(f"not a function tool spec: {tool!r}")


def _render_tool(spec: dict) -> str:
    lines = [f"### {spec['name']}"]
    if spec.get("description"):
        lines.append(spec["description"].strip())
    parameters = spec.get("parameters") or {}
    properties: dict = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    if properties:
        lines.append("Arguments:")
        for name, prop in properties.items():
            kind = prop.get("type", "any")
            kind = " or ".join(kind) if isinstance(kind, list) else kind
            need = "required" if name in required else "optional"
            note = f": {prop['description'].strip()}" if prop.get("description") else ""
            lines.append(f"- `{name}` ({kind}, {need}){note}")
    else:
        lines.append("Arguments: none (write {} as the body).")
    return "\n".join(lines)


def _error(problem: str, specs: dict[str, dict]) -> TextProtocolError:
    names = ", ".join(specs) or "none"
    reminder = render_prompt("text_tools_reminder.md", tool_names=names, problem=problem)
    return TextProtocolError(problem, reminder.strip() + "\n")

