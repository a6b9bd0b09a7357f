from assistant.agent.tools import WORKSPACE_PREFIX, format_result, looks_like_tests, parse_arguments

import pytest


def test_long_output_keeps_head_tail_and_true_line_numbers():
    text = "\n".join(f"line {i}" for i in range(1, 501))
    out = format_result("abc123", 1, 0.5, text)
    assert out.splitlines()[0] == "exit code 1 · 0.50 s · chunk abc123 · 500 lines"
    assert "  1 | line 1" in out and "500 | line 500" in out
    assert "340 lines elided (L81-L420)" in out and "line 200" not in out


def test_timeouts_and_caps_are_said():
    out = format_result("abc123", None, 5.0, "x", timed_out=True, truncated=True)
    assert "timed out (process tree killed)" in out and "output capped" in out


def test_arguments_errors_are_actionable():
    assert parse_arguments('{"command": "ls"}') == {"command": "ls"}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_arguments("{oops")
    with pytest.raises(ValueError, match="JSON object"):
        parse_arguments("[1]")


def test_workspace_absolute_paths_become_relative_and_tests_are_recognised():
    assert WORKSPACE_PREFIX.sub(r"\1", "*** Update File: /workspace/src/a.py") == "*** Update File: src/a.py"
    assert looks_like_tests("cd src && python -m pytest -q") and not looks_like_tests("ls -la")
    assert looks_like_tests("./check.sh", extra=("./check.sh",))
