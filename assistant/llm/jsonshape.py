"""A small JSON Schema subset check for tool arguments and constrained model replies.

The subset is what function-tool specs and our reply schemas use (type, properties,
required, additionalProperties, enum, const, anyOf/oneOf, items, minimum/maximum). Anything else in a schema is
ignored rather than rejected, so a richer schema never makes a valid reply fail.
"""

from __future__ import annotations

from typing import Any

_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    # bool is an int subclass in Python, but JSON keeps them apart
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def schema_violations(value: Any, schema: dict, where: str = "$", closed_objects: bool = False) -> list[str]:
    """Every way `value` breaks `schema`, as readable sentences; empty when it fits.

    closed_objects treats objects with declared properties as if additionalProperties
    were false, which catches a model's misspelt argument names.
    """
    problems: list[str] = []
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        problems.extend(_union_violations(value, branches, where, closed_objects))
    expected = schema.get("type")
    if expected is not None:
        allowed = expected if isinstance(expected, list) else [expected]
        known = [t for t in allowed if t in _TYPE_CHECKS]
        if known and not any(_TYPE_CHECKS[t](value) for t in known):
            return [f"{where} should be {' or '.join(known)}, got {_json_type(value)}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where} should be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where} should be one of {schema['enum']!r}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where} should be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where} should be at most {schema['maximum']}")
    if isinstance(value, dict):
        problems.extend(_object_violations(value, schema, where, closed_objects))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problems.extend(schema_violations(item, schema["items"], f"{where}[{index}]", closed_objects))
    return problems


def _union_violations(value: Any, branches: list[dict], where: str, closed_objects: bool) -> list[str]:
    attempts = [schema_violations(value, branch, where, closed_objects) for branch in branches]
    if any(not problems for problems in attempts):
        return []
    # The branch that came closest says most about what the value meant to be.
    closest = min(attempts, key=len)
    return [f"{where} fits none of the {len(branches)} allowed shapes; closest: " + "; ".join(closest)]


def _object_violations(value: dict, schema: dict, where: str, closed_objects: bool) -> list[str]:
    problems: list[str] = []
    properties: dict = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in value:
            problems.append(f"{where} is missing the required field {name!r}")
    extra_allowed = schema.get("additionalProperties", not (closed_objects and properties))
    for name, item in value.items():
        if name in properties:
            problems.extend(schema_violations(item, properties[name], f"{where}.{name}", closed_objects))
        elif extra_allowed is False:
            known = ", ".join(repr(p) for p in properties) or "none"
            problems.append(f"{where} has an unknown field {name!r} (known: {known})")
        elif isinstance(extra_allowed, dict):
            problems.extend(schema_violations(item, extra_allowed, f"{where}.{name}", closed_objects))
    return problems


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPE_CHECKS[name](value):
            return name
    return type(value).__name__
