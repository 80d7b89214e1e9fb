"""A server shared by several clients: one client's runaway query stalls no one, strict tool inputs,
every refused HTTP request on record. Real SDK client sessions against `ingero mcp --db ... --http`."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import anyio
import pytest

from tests.replay_helpers import DATALOADER, free_port, start_http

TOKEN = "safety-token"
# one LIKE call that runs ~30 s (1M characters against a 40k pattern; SQLite's progress handler never runs
# inside it). An instr() of a 500k needle in 1M was used first: 3.4 s on an idle AMD EPYC, which a faster
# CPU finishes inside the 3 s limit
BOMB = "SELECT printf('%.*c', 1000000, 'a') LIKE '%' || printf('%.*c', 40000, 'a') || 'b' || '%'"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


async def _session(url: str):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    hc = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    return hc, streamable_http_client(url, http_client=hc), ClientSession


def test_cpu_bomb_of_one_client_stalls_no_other(tmp_path: Path):
    """Client A runs a single-call CPU bomb; every get_trace_stats client B sends while it runs answers
    within 1 s, timed by B itself; A's query ends within its limit + 1 s; the database is unchanged.

    By design B never waits on A: A's query runs in a process of its own at a lower CPU priority (it cannot
    take the server's GIL, its event loop or a database lock), and B's call reads through its worker
    thread's own connection. The calls counted are only those B sent after A's and answered before A's."""
    db = tmp_path / DATALOADER.name
    shutil.copy(DATALOADER, db)
    before = _sha(db)
    port = free_port()
    limit_s = 3
    proc = start_http(db, tmp_path / "audit.db", port, TOKEN, "--sql-timeout", str(limit_s))
    url = f"http://127.0.0.1:{port}/mcp"
    out: dict = {"b": []}

    async def client_a(ready: anyio.Event, b_ready: anyio.Event, done: anyio.Event):
        hc, transport, session_cls = await _session(url)
        async with hc, transport as (rd, wr), session_cls(rd, wr) as s:
            await s.initialize()
            await s.call_tool("run_sql", {"query": "SELECT 1"})  # warm: the first call pays imports
            await b_ready.wait()
            t0 = time.monotonic()
            ready.set()
            try:
                r = await s.call_tool("run_sql", {"query": BOMB})
            finally:
                done.set()
            out["a"] = (t0, time.monotonic(), r)

    async def client_b(ready: anyio.Event, b_ready: anyio.Event, done: anyio.Event):
        hc, transport, session_cls = await _session(url)
        async with hc, transport as (rd, wr), session_cls(rd, wr) as s:
            await s.initialize()
            await s.call_tool("get_trace_stats", {})      # warm: the first call pays imports
            b_ready.set()
            await ready.wait()
            while not done.is_set():
                t0 = time.monotonic()
                r = await s.call_tool("get_trace_stats", {})
                out["b"].append((t0, time.monotonic(), r))
                await anyio.sleep(0.2)

    async def main():
        ready, b_ready, done = anyio.Event(), anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client_a, ready, b_ready, done)
            tg.start_soon(client_b, ready, b_ready, done)

    try:
        anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(10)
    a_start, a_end, a = out["a"]
    assert a.is_error and f"{limit_s} s time limit" in a.content[0].text
    assert a_end - a_start <= limit_s + 1.0, a_end - a_start
    import sqlite3

    server_ms = sqlite3.connect(tmp_path / "audit.db").execute(
        "SELECT duration_ms FROM calls WHERE tool = 'run_sql' ORDER BY id DESC").fetchone()[0]
    assert server_ms / 1000 <= limit_s + 1.0, server_ms
    during = [(t1 - t0, r) for t0, t1, r in out["b"] if t0 >= a_start and t1 <= a_end]
    # B's calls all ran while A's query did (each answered in ~0.01 s idle, ~0.2 s apart over A's ~3 s)
    assert len(during) >= 3, [(round(t0 - a_start, 2), round(t1 - a_start, 2)) for t0, t1, _ in out["b"]]
    for _, r in during:
        assert not r.is_error and "cudaMalloc" in r.content[0].text
    assert max(took for took, _ in during) <= 1.0, sorted(round(took, 3) for took, _ in during)
    assert _sha(db) == before


# one valid value per required argument, so that only the key under test is wrong
_REQUIRED = {"query": "SELECT 1", "library": "libcudart", "symbol": "cudaMalloc", "probe_id": 1,
             "spec": "probe x = libcudart:cudaMalloc"}
# a string holding the JSON of a right-typed value ("false", "7") is read as it (the MCP Inspector CLI sends
# every argument as a string), so the wrong values here are not such strings
_WRONG = {"string": 5, "integer": "seven", "number": "fast", "boolean": "yes", "array": "[1, 2"}


def _wrong_value(prop: dict):
    """A value of a type the property does not accept (nor as JSON text in a string)."""
    from jsonschema import Draft202012Validator

    first = next(s["type"] for s in prop.get("anyOf", [prop]) if s.get("type") not in (None, "null"))
    for v in (_WRONG[first], "seven", 5, True, {"x": 1}):
        if not Draft202012Validator(prop).is_valid(v):
            return v
    raise AssertionError(prop)


async def _refusals(call, tools) -> list[tuple[str, str, str]]:
    """(tool, key, refusal message) for an unknown key and a wrong type of every argument of every tool."""
    from mcp.shared.exceptions import MCPError
    from mcp.types import INVALID_PARAMS

    out = []
    for t in tools:
        props = t.input_schema.get("properties", {})
        assert t.input_schema.get("additionalProperties") is False, t.name
        base = {k: _REQUIRED[k] for k in t.input_schema.get("required", [])}
        cases = [("severity", {**base, "severity": "HIGH"})]
        cases += [(k, {**base, k: _wrong_value(p)}) for k, p in props.items()]
        for key, args in cases:
            try:
                r = await call(t.name, args)
            except MCPError as e:
                assert e.error.code == INVALID_PARAMS, (t.name, key, e)
                out.append((t.name, key, e.error.message))
            else:
                raise AssertionError(f"{t.name} {args} was accepted: {r}")
    return out


def test_unknown_keys_and_wrong_types_refused_for_every_replay_tool(tmp_path: Path):
    import sqlite3

    from tests.replay_helpers import stdio_session

    audit_db = tmp_path / "audit.db"

    async def main():
        async with stdio_session(DATALOADER, audit_db) as s:
            tools = (await s.list_tools()).tools
            return tools, await _refusals(s.call_tool, tools)
    tools, refused = anyio.run(main)
    assert len(tools) == 13
    for tool, key, msg in refused:
        assert msg.startswith(f"invalid arguments for {tool}: "), msg
        if key == "severity":
            assert 'unknown argument "severity"' in msg, msg
        else:
            assert f'argument "{key}" must be ' in msg, msg
    assert {t for t, _, _ in refused} == {t.name for t in tools}
    rows = sqlite3.connect(audit_db).execute(
        "SELECT tool, outcome, error FROM calls WHERE method = 'tools/call'").fetchall()
    assert len(rows) == len(refused) and all(r[1] == "rejected" and "invalid arguments" in r[2] for r in rows)


def test_unknown_keys_and_wrong_types_refused_for_the_attach_tools():
    """attach_probe and detach_probe exist only on a live --allow-attach server: an in-process one (the
    refusal comes before any tool runs, so no trace session is needed)."""
    from types import SimpleNamespace

    from mcp import Client

    from ingero.mcp.live import LiveOptions, ProbeTools
    from ingero.mcp.server import build_server

    probes = ProbeTools(None, session=SimpleNamespace(pids=[1]), options=LiveOptions(allow_attach=True))
    server = build_server(None, None, probes=probes)

    async def main():
        async with Client(server) as c:
            tools = [t for t in (await c.list_tools()).tools if t.name in ("attach_probe", "detach_probe")]
            return await _refusals(c.call_tool, tools)
    refused = anyio.run(main)
    assert {(t, k) for t, k, _ in refused} == {("attach_probe", "severity"), ("attach_probe", "spec"),
                                               ("detach_probe", "severity"), ("detach_probe", "probe_id")}


def test_every_refused_http_request_is_audited_with_its_reason(tmp_path: Path):
    import sqlite3

    import httpx2

    audit_db = tmp_path / "audit.db"
    port = free_port()
    proc = start_http(DATALOADER, audit_db, port, TOKEN)
    url = f"http://127.0.0.1:{port}/mcp"
    auth = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    # kind: (request, status, outcome, reason the audit row must give)
    cases = {
        "bad token": (dict(method="POST", headers={**auth, "Authorization": "Bearer wrong"}, json=init), 401,
                      "unauthorized", "missing or invalid bearer token"),
        "no token": (dict(method="POST", headers={k: v for k, v in auth.items() if k != "Authorization"},
                          json=init), 401, "unauthorized", "missing or invalid bearer token"),
        "bad host": (dict(method="POST", headers={**auth, "Host": "evil.example:80"}, json=init), 421, "refused",
                     "HTTP 421: Invalid Host header"),
        "bad origin": (dict(method="POST", headers={**auth, "Origin": "http://evil.example"}, json=init), 403,
                       "refused", "HTTP 403: Invalid Origin header"),
        "malformed json": (dict(method="POST", headers=auth, content=b"{not json"), 400, "refused",
                           "HTTP 400: Parse error"),
        "not json-rpc": (dict(method="POST", headers=auth, json={"hello": 1}), 400, "refused",
                         "HTTP 400: Validation error"),
        "no session": (dict(method="POST", headers=auth, json=listing), 400, "refused",
                       "HTTP 400: Bad Request: Missing session ID"),
        "unknown session": (dict(method="POST", headers={**auth, "mcp-session-id": "nope"}, json=listing), 404,
                            "refused", "HTTP 404: Session not found"),
        "bad accept": (dict(method="POST", headers={**auth, "Accept": "text/html"}, json=init), 406, "refused",
                       "HTTP 406: Not Acceptable"),
        "bad content type": (dict(method="POST", headers={**auth, "Content-Type": "text/plain"}, content=b"{}"),
                             400, "refused", "HTTP 400: Invalid Content-Type header"),
        "bad method": (dict(method="PUT", headers=auth, json=init), 405, "refused", "HTTP 405: Method Not Allowed"),
    }
    try:
        for kind, (req, status, _, _) in cases.items():
            r = httpx2.request(url=url, timeout=10, **req)
            assert r.status_code == status, (kind, r.status_code, r.text)
    finally:
        proc.terminate()
        proc.wait(10)
    rows = sqlite3.connect(audit_db).execute("SELECT outcome, error, args FROM calls ORDER BY id").fetchall()
    assert len(rows) == len(cases), rows
    for (kind, (_, _, outcome, reason)), (got_outcome, got_reason, args) in zip(cases.items(), rows, strict=True):
        assert got_outcome == outcome and got_reason.startswith(reason), (kind, got_outcome, got_reason)
        assert '"path": "/mcp"' in args, (kind, args)


KILLED_TRACER = """
import sys, time
from ingero.store import Event, EventWriter, ProbeField, ProbeInfo, SessionInfo
from ingero.store.clock import ktime_now
from ingero.store.schema import SOURCE_PROBE

w = EventWriter(sys.argv[1], node="killed", session=SessionInfo(command="child"))
probes = [w.register_probe(ProbeInfo(f"p{i}", fields=(ProbeField("count"),))) for i in range(9)]
k = ktime_now()
print(w.add_events([Event(k + j, 100, 100, SOURCE_PROBE, p.op, 1000, values=(j,))
                    for j, p in enumerate(probes)]), flush=True)
time.sleep(600)
"""


def test_probes_of_a_sigkilled_tracer_show_as_ended_and_list_probes_pages(tmp_path: Path):
    """A tracer SIGKILLed with 9 active probes: the next open (a replay) shows each ended, with the reason
    and the loss of in-kernel aggregates said; list_probes pages over them."""
    import os
    import re
    import signal
    import sqlite3
    import subprocess
    import sys

    from ingero.mcp.live import TRACER_DIED
    from tests.replay_helpers import ROOT, stdio_session, text_of

    db = tmp_path / "killed.db"
    child = subprocess.Popen([sys.executable, "-c", KILLED_TRACER, str(db)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "9"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)   # ground truth: what the database itself says
    stored = conn.execute("SELECT status, ended_at, end_reason FROM probes").fetchall()
    conn.close()
    assert stored == [("active", 0, "")] * 9

    async def main():
        async with stdio_session(db, tmp_path / "audit.db") as s:
            pages, offset = [], 0
            while offset is not None:
                text = text_of(await s.call_tool("list_probes", {"limit": 4, "offset": offset}))
                pages.append(text)
                m = re.search(r"next page: offset=(\d+)", text)
                offset = int(m.group(1)) if m else None
            return pages, text_of(await s.call_tool("get_probe_results", {"probe_id": 3}))
    pages, results = anyio.run(main)
    assert len(pages) == 3
    assert all("9 probes, 0 active" in p for p in pages)
    assert [re.search(r"rows (\d+-\d+)", p).group(1) for p in pages] == ["1-4", "5-8", "9-9"]
    rows = [line for p in pages for line in p.splitlines() if re.match(r"\d+,p\d,", line)]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 10))
    assert all(",ended," in r and TRACER_DIED in r for r in rows), rows
    assert results.startswith(f"probe 3 'p2': ended ({TRACER_DIED}); 1 events stored")
    assert "in-kernel aggregates not yet read were lost" in TRACER_DIED


def test_an_answer_over_the_output_bound_is_refused_with_what_to_narrow(tmp_path: Path):
    """5000 distinct ops make get_trace_stats over 256 KiB: refused, saying how to narrow; a window that
    holds fewer ops answers."""
    from mcp import Client

    from ingero.mcp.server import build_server
    from ingero.mcp.strict import MAX_TOOL_OUTPUT
    from ingero.store import Event, EventWriter, SessionInfo, TraceReader
    from ingero.store.clock import ktime_now

    db = tmp_path / "many-ops.db"
    with EventWriter(db, node="n", session=SessionInfo(command="x")) as w:
        k = ktime_now()
        w.add_events([Event(k + i * 1_000_000, 1, 1, 3, 1000 + i, 5000) for i in range(5000)])
    reader = TraceReader.open(db)

    async def main():
        async with Client(build_server(reader, None)) as c:
            return (await c.call_tool("get_trace_stats", {}),
                    await c.call_tool("get_trace_stats", {"since": "100ms"}))
    try:
        big, small = anyio.run(main)
    finally:
        reader.close()
    assert big.is_error
    msg = big.content[0].text
    assert msg.startswith("the answer of get_trace_stats is ") and f"limit of {MAX_TOOL_OUTPUT} bytes" in msg
    assert "give since/until for a shorter window" in msg
    assert not small.is_error and len(small.content[0].text.encode()) < MAX_TOOL_OUTPUT


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:   # a zombie is not running
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"



@pytest.mark.bpf
@pytest.mark.parametrize("policy", ["terminate", "keep"])
def test_workload_on_exit_when_the_stdio_client_goes_away(need_bpf, tmp_path: Path, policy):
    """`mcp --live -- CMD`: the SDK's stdio client ends its server by signalling the server's process group;
    the default terminates the workload, --workload-on-exit keep leaves it running (its own session)."""
    import os
    import re
    import signal

    from tests.e2e.test_mcp_live import live_stdio
    from tests.replay_helpers import text_of

    args = ["mcp", "--live", "--db", str(tmp_path / "live.db"), "--audit-db", str(tmp_path / "audit.db")]
    if policy != "terminate":
        args += ["--workload-on-exit", policy]
    args += ["--", "sleep", "120"]

    async def main():
        async with live_stdio(args) as s:
            text = text_of(await s.call_tool("list_probes", {}))
            return int(re.search(r"trace: running, pid (\d+)", text).group(1))
    pid = anyio.run(main)
    try:
        deadline = time.monotonic() + 15
        while policy == "terminate" and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive(pid) == (policy == "keep")
        if policy == "keep":
            time.sleep(3)                      # the client's SIGKILL of the group comes 2 s after its SIGTERM
            assert _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
