"""constrained_json against a scripted OpenAI-compatible server on loopback: every way a
server can refuse a schema and every way a model can answer garbage."""

import json

import openai
import pytest

from assistant.llm.constrained import (
    FinalAnswer,
    ModelOutputError,
    action_from_json,
    action_schema,
    constrained_json,
    next_action,
)
from assistant.llm.textproto import ParsedCall
from assistant.testing.scripted_model import Reply, ScriptedModelServer

ROUTE = {
    "type": "object",
    "properties": {"route": {"type": "string", "enum": ["answer", "delegate"]}, "reason": {"type": "string"}},
    "required": ["route", "reason"],
}
ASK = [{"role": "user", "content": "Route this: fix the failing test."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a command.",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        },
    }
]


def format_type(request: dict) -> str | None:
    return (request.get("response_format") or {}).get("type")


def refusing(*types: str, status: int = 400, then: Reply):
    """A reply that refuses the named response_format types the way real servers do."""

    def reply(request: dict) -> Reply:
        if format_type(request) in types:
            return Reply(status=status, content=f"response_format type {format_type(request)!r} is not supported")
        return then

    return reply


@pytest.fixture
def model():
    with ScriptedModelServer() as server:
        yield server


def client_for(server: ScriptedModelServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def test_structured_outputs_first(model):
    model.script([Reply.text('{"route": "delegate", "reason": "needs edits"}')])
    assert constrained_json(client_for(model), "m", ASK, ROUTE) == {"route": "delegate", "reason": "needs edits"}
    [request] = model.requests
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["schema"] == ROUTE


def test_llama_cpp_style_after_a_500_and_remembered(model):
    good = Reply.text('{"route": "answer", "reason": "a question"}')
    model.script([refusing("json_schema", status=500, then=good)] * 3)
    client = client_for(model)
    assert constrained_json(client, "m", ASK, ROUTE)["route"] == "answer"
    assert [format_type(r) for r in model.requests] == ["json_schema", "json_object"]
    assert model.requests[1]["response_format"]["schema"] == ROUTE
    constrained_json(client, "m", ASK, ROUTE)
    assert [format_type(r) for r in model.requests][2:] == ["json_object"], "the accepted style is remembered"


def test_prompt_style_when_no_schema_is_taken_and_fenced_json_is_read(model):
    fenced = Reply.text('Sure! Here it is:\n```json\n{"route": "delegate", "reason": "edits"}\n```')
    model.script([refusing("json_schema", "json_object", status=422, then=fenced)] * 3)
    assert constrained_json(client_for(model), "m", ASK, ROUTE) == {"route": "delegate", "reason": "edits"}
    last = model.requests[-1]
    assert "response_format" not in last
    assert '"enum"' in last["messages"][-1]["content"], "the schema travels in the prompt"


def test_garbage_is_retried_with_the_problem_named(model):
    model.script([Reply.text("I think it should be delegated."), Reply.text('{"route": "delegate", "reason": "x"}')])
    assert constrained_json(client_for(model), "m", ASK, ROUTE, style="json_schema")["route"] == "delegate"
    retry = model.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "I think it should be delegated."}
    assert "contains no JSON object" in retry[-1]["content"] and '"route"' in retry[-1]["content"]


def test_schema_violation_is_retried(model):
    model.script([Reply.text('{"route": "maybe", "reason": "x"}'), Reply.text('{"route": "answer", "reason": "x"}')])
    assert constrained_json(client_for(model), "m", ASK, ROUTE, style="json_schema")["route"] == "answer"
    assert "$.route should be one of ['answer', 'delegate']" in model.requests[1]["messages"][-1]["content"]


@pytest.mark.parametrize(
    "garbage",
    ["", "null", "[1, 2", '{"route": "answer"}', "<html>oops</html>", '{"route": "answer", "reason": 3}'],
)
def test_persistent_garbage_raises_model_output_error(model, garbage):
    model.script([Reply.text(garbage)], repeat_last=True)
    with pytest.raises(ModelOutputError) as caught:
        constrained_json(client_for(model), "m", ASK, ROUTE, style="json_schema", attempts=3)
    assert len(model.requests) == 3
    assert caught.value.raw == garbage
    assert "after 3 attempt(s)" in str(caught.value)


def test_endpoint_errors_are_not_mistaken_for_a_refused_format(model):
    model.script([Reply.error(401)])
    with pytest.raises(openai.AuthenticationError):
        constrained_json(client_for(model), "m", ASK, ROUTE)
    assert len(model.requests) == 1


def test_next_action_reads_a_call_and_a_final_answer(model):
    model.script([Reply.text('{"tool": "shell", "arguments": {"command": "pytest -q"}}'), Reply.text('{"final_answer": "All green."}')])
    client = client_for(model)
    call = next_action(client, "m", ASK, TOOLS, style="json_schema")
    assert call == ParsedCall("shell", {"command": "pytest -q"}, call.raw)
    assert json.loads(call.raw) == {"tool": "shell", "arguments": {"command": "pytest -q"}}
    assert next_action(client, "m", ASK, TOOLS, style="json_schema") == FinalAnswer("All green.")
    instructions = model.requests[0]["messages"][-1]
    assert instructions["role"] == "system" and "### shell" in instructions["content"]
    assert model.requests[0]["response_format"]["json_schema"]["schema"] == action_schema(TOOLS)


def test_next_action_retries_an_unknown_tool(model):
    model.script([Reply.text('{"tool": "rm", "arguments": {"path": "/"}}'), Reply.text('{"tool": "shell", "arguments": {"command": "ls"}}')])
    assert next_action(client_for(model), "m", ASK, TOOLS, style="json_schema").arguments == {"command": "ls"}
    assert "fits none of the 2 allowed shapes" in model.requests[1]["messages"][-1]["content"]


def test_action_schema_closes_argument_objects_without_touching_the_specs():
    schema = action_schema(TOOLS)
    assert schema["anyOf"][0]["properties"]["arguments"]["additionalProperties"] is False
    assert "additionalProperties" not in TOOLS[0]["function"]["parameters"]
    assert schema["anyOf"][-1]["required"] == ["final_answer"]


@pytest.mark.parametrize(
    "value",
    [[], {"tool": "shell"}, {"tool": "shell", "arguments": {"cmd": 1}}, {"tool": "nope", "arguments": {}}, {}],
)
def test_action_from_json_refuses_what_is_neither(value):
    with pytest.raises(ModelOutputError):
        action_from_json(value, TOOLS)
