"""A server shared by several clients: one client's runaway query stalls no one, strict tool inputs,
every refused HTTP request on record. Real SDK client sessions against `ingero mcp --db ... --http`."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import anyio

from tests.replay_helpers import DATALOADER, free_port, start_http

TOKEN = "safety-token"
BOMB = "SELECT instr(printf('%.*c', 1000000, 'a'), printf('%.*c', 500000, 'a') || 'b')"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


async def _session(url: str):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    hc = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    return hc, streamable_http_client(url, http_client=hc), ClientSession


def test_cpu_bomb_of_one_client_stalls_no_other(tmp_path: Path):
    """Client A runs a single-call CPU bomb; client B's get_trace_stats answers within 1 s meanwhile; A's
    query ends within its limit + 1 s; the database is unchanged."""
    db = tmp_path / DATALOADER.name
    shutil.copy(DATALOADER, db)
    before = _sha(db)
    port = free_port()
    proc = start_http(db, tmp_path / "audit.db", port, TOKEN, "--sql-timeout", "3")
    url = f"http://127.0.0.1:{port}/mcp"
    out: dict = {}

    async def client_a(started: anyio.Event):
        hc, transport, session_cls = await _session(url)
        async with hc, transport as (rd, wr), session_cls(rd, wr) as s:
            await s.initialize()
            started.set()
            t0 = time.monotonic()
            r = await s.call_tool("run_sql", {"query": BOMB})
            out["a"] = (time.monotonic() - t0, r)

    async def client_b(started: anyio.Event):
        hc, transport, session_cls = await _session(url)
        async with hc, transport as (rd, wr), session_cls(rd, wr) as s:
            await s.initialize()
            await s.call_tool("get_trace_stats", {})      # warm: the first call pays imports
            await started.wait()
            await anyio.sleep(0.5)                       # A's query is running now
            t0 = time.monotonic()
            r = await s.call_tool("get_trace_stats", {})
            out["b"] = (time.monotonic() - t0, r)

    async def main():
        started = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client_a, started)
            tg.start_soon(client_b, started)

    try:
        anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(10)
    a_s, a = out["a"]
    b_s, b = out["b"]
    assert a.is_error and "3 s time limit" in a.content[0].text
    assert a_s < 3 + 1.0, a_s
    assert not b.is_error and "cudaMalloc" in b.content[0].text
    assert b_s < 1.0, b_s
    assert _sha(db) == before
