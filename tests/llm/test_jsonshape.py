from assistant.llm.jsonshape import schema_violations

ROUTE = {
    "type": "object",
    "properties": {
        "route": {"type": "string", "enum": ["answer", "delegate"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "files": {"type": "array", "items": {"type": "string"}},
        "note": {"type": ["string", "null"]},
    },
    "required": ["route"],
    "additionalProperties": False,
}


def test_a_fitting_value_has_no_violations():
    assert schema_violations({"route": "answer", "confidence": 0.5, "files": ["a.py"], "note": None}, ROUTE) == []


def test_each_kind_of_violation_is_named():
    problems = schema_violations({"confidence": 2, "files": ["a.py", 3], "extra": 1}, ROUTE)
    assert problems == [
        "$ is missing the required field 'route'",
        "$.confidence should be at most 1",
        "$.files[1] should be string, got integer",
        "$ has an unknown field 'extra' (known: 'route', 'confidence', 'files', 'note')",
    ]


def test_enum_and_top_level_type():
    assert schema_violations({"route": "maybe"}, ROUTE) == ["$.route should be one of ['answer', 'delegate'], got 'maybe'"]
    assert schema_violations(["answer"], ROUTE) == ["$ should be object, got array"]


def test_booleans_are_not_numbers():
    assert schema_violations(True, {"type": "integer"}) == ["$ should be integer, got boolean"]
    assert schema_violations(3, {"type": "number"}) == []


def test_closed_objects_reject_unlisted_fields_only_when_asked():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert schema_violations({"a": "x", "b": 1}, schema) == []
    assert schema_violations({"a": "x", "b": 1}, schema, closed_objects=True) == ["$ has an unknown field 'b' (known: 'a')"]


ACTION = {
    "anyOf": [
        {"type": "object", "properties": {"tool": {"const": "shell"}, "arguments": {"type": "object", "required": ["command"]}}, "required": ["tool", "arguments"]},
        {"type": "object", "properties": {"final_answer": {"type": "string"}}, "required": ["final_answer"]},
    ]
}


def test_any_of_accepts_a_value_that_fits_one_branch():
    assert schema_violations({"tool": "shell", "arguments": {"command": "ls"}}, ACTION) == []
    assert schema_violations({"final_answer": "done"}, ACTION) == []


def test_any_of_reports_the_closest_branch():
    [problem] = schema_violations({"tool": "shell", "arguments": {}}, ACTION)
    assert problem == "$ fits none of the 2 allowed shapes; closest: $.arguments is missing the required field 'command'"
    assert schema_violations({"tool": "rm"}, ACTION)[0].startswith("$ fits none of the 2 allowed shapes")


def test_const():
    assert schema_violations("shell", {"const": "shell"}) == []
    assert schema_violations("rm", {"const": "shell"}) == ["$ should be 'shell', got 'rm'"]
