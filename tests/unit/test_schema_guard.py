"""The schema limits: what the grammar converter cannot bear is refused, naming the keyword."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.errors import InvalidRequest
from appliance.models.schema_guard import SchemaLimits, check_schema

WHERE = "response_format.json_schema.schema"


def refused(schema: Any, **limits: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_schema(schema, WHERE, SchemaLimits(**limits))
    assert info.value.status == 400 and info.value.code == "invalid_json_schema"
    return info.value


@pytest.mark.parametrize(
    ("schema", "param", "words"),
    [
        # the two schemas of issue 9: a SIGSEGV and a worker that grew without bound
        (
            {"type": "object", "properties": {"s": {"enum": []}}, "required": ["s"]},
            ".properties.s.enum",
            "enum",
        ),
        ({"type": "string", "minLength": 1000000000}, ".minLength", "at most 1000"),
        ({"anyOf": []}, ".anyOf", "non-empty"),
        (
            {"type": "object", "properties": {"a": {"oneOf": []}}},
            ".properties.a.oneOf",
            "non-empty",
        ),
        ({"allOf": [True]}, ".allOf[0]", "schema object"),
        (
            {"type": "array", "items": {"type": "string"}, "maxItems": 5000},
            ".maxItems",
            "at most 1000",
        ),
        ({"type": "object", "minProperties": 10**6}, ".minProperties", "at most 1000"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, ".minLength", "no value"),
        ({"type": "string", "maxLength": -1}, ".maxLength", "non-negative"),
        ({"type": "integer", "enum": ["a"]}, ".enum", "not of the schema's type"),
        ({"type": "string", "const": 5}, ".const", "not of the schema's type"),
        ({"type": "strin"}, ".type", "must be one of"),
        ({"type": "string", "pattern": "a+"}, ".pattern", "anchored"),
        ({"type": "string", "pattern": "^(?=a)b$"}, ".pattern", "(?"),
        ({"type": "string", "pattern": "^a{1000000}$"}, ".pattern", "counts up to"),
        ({"type": "string", "pattern": "^" + "a" * 2000 + "$"}, ".pattern", "characters"),
        ({"$ref": "https://example.com/schema.json"}, ".$ref", "not local"),
        ({"$ref": "#/$defs/missing"}, ".$ref", "does not point"),
        (
            {"type": "object", "properties": {"child": {"$ref": "#"}}},
            ".properties.child.$ref",
            "#/$defs/Name",
        ),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, ".$defs.a", "refers back"),
        (
            {
                "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"$ref": "#/$defs/a"}},
                "$ref": "#/$defs/a",
            },
            "",
            "refers back",
        ),
        (
            {"type": "object", "properties": {"x y": {"enum": []}}},
            '.properties["x y"].enum',
            "enum",
        ),
        ({"type": "array", "items": 5}, ".items", "schema object"),
        ({"type": "object", "required": "a"}, ".required", "list of property names"),
    ],
)
def test_refused_schemas_name_the_keyword(schema: dict[str, Any], param: str, words: str) -> None:
    err = refused(schema)
    assert err.param is not None and err.param.startswith(WHERE + param), err.param
    assert words in err.message


def test_size_depth_and_node_limits() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    assert "deeper than 32" in refused(deep).message
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(60)}}
    assert "subschemas" in refused(wide, max_nodes=50).message
    assert "KiB" in refused(wide, max_bytes=512).message
    nested: Any = {}
    for _ in range(100_000):  # absurd nesting fails cleanly, not with a RecursionError
        nested = {"not": nested}
    assert refused(nested).message
    assert "at most 3" in refused({"anyOf": [{"type": "string"}] * 4}, max_alternatives=3).message
    assert "at most 2" in refused({"enum": [1, 2, 3]}, max_enum=2).message


def test_ordinary_schemas_pass() -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            }
        },
        "$ref": "#/$defs/node",
    }
    for schema in (
        {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        {"type": ["string", "null"], "enum": ["a", None]},
        {"type": "number", "enum": [1, 2.5]},
        {"type": "integer", "const": 3.0},
        {"type": "string", "pattern": "^[a-z]{2,8}$", "minLength": 2, "maxLength": 1000},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        tree,  # recursion through an array item consumes input: fine
        {},
    ):
        stats = check_schema(schema, WHERE)
        assert stats.nodes >= 1 and stats.bytes > 0


def test_the_appliance_s_own_agent_tools_pass() -> None:
    from appliance.sessions.tools import RunCode

    check_schema(RunCode.parameters, "tools[0].function.parameters")
