"""Strict tool inputs: every tool's input schema says ``additionalProperties: false`` (as upstream's do), and
every ``tools/call`` is checked against it before the tool runs. An unknown key, a value of the wrong type,
a missing required key or a value over its bound is an invalid-params error (JSON-RPC -32602) naming the
key, never silently ignored (``get_causal_chains {"severity": "HIGH"}`` would otherwise return all chains
as if the filter had been applied) nor coerced: only a string holding the JSON text of a right-typed value
is read as that value, as the SDK does for clients that send every argument as a string."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from ingero.errors import did_you_mean

#: longest value of a short string argument (a time, an op name, a glob), a library path and a symbol name
MAX_ARG_CHARS = 256
MAX_PATH_CHARS = 4096
MAX_SYMBOL_CHARS = 4096

_JSON_TYPES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "an array", "object": "an object", "null": "null"}


def make_strict(server: Any) -> None:
    """Close every registered tool's input schema (call after the last tool is registered)."""
    for tool in server._tool_manager.list_tools():
        tool.parameters["additionalProperties"] = False


def check_arguments(tool: str, schema: dict, arguments: Any) -> str | None:
    """The first problem of ``arguments`` against ``schema`` as one sentence naming the key, or None."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return f"invalid arguments for {tool}: expected an object of named arguments, got {_kind(arguments)}"
    props = schema.get("properties", {})
    for key in arguments:
        if key not in props:
            accepted = ", ".join(props) or "none"
            near = did_you_mean(key, props)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            return f'invalid arguments for {tool}: unknown argument "{key}" (accepted: {accepted}){hint}'
    arguments = {k: _json_text_value(v, props[k]) for k, v in arguments.items()}
    for err in sorted(Draft202012Validator(schema).iter_errors(arguments), key=lambda e: list(e.path)):
        return _sentence(tool, err)
    return None


def _json_text_value(value: Any, prop: dict) -> Any:
    """A string holding the JSON of a value of the right type (``"false"`` for a boolean, ``"5"`` for an
    integer) stands for that value, as the SDK takes it for clients that send every argument as a string
    (the MCP Inspector CLI does); anything else stays as given and is judged by the schema."""
    if not isinstance(value, str) or prop.get("type") == "string":
        return value
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return value
    return parsed if Draft202012Validator(prop).is_valid(parsed) else value


def _sentence(tool: str, err: ValidationError) -> str:
    deeper = [e for e in (err.context or ()) if len(e.absolute_path) > len(err.absolute_path)]
    if deeper:  # a wrong element inside an array of an anyOf (list[int] | None): name the element
        return _sentence(tool, max(deeper, key=lambda e: len(e.absolute_path)))
    key = ".".join(str(p) for p in err.absolute_path)
    where = f'argument "{key}"' if key else "the arguments"
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f'invalid arguments for {tool}: argument "{missing}" is required'
    if err.validator in ("type", "anyOf"):
        want = _wanted(err.schema)
        return f"invalid arguments for {tool}: {where} must be {want}, got {_kind(err.instance)}"
    if err.validator in ("enum", "const"):
        allowed = err.validator_value if err.validator == "enum" else [err.validator_value]
        near = did_you_mean(err.instance, [str(a) for a in allowed]) if isinstance(err.instance, str) else []
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return (f"invalid arguments for {tool}: {where} must be one of {', '.join(map(json.dumps, allowed))}, "
                f"got {_kind(err.instance)}{hint}")
    if err.validator == "maxLength":
        return (f"invalid arguments for {tool}: {where} is {len(err.instance)} characters, more than the "
                f"{err.validator_value} this server accepts")
    if err.validator in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum"):
        bound = {"maximum": "at most", "minimum": "at least", "exclusiveMaximum": "less than",
                 "exclusiveMinimum": "more than"}[str(err.validator)]
        v = err.validator_value
        shown = f"{v:g}" if isinstance(v, float) else str(v)
        return f"invalid arguments for {tool}: {where} must be {bound} {shown}, got {err.instance}"
    return f"invalid arguments for {tool}: {where}: {err.message}"


def _wanted(schema: dict) -> str:
    types: list[str] = []
    for s in schema.get("anyOf", [schema]):
        t = s.get("type")
        types += t if isinstance(t, list) else [t] if t else []
    if "items" in schema and schema.get("type") == "array":
        return f"an array of {_wanted(schema['items']).removeprefix('an ').removeprefix('a ')}s"
    return " or ".join(_JSON_TYPES.get(t, t) for t in types) or "a valid value"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"string {json.dumps(shown)}"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


#: largest text one tool call returns (run_sql: its own 1 MiB limit, store.sqlguard.MAX_OUTPUT_BYTES); a
#: larger answer is refused with what to narrow, never cut mid-JSON
MAX_TOOL_OUTPUT = 256 * 1024
_NARROW = {
    "get_trace_stats": "give since/until for a shorter window",
    "get_causal_chains": "lower top_n, or give since/until or pids",
    "get_stacks": "lower limit, or filter by source/op/pid/since",
    "get_test_report": "read the report file itself",
}


class OutputBoundMiddleware:
    """Refuses, with a clear message, a tool answer over its byte bound (every tool is bounded)."""

    def __init__(self, limits: dict[str, int] | None = None) -> None:
        self.limits = limits or {}

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        result = await call_next(ctx)
        if ctx.method != "tools/call":
            return result
        data = result.model_dump(by_alias=True) if hasattr(result, "model_dump") else (result or {})
        if data.get("isError"):
            return result
        name = str((ctx.params or {}).get("name", ""))
        limit = self.limits.get(name, MAX_TOOL_OUTPUT)
        size = sum(len(str(c.get("text", "")).encode()) for c in data.get("content") or () if isinstance(c, dict))
        if size <= limit:
            return result
        from mcp.types import CallToolResult, TextContent

        how = _NARROW.get(name, "use limit/offset or a narrower filter")
        text = (f"the answer of {name} is {size} bytes, more than this server's limit of {limit} bytes for one "
                f"tool result: {how}")
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


class StrictArgsMiddleware:
    """Refuses a ``tools/call`` whose arguments do not match the tool's (closed) input schema."""

    def __init__(self, server: Any = None) -> None:
        self.server = server  # set once the server exists (the middleware list is given to its constructor)

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method == "tools/call":
            params = ctx.params or {}
            name = str(params.get("name", ""))
            tool = self.server._tool_manager.get_tool(name)
            if tool is not None:
                problem = check_arguments(name, tool.parameters, params.get("arguments"))
                if problem:
                    raise MCPError(INVALID_PARAMS, problem)
        return await call_next(ctx)
