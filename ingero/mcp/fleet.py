"""The query_fleet tool (upstream's name): the fleet's metrics through Prometheus, compact text."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ingero.errors import IngeroError
from ingero.fleet.query import ACTIONS, ARG_CHARS, DEFAULT_K, DEFAULT_LIMIT, MAX_K, MAX_LIMIT, FleetQuery

QUERY_FLEET_DESCRIPTION = (
    "Query every ingero node of the fleet through Prometheus (each node's `ingero trace --metrics`). Actions: "
    "overview (nodes, event rates, errors, lost events, top ops, how to reach each node's live MCP server), "
    "ops (per-op p50/p99 per node from latency histograms), stragglers (nodes whose p99 of an op exceeds k x "
    "the fleet median, with the factor), errors (failing calls per node, op and CUDA error), promql (a "
    "read-only PromQL query; bounded: 10 s, 24 h range, 120 points and `limit` series). Omit 'since' for "
    "everything since each node's trace started; with 'since' the counts are exact over that window. Each "
    "answer says how to reach the node's own `ingero mcp "
    "--live`: go there to get_trace_stats and attach probes.")


def add_fleet_tool(server: MCPServer, prometheus_url: str) -> None:
    from ingero.fleet.prom import Prometheus

    fleet = FleetQuery(Prometheus(prometheus_url))

    @server.tool(structured_output=False, description=QUERY_FLEET_DESCRIPTION)
    async def query_fleet(
        action: Annotated[Literal[ACTIONS], Field(description=" | ".join(ACTIONS))],
        since: Annotated[str, Field(description="only the last DURATION (e.g. 5m); omit for everything",
                                    max_length=ARG_CHARS["since"])] = "",
        op: Annotated[str, Field(description="only this op, e.g. cudaStreamSync", max_length=ARG_CHARS["op"])] = "",
        k: Annotated[float, Field(description="stragglers: p99 more than k x the fleet median (default 2)",
                                  gt=1, le=MAX_K)] = DEFAULT_K,
        query: Annotated[str, Field(description="promql: the PromQL expression", max_length=ARG_CHARS["query"])] = "",
        step: Annotated[str, Field(description="promql with since: the step of the range query",
                                   max_length=ARG_CHARS["step"])] = "",
        limit: Annotated[int, Field(description=f"max rows/series (0: {DEFAULT_LIMIT})", ge=0,
                                    le=MAX_LIMIT)] = 0,
    ) -> str:
        def work() -> str:
            try:
                return fleet.answer(action, since=since, op=op, k=k, query=query, step=step, limit=limit)
            except IngeroError as e:
                raise ToolError(str(e)) from None
        return await anyio.to_thread.run_sync(work)
