"""query_fleet and `ingero fleet` bound every argument: a value over its bound is refused before anything is
asked, naming the argument and the bound; a value at the bound gets through (to a Prometheus that is not
there, which the answer then says)."""

from __future__ import annotations

import subprocess

import anyio
import pytest

from ingero.fleet.query import ARG_CHARS, MAX_K, MAX_LIMIT
from tests.replay_helpers import ingero_cmd

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens, a query is refused at once


def _call(args: dict) -> tuple[bool, str]:
    from mcp import Client
    from mcp.shared.exceptions import MCPError

    from ingero.mcp.server import ServerOptions, build_server

    async def main():
        async with Client(build_server(None, None, ServerOptions(prometheus=NOWHERE))) as c:
            try:
                r = await c.call_tool("query_fleet", args)
            except MCPError as e:  # invalid params: a JSON-RPC error
                return True, f"invalid params: {e.error.message}"
            return r.is_error, r.content[0].text

    return anyio.run(main)


def _tool_schema() -> dict:
    from mcp import Client

    from ingero.mcp.server import ServerOptions, build_server

    async def main():
        async with Client(build_server(None, None, ServerOptions(prometheus=NOWHERE))) as c:
            return {t.name: t.input_schema for t in (await c.list_tools()).tools}["query_fleet"]

    return anyio.run(main)


def test_schema_is_closed_and_bounds_every_string():
    schema = _tool_schema()
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["action"]["enum"] == ["overview", "ops", "stragglers", "errors", "promql"]
    for name, bound in ARG_CHARS.items():
        if name != "action":
            assert props[name]["maxLength"] == bound, name
    assert props["limit"]["maximum"] == MAX_LIMIT and props["k"]["maximum"] == MAX_K


@pytest.mark.parametrize("name", [n for n in ARG_CHARS if n != "action"])
def test_over_the_bound_is_refused_naming_the_argument(name):
    bound = ARG_CHARS[name]
    action = "promql" if name in ("query", "step") else "ops"
    err, text = _call({"action": action, name: "x" * (bound + 1)})
    assert err and text == (f'invalid params: invalid arguments for query_fleet: argument "{name}" is {bound + 1} '
                            f"characters, more than the {bound} this server accepts"), text
    # at the bound, the schema lets it through: the tool itself answers (the duration is not one, or
    # Prometheus is not there)
    err, text = _call({"action": action, name: "x" * bound, **({"query": "up"} if name != "query" else {})})
    assert err and "this server accepts" not in text and "characters" not in text, text


@pytest.mark.parametrize(("args", "message"), [
    ({"action": "ops", "limit": MAX_LIMIT + 1}, f'argument "limit" must be at most {MAX_LIMIT}, got {MAX_LIMIT + 1}'),
    ({"action": "stragglers", "k": 1}, 'argument "k" must be more than 1, got 1'),
    ({"action": "stragglers", "k": 1e6}, f'argument "k" must be at most {MAX_K:g}, got 1000000'),
    ({"action": "Everything"}, 'argument "action" must be one of "overview", "ops", "stragglers", "errors", '
                               '"promql", got string "Everything"'),
    ({"action": "stragglrs"}, '"promql", got string "stragglrs"; did you mean \'stragglers\'?'),
    ({"action": "ops", "node": "a"}, 'unknown argument "node"'),
])
def test_numbers_and_names_out_of_bounds(args, message):
    err, text = _call(args)
    assert err and message in text, text


@pytest.mark.parametrize(("argv", "message"), [
    (["ops", "--op", "o" * (ARG_CHARS["op"] + 1)], f"op is {ARG_CHARS['op'] + 1} characters, more than the "
                                                    f"{ARG_CHARS['op']} accepted"),
    (["ops", "--since", "1" * (ARG_CHARS["since"] + 1)], f"since is {ARG_CHARS['since'] + 1} characters"),
    (["promql", "q" * (ARG_CHARS["query"] + 1)], f"query is {ARG_CHARS['query'] + 1} characters, more than the "
                                                  f"{ARG_CHARS['query']} accepted"),
    (["promql", "up", "--since", "5m", "--step", "s" * (ARG_CHARS["step"] + 1)], "step is"),
    (["ops", "--limit", str(MAX_LIMIT + 1)], f"limit {MAX_LIMIT + 1}: must be between 1 and {MAX_LIMIT}"),
    (["stragglers", "-k", "1"], "k must be > 1 and at most"),
])
def test_cli_twin_refuses_the_same(argv, message):
    out = subprocess.run([ingero_cmd(), "fleet", *argv, "--prometheus", NOWHERE], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out
