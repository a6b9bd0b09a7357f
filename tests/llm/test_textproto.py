import json

import pytest

from assistant.llm.textproto import (
    ParsedCall,
    TextProtocolError,
    parse_tool_calls,
    render_tool_instructions,
    render_tool_result,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a command in the workspace.",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line."},
                    "timeout_s": {"type": "integer"},
                    "workdir": {"type": "string"},
                },
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "apply_patch",
            "description": "Apply a patch in the Codex patch format.",
            "parameters": {
                "type": "object",
                "properties": {"patch": {"type": "string"}},
                "required": ["patch"],
            },
        },
    },
    {"name": "list_jobs", "description": "Bare spec without the function wrapper.", "parameters": {"type": "object", "properties": {}}},
]

FENCE = "```"


def block(info: str, body: str, fence: str = FENCE) -> str:
    return f"{fence}{info}\n{body}\n{fence}"


def test_plain_prose_is_a_final_answer():
    assert parse_tool_calls("All tests pass now. The bug was in `parse()`.", TOOLS) == []


def test_other_code_blocks_are_not_calls():
    text = "Run it like this:\n" + block("shell", "pytest -q") + "\nor\n" + block("python", "print('hi')") + "\n" + block("", "plain")
    assert parse_tool_calls(text, TOOLS) == []


def test_single_shell_call():
    text = "Let me look.\n" + block("tool shell", '{"command": "ls -la"}')
    [call] = parse_tool_calls(text, TOOLS)
    assert call == ParsedCall(name="shell", arguments={"command": "ls -la"}, raw=call.raw)
    assert call.raw == block("tool shell", '{"command": "ls -la"}')


def test_several_calls_keep_their_order():
    text = (
        block("tool shell", '{"command": "pytest -q", "timeout_s": 60}')
        + "\nthen\n"
        + block("tool shell", '{"command": "git status", "workdir": "src"}')
    )
    calls = parse_tool_calls(text, TOOLS)
    assert [c.arguments for c in calls] == [
        {"command": "pytest -q", "timeout_s": 60},
        {"command": "git status", "workdir": "src"},
    ]


def test_backticks_inside_json_strings_do_not_end_the_block():
    patch = "*** Begin Patch\n*** Add File: README.md\n+```python\n+print(1)\n+```\n*** End Patch\n"
    body = json.dumps({"patch": patch})
    [call] = parse_tool_calls(block("tool apply_patch", body), TOOLS)
    assert call.arguments == {"patch": patch}


def test_inline_triple_backticks_in_a_json_line():
    body = '{"command": "echo \'```\' > fence.txt"}'
    [call] = parse_tool_calls(block("tool shell", body), TOOLS)
    assert call.arguments["command"] == "echo '```' > fence.txt"


def test_raw_patch_body_for_apply_patch():
    patch = "*** Begin Patch\n*** Update File: app.py\n@@ def main():\n-    return 1\n+    return 0\n*** End Patch"
    [call] = parse_tool_calls("Fixing it.\n" + block("tool apply_patch", patch) + "\nDone.", TOOLS)
    assert call.arguments == {"patch": patch + "\n"}


def test_raw_patch_may_contain_fence_lines_of_a_markdown_file():
    patch = (
        "*** Begin Patch\n*** Add File: docs/usage.md\n+# Usage\n+```\n+make\n+```\n"
        "*** Update File: notes.md\n@@\n ```\n-old\n+new\n ```\n*** End Patch"
    )
    text = block("tool apply_patch", patch) + "\n" + block("tool shell", '{"command": "cat docs/usage.md"}')
    calls = parse_tool_calls(text, TOOLS)
    assert [c.name for c in calls] == ["apply_patch", "shell"]
    assert calls[0].arguments["patch"] == patch + "\n"


def test_raw_patch_without_end_marker_is_rejected():
    text = "```tool apply_patch\n*** Begin Patch\n*** Add File: a.txt\n+hello\n```"
    with pytest.raises(TextProtocolError, match="never closed"):
        parse_tool_calls(text, TOOLS)


def test_longer_fence_can_wrap_a_body_with_a_bare_fence_line():
    # raw newlines in the JSON string put a bare ``` on a line of its own
    body = '{"command": "cat <<EOF > doc.md\n```\nmake\n```\nEOF"}'
    text = block("tool shell", body, fence="````")
    [call] = parse_tool_calls(text, TOOLS)
    assert call.arguments == {"command": "cat <<EOF > doc.md\n```\nmake\n```\nEOF"}


def test_multiline_pretty_json_and_raw_newlines_in_strings():
    body = '{\n  "command": "cat <<EOF > x.txt\nline one\nEOF"\n}'
    [call] = parse_tool_calls(block("tool shell", body), TOOLS)
    assert call.arguments["command"] == "cat <<EOF > x.txt\nline one\nEOF"


def test_crlf_line_endings():
    text = "```tool shell\r\n{\"command\": \"dir\"}\r\n```\r\n"
    [call] = parse_tool_calls(text, TOOLS)
    assert call.arguments == {"command": "dir"}


def test_empty_body_means_no_arguments_when_none_are_required():
    [call] = parse_tool_calls(block("tool list_jobs", ""), TOOLS)
    assert call == ParsedCall("list_jobs", {}, call.raw)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (block("tool rm_rf", '{"path": "/"}'), "no tool named 'rm_rf'"),
        (block("tool shell", '{"command": "ls"'), "not valid JSON"),
        (block("tool shell", "ls -la"), "not valid JSON"),
        (block("tool shell", '["ls"]'), "must be a JSON object"),
        (block("tool shell", '{"cmd": "ls"}'), "missing the required field 'command'"),
        (block("tool shell", '{"command": "ls", "timeout": 5}'), "unknown field 'timeout'"),
        (block("tool shell", '{"command": "ls", "timeout_s": "5"}'), "timeout_s should be integer"),
        (block("tool shell", '{"command": "ls", "timeout_s": true}'), "timeout_s should be integer"),
        (block("tool shell", ""), "missing the required field 'command'"),
        (block("tool apply_patch", "just some text"), "not valid JSON"),
        ("```tool shell\n{\"command\": \"ls\"}\n", "never closed"),
        (block("tool_code", 'shell(command="ls")'), "```tool_code is not a tool call"),
        (block("tool:shell", '{"command": "ls"}'), "```tool:shell is not a tool call"),
        (block("TOOL shell", '{"command": "ls"}'), "```TOOL shell is not a tool call"),
        (block("tool", '{"command": "ls"}'), "```tool is not a tool call"),
        (block("json", '{"name": "shell", "arguments": {"command": "ls"}}'), "write it as ```tool shell"),
        ('<tool_call>{"name": "shell", "arguments": {"command": "ls"}}</tool_call>', "tool-call tags"),
    ],
)
def test_malformed_calls_raise_with_a_reminder(text, problem):
    with pytest.raises(TextProtocolError) as caught:
        parse_tool_calls(text, TOOLS)
    assert problem in caught.value.problem
    reminder = caught.value.reminder
    assert caught.value.problem in reminder
    assert "```tool NAME" in reminder
    assert "shell, apply_patch, list_jobs" in reminder


def test_one_bad_block_rejects_the_whole_reply():
    text = block("tool shell", '{"command": "ls"}') + "\n" + block("tool shell", "{oops}")
    with pytest.raises(TextProtocolError):
        parse_tool_calls(text, TOOLS)


def test_json_block_that_is_not_a_call_is_just_prose():
    text = "The config is:\n" + block("json", '{"name": "demo", "version": 1}')
    assert parse_tool_calls(text, TOOLS) == []


def test_instructions_list_every_tool_with_its_arguments():
    text = render_tool_instructions(TOOLS)
    assert "### shell" in text and "### apply_patch" in text and "### list_jobs" in text
    assert "- `command` (string, required): The command line." in text
    assert "- `timeout_s` (integer, optional)" in text
    assert "Arguments: none" in text
    assert "$tools" not in text


def test_instructions_example_parses_with_the_parser():
    text = render_tool_instructions(TOOLS)
    calls = parse_tool_calls(text, TOOLS)
    assert [c.name for c in calls] == ["shell", "apply_patch"]


def test_spec_that_is_not_a_function_is_refused():
    with pytest.raises(ValueError):
        render_tool_instructions([{"type": "web_search"}])


def test_tool_result_message_names_the_tool_and_carries_the_output():
    call = ParsedCall("shell", {"command": "ls"}, "")
    message = render_tool_result(call, "exit code 0\n$HOME costs 100%")
    assert "shell" in message and "$HOME costs 100%" in message
