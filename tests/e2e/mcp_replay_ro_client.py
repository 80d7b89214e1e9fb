"""Run as an unprivileged user by test_read_only_copy_as_unprivileged_user: call every tool once."""

import json
import os
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(server: str, db: str, audit: str) -> None:
    cmd = json.loads(server)
    params = StdioServerParameters(command=cmd[0], args=[*cmd[1:], "mcp", "--db", db, "--audit-db", audit],
                                   env=dict(os.environ))
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        for name, args in [("get_check", {}), ("get_trace_stats", {}), ("get_causal_chains", {}),
                           ("run_demo", {"scenario": "gpu-steal"}), ("get_test_report", {}),
                           ("run_sql", {"query": "SELECT COUNT(*) FROM events"}), ("get_stacks", {})]:
            res = await s.call_tool(name, args)
            assert not res.is_error, (name, res.content)
            assert res.content[0].text, name
    print("ALL OK")


anyio.run(main, *sys.argv[1:4])
