"""The limits a client's JSON schema must keep before the daemon turns it into a grammar.

`response_format` json_schema and tool `parameters` become GBNF grammars through
llama-cpp-python's converter (`json_schema_to_gbnf`), and that converter trusts its input:

- it writes every repetition out in full: `minLength: 1000000000` is a rule of 10^9 items, built
  in memory until the process is killed (measured: 7 GB in 20 s and still growing);
- an empty `enum`, `anyOf` or `oneOf` becomes an empty rule, which llama.cpp fails to parse; the
  NULL sampler it returns is added to the sampler chain anyway, and the next token is a SIGSEGV
  that ends every request on that model;
- nesting, alternatives and patterns cost grammar size and per-token sampling time.

`check_schema` walks one schema (iteratively: its depth is what is being checked) and refuses, with
an InvalidRequest whose `param` names the offending keyword (e.g.
`response_format.json_schema.schema.properties.s.enum`), what the converter cannot bear: empty or
oversized alternatives, `enum`/`const` values of another type than the schema's `type`, length and
count bounds above `max_repeat`, patterns the converter asserts on, deep nesting, too many nodes
or bytes, `$ref`s that are remote, do not resolve, or loop without consuming input (a left
recursion llama.cpp refuses). The limits are near what OpenAI's structured outputs accept (5000
properties, 10 levels of nesting in strict mode, 1000 enum values), and `max_repeat` follows
llama.cpp's own MAX_REPETITION_THRESHOLD (2000) at half: the converter nests one group per
optional repetition, so a bound of N is an N-deep group for llama.cpp's recursive parser.
Numeric `minimum`/`maximum` are not expanded by this converter (it ignores them), so they are not
bounded here.

What this walk does not prove (that the schema is valid JSON Schema, that llama.cpp parses the
grammar) the grammar prover checks in a child process (appliance.models.grammar_proof). This
module is pure logic: no llama_cpp import, safe and cheap on the daemon's event loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from appliance.errors import InvalidRequest


@dataclass(frozen=True)
class SchemaLimits:
    max_bytes: int = 128 * 1024
    """JSON size of the schemas of one request, together."""
    max_nodes: int = 5000
    """Subschemas of one request, together."""
    max_depth: int = 32
    """Nesting of subschemas inside one schema."""
    max_repeat: int = 1000
    """Largest minLength/maxLength/minItems/maxItems/min-/maxProperties and pattern {n,m} count."""
    max_enum: int = 1000
    """Values of one `enum`."""
    max_alternatives: int = 128
    """Members of one anyOf/oneOf/allOf (and tools of one request)."""
    max_pattern: int = 1000
    """Characters of one `pattern`."""


@dataclass
class SchemaStats:
    nodes: int
    bytes: int


_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_UNIONS = ("anyOf", "oneOf", "allOf")
_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
_MAP_OF_SCHEMAS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_ONE_SCHEMA = (
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")


def join_param(param: str, key: str | int) -> str:
    """`param` extended by a key or index, as OpenAI names fields (a.b[0])."""
    if isinstance(key, int):
        return f"{param}[{key}]"
    return f"{param}.{key}" if _NAME.match(key) else f"{param}[{json.dumps(key)}]"


def _refuse(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_json_schema")


def _type_matches(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return kind == "number" or float(value).is_integer()


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """The target of a local `$ref`, resolved as the converter does (split on "/", no unescaping)."""
    target: Any = root
    for part in ref.split("#", 1)[1].split("/")[1:]:
        if not isinstance(target, dict) or part not in target:
            return None
        target = target[part]
    return target


class _Walk:
    def __init__(self, root: dict[str, Any], param: str, limits: SchemaLimits) -> None:
        self.root = root
        self.param = param
        self.limits = limits
        self.nodes = 0
        # left-recursion check: for each subschema (by id), the subschemas it reaches without
        # consuming input ($ref targets and union members), and their params for the message
        self.direct: dict[int, list[int]] = {}
        self.where: dict[int, str] = {}

    def run(self) -> int:
        stack: list[tuple[Any, str, int]] = [(self.root, self.param, 0)]
        while stack:
            node, param, depth = stack.pop()
            stack.extend(self.visit(node, param, depth))
        self.check_cycles()
        return self.nodes

    def visit(self, node: Any, param: str, depth: int) -> Iterator[tuple[Any, str, int]]:
        lim = self.limits
        if isinstance(node, bool):
            return  # true/false schemas: the converter handles them where it accepts them at all
        if not isinstance(node, dict):
            raise _refuse(param, "a schema must be a JSON object; fix this value")
        if id(node) in self.where:
            return
        self.where[id(node)] = param
        self.nodes += 1
        if self.nodes > lim.max_nodes:
            raise _refuse(
                param, f"the schema has more than {lim.max_nodes} subschemas; split or simplify it"
            )
        if depth > lim.max_depth:
            raise _refuse(param, f"the schema nests deeper than {lim.max_depth} levels; flatten it")
        self.check_type_values(node, param)
        self.check_counts(node, param)
        if "pattern" in node:
            self.check_pattern(node["pattern"], join_param(param, "pattern"))
        direct = self.direct.setdefault(id(node), [])
        if "$ref" in node:
            direct.append(id(self.check_ref(node["$ref"], join_param(param, "$ref"))))
        for key in _UNIONS:
            if key in node:
                members = node[key]
                where = join_param(param, key)
                if not isinstance(members, list) or not members:
                    raise _refuse(
                        where,
                        f"{key} must be a non-empty list of schemas: with no member nothing "
                        "can match; list at least one schema or remove it",
                    )
                if len(members) > lim.max_alternatives:
                    raise _refuse(
                        where,
                        f"{key} has {len(members)} members; at most {lim.max_alternatives} are "
                        "accepted",
                    )
                for i, m in enumerate(members):
                    if not isinstance(m, dict):
                        raise _refuse(
                            join_param(where, i), f"each {key} member must be a schema object"
                        )
                    direct.append(id(m))
                    yield m, join_param(where, i), depth + 1
        for key in _MAP_OF_SCHEMAS:
            if key in node:
                children = node[key]
                if not isinstance(children, dict):
                    raise _refuse(join_param(param, key), f"{key} must map names to schemas")
                for name, child in children.items():
                    yield child, join_param(join_param(param, key), name), depth + 1
        for key in ("items", "prefixItems"):
            if key in node:
                items = node[key]
                where = join_param(param, key)
                if isinstance(items, list):
                    for i, child in enumerate(items):
                        if not isinstance(child, dict):
                            raise _refuse(
                                join_param(where, i), f"each {key} entry must be a schema object"
                            )
                        yield child, join_param(where, i), depth + 1
                elif isinstance(items, dict):
                    yield items, where, depth + 1
                else:
                    raise _refuse(
                        where, f"{key} must be a schema object (or a list of them) for a grammar"
                    )
        for key in _ONE_SCHEMA:
            if key in node:
                yield node[key], join_param(param, key), depth + 1
        if "required" in node and not (
            isinstance(node["required"], list) and all(isinstance(r, str) for r in node["required"])
        ):
            raise _refuse(
                join_param(param, "required"), "required must be a list of property names"
            )

    def check_type_values(self, node: dict[str, Any], param: str) -> None:
        kinds = node.get("type")
        if kinds is not None:
            listed = kinds if isinstance(kinds, list) else [kinds]
            if not listed or not all(isinstance(k, str) and k in _TYPES for k in listed):
                raise _refuse(
                    join_param(param, "type"),
                    f"type must be one of {', '.join(sorted(_TYPES))} (or a "
                    "non-empty list of them)",
                )
        if "enum" in node:
            values = node["enum"]
            where = join_param(param, "enum")
            if not isinstance(values, list) or not values:
                raise _refuse(
                    where,
                    "enum must be a non-empty list: an empty enum lets no value match; list "
                    "at least one value or remove it",
                )
            if len(values) > self.limits.max_enum:
                raise _refuse(
                    where,
                    f"enum has {len(values)} values; at most {self.limits.max_enum} are accepted",
                )
        else:
            values = []
        if "const" in node:
            values = [*values, node["const"]]
        if kinds is not None:
            listed = kinds if isinstance(kinds, list) else [kinds]
            for i, v in enumerate(values):
                if not any(_type_matches(v, k) for k in listed):
                    key = "const" if "const" in node and i == len(values) - 1 else "enum"
                    raise _refuse(
                        join_param(param, key),
                        f"{key} value {json.dumps(v)[:60]} is not of the schema's "
                        f"type {json.dumps(kinds)}; fix the value or the type",
                    )

    def check_counts(self, node: dict[str, Any], param: str) -> None:
        cap = self.limits.max_repeat
        for key in _COUNTS:
            if key in node:
                v = node[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise _refuse(join_param(param, key), f"{key} must be a non-negative integer")
                if v > cap:
                    raise _refuse(
                        join_param(param, key),
                        f"{key} is {v}; grammars accept at most {cap} (each "
                        "repetition is written out in the grammar). Lower it, or drop it and check "
                        "the length after the reply",
                    )
        for low, high in (
            ("minLength", "maxLength"),
            ("minItems", "maxItems"),
            ("minProperties", "maxProperties"),
        ):
            if low in node and high in node and node[low] > node[high]:
                raise _refuse(
                    join_param(param, low),
                    f"{low} ({node[low]}) is above {high} ({node[high]}): no value can match",
                )

    def check_pattern(self, pattern: Any, param: str) -> None:
        lim = self.limits
        if not isinstance(pattern, str):
            raise _refuse(param, "pattern must be a string (a regular expression)")
        if len(pattern) > lim.max_pattern:
            raise _refuse(
                param,
                f"pattern is {len(pattern)} characters; at most {lim.max_pattern} are accepted",
            )
        if not (pattern.startswith("^") and pattern.endswith("$")):
            raise _refuse(param, "pattern must be anchored: start it with ^ and end it with $")
        if "(?" in pattern:
            raise _refuse(
                param,
                "pattern uses (?...) groups (lookaround, non-capturing or named), which grammars "
                "cannot express; use plain groups",
            )
        for m in _QUANTIFIER.finditer(pattern):
            for n in m.groups():
                if n and int(n) > lim.max_repeat:
                    raise _refuse(
                        param,
                        f"pattern repeats {m.group(0)}; grammars accept counts up to "
                        f"{lim.max_repeat}",
                    )

    def check_ref(self, ref: Any, param: str) -> Any:
        if not isinstance(ref, str):
            raise _refuse(param, "$ref must be a string")
        if not ref.startswith("#"):
            raise _refuse(
                param,
                f"$ref {ref[:80]!r} is not local; only references into this schema "
                "(#/$defs/...) are supported: inline the definition",
            )
        if not ref.startswith("#/"):
            raise _refuse(
                param,
                f"$ref {ref[:80]!r} is not supported: refer into the schema with a path like "
                "#/$defs/Name (put a recursive root under $defs)",
            )
        target = _resolve(self.root, ref)
        if not isinstance(target, dict):
            raise _refuse(
                param,
                f"$ref {ref[:80]!r} does not point at a schema in this document; fix the path "
                "(e.g. #/$defs/Name)",
            )
        return target

    def check_cycles(self) -> None:
        """A loop of $ref/union edges: the grammar rule would start with itself (left recursion)."""
        state: dict[int, int] = {}  # 1: on the current path, 2: done
        for start in self.direct:
            if state.get(start):
                continue
            path = [(start, iter(self.direct.get(start, ())))]
            state[start] = 1
            while path:
                node, edges = path[-1]
                nxt = next(edges, None)
                if nxt is None:
                    state[node] = 2
                    path.pop()
                elif state.get(nxt) == 1:
                    raise _refuse(
                        self.where.get(nxt, self.param),
                        "this schema refers back to itself through $ref/anyOf/oneOf/allOf without an "
                        "object or array in between, so the grammar would never end; put the recursion "
                        "inside properties or items",
                    )
                elif not state.get(nxt):
                    state[nxt] = 1
                    path.append((nxt, iter(self.direct.get(nxt, ()))))


def check_schema(schema: Any, param: str, limits: SchemaLimits | None = None) -> SchemaStats:
    """Refuse (InvalidRequest naming `param` and the keyword) a schema the converter cannot bear."""
    limits = limits or SchemaLimits()
    if not isinstance(schema, dict):
        raise _refuse(param, "the schema must be a JSON object")
    try:
        size = len(json.dumps(schema, separators=(",", ":")))
    except RecursionError:  # absurd nesting; the walk below is iterative
        raise _refuse(
            param, f"the schema nests deeper than {limits.max_depth} levels; flatten it"
        ) from None
    except (TypeError, ValueError) as exc:
        raise _refuse(param, f"the schema is not plain JSON ({exc})") from None
    if size > limits.max_bytes:
        raise _refuse(
            param,
            f"the schema is {size // 1024} KiB; at most {limits.max_bytes // 1024} KiB are accepted",
        )
    nodes = _Walk(schema, param, limits).run()
    return SchemaStats(nodes=nodes, bytes=size)
