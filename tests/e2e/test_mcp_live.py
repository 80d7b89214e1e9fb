"""End to end, as root: a real MCP client drives `ingero mcp --live` through a whole investigation.

The SDK's client spawns the server over stdio (and once over streamable HTTP with a bearer token); the
server traces the CUDA test workload (tests/helpers.py ``Workload``: it loads libcudart.so.12, waits for
SIGUSR1, then makes its planned calls), and the agent widens the trace: list_libraries -> list_symbols ->
validate_probe with a mistake, then fixed -> attach_probe -> the workload runs -> get_probe_results shows
the exact counts and sizes -> get_trace_stats lists the new op -> detach_probe -> list_probes says it
ended and why. The audit log holds every call, with the spec text and the resolved symbols.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from ingero import workload
from tests.helpers import Workload, wait_for_port
from tests.replay_helpers import ingero_cmd, text_of

pytestmark = pytest.mark.bpf

MiB = 1 << 20
SPEC_TYPO = "probe mallocs = libcudart:cudaMalloc\n    record sise, retval, latency\n"
SPEC = "probe mallocs = libcudart:cudaMalloc\n    record size, retval, latency\n"
ATTACH_TOOLS = {"attach_probe", "detach_probe"}
PROBE_TOOLS = {"list_libraries", "list_symbols", "describe_symbol", "validate_probe", "list_probes",
               "get_probe_results"}


def _server_args(pid: int | None, db: Path, audit_db: Path, *extra: str, command=()) -> list[str]:
    args = ["mcp", "--live", "--db", str(db), "--audit-db", str(audit_db), *extra]
    if pid:
        args += ["--pid", str(pid)]
    if command:
        args += ["--", *command]
    return args


@asynccontextmanager
async def live_stdio(args: list[str]):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=ingero_cmd(), args=args, env=dict(os.environ))
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        yield s


async def call(s, tool: str, **args) -> str:
    r = await s.call_tool(tool, args)
    assert not r.is_error, (tool, text_of(r))
    return text_of(r)


async def call_err(s, tool: str, **args) -> str:
    r = await s.call_tool(tool, args)
    assert r.is_error, (tool, text_of(r))
    return text_of(r)


async def wait_text(s, tool: str, cond, timeout: float = 15.0, **args) -> str:
    t0 = time.monotonic()
    while True:
        text = await call(s, tool, **args)
        if cond(text):
            return text
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{tool} never satisfied the condition: {text}")
        await anyio.sleep(0.1)


def audit_rows(audit_db: Path) -> list[tuple]:
    conn = sqlite3.connect(audit_db)
    try:
        return conn.execute("SELECT method, tool, outcome, args, transport FROM calls ORDER BY id").fetchall()
    finally:
        conn.close()


def db_rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def investigate(s, w: Workload, db: Path) -> dict:
    """The whole investigation of the issue, on one client session; returns what the checks need."""
    out: dict = {}
    tools = {t.name for t in (await s.list_tools()).tools}
    assert PROBE_TOOLS | ATTACH_TOOLS <= tools
    libs = await call(s, "list_libraries")
    assert f"mapped by pid {w.pid}" in libs and "libcudart.so.12" in libs
    syms = await call(s, "list_symbols", library="libcudart", pattern="cudaMalloc*")
    assert "cudaMalloc,yes" in syms and "match 'cudaMalloc*'" in syms
    desc = await call(s, "describe_symbol", library="libcudart", symbol="cudaMalloc")
    assert "size_t size" in desc and "size,size_t,uint" in desc
    bad = await call(s, "validate_probe", spec=SPEC_TYPO)
    assert bad.startswith("INVALID: 1 error") and "2:12" in bad and "did you mean 'size'" in bad, bad
    good = await call(s, "validate_probe", spec=SPEC)
    assert good.startswith("VALID: 1 probe") and "libcudart.so.12" in good and "attach: allowed" in good
    assert "estimate" in good and ("events/s" in good or "no basis" in good)
    attached = await call(s, "attach_probe", spec=SPEC)
    pid_ = int(attached.split("attached probe ")[1].split()[0])
    assert "1 symbol (cudaMalloc)" in attached and "ttl 300s, events 1000000" in attached
    out["probe_id"] = pid_
    w.go()
    w.expect("done ")
    n = 3 * len(workload.MALLOC_SIZES)
    res = await wait_text(s, "get_probe_results", lambda t: f"; {n} events stored" in t, probe_id=pid_)
    assert f"by size: 256: 3, {MiB}: 3, {4 * MiB}: 3" in res, res
    assert f"by retval: 35: {n}" in res and f"matched {n}" in res
    out["results"] = res
    stats = json.loads((await call(s, "get_trace_stats")).split("\n\n", 1)[1])
    by_op = {o["op"]: o["n"] for o in stats["ops"]}
    assert by_op["probe:mallocs"] == n and by_op["cudaMalloc"] == n, by_op
    sql = await call(s, "run_sql", query="SELECT size, COUNT(*) FROM probe_mallocs GROUP BY size ORDER BY size")
    assert f'"data":[[256,3],[{MiB},3],[{4 * MiB},3]]' in sql
    await call(s, "get_causal_chains")
    det = await call(s, "detach_probe", probe_id=pid_)
    assert f"detached probe {pid_} 'mallocs'" in det
    listed = await call(s, "list_probes")
    row = [ln for ln in listed.splitlines() if ln.startswith(f"{pid_},mallocs,")]
    assert row and ",ended," in row[0] and "detached by request" in row[0], listed
    out["listed"] = listed
    return out


def check_audit(audit_db: Path, transport: str) -> None:
    rows = audit_rows(audit_db)
    calls = [r for r in rows if r[0] == "tools/call"]
    extra = 1 if transport == "stdio" else 0
    if transport == "http":  # later sessions follow the investigation's
        calls = calls[: [r[1] for r in calls].index("list_probes") + 1]
    assert [r[1] for r in calls] == [
        "list_libraries", "list_symbols", "describe_symbol", "validate_probe", "validate_probe", "attach_probe"
    ] + ["get_probe_results"] * (len(calls) - 11 - extra) + [
        "get_trace_stats", "run_sql", "get_causal_chains", "detach_probe", "list_probes"] + ["attach_probe"] * extra
    assert all(r[4] == transport for r in calls)
    attach = [json.loads(r[3]) for r in calls if r[1] == "attach_probe"][0]
    assert attach["spec"] == SPEC and attach["_ingero"]["resolved"] == {"mallocs": ["cudaMalloc"]}
    assert attach["_ingero"]["probe_ids"] and attach["_ingero"]["owner"].startswith(
        "stdio" if transport == "stdio" else "http:")
    validated = [json.loads(r[3]) for r in calls if r[1] == "validate_probe"]
    assert validated[0]["_ingero"] == {"valid": False} and validated[1]["_ingero"]["valid"] is True


def test_investigation_over_stdio(need_bpf, tmp_path: Path):
    db, audit_db = tmp_path / "live.db", tmp_path / "audit.db"
    with Workload("--repeat", "3", "--hold", "60") as w:
        w.expect("waiting calls")

        async def main():
            async with live_stdio(_server_args(w.pid, db, audit_db, "--allow-attach")) as s:
                out = await investigate(s, w, db)
                # left attached when the client goes away: it ends with the stdio session
                await s.call_tool("attach_probe", {"spec": "probe frees = libcudart:cudaFree\n"})
                return out

        anyio.run(main)
    check_audit(audit_db, "stdio")
    # the database keeps the probes for a later replay: spec, fields and why each ended
    got = db_rows(db, "SELECT name, spec, status, end_reason FROM probes ORDER BY id")
    assert [(r[0], r[2]) for r in got] == [("mallocs", "detached"), ("frees", "detached")]
    assert "detached by request" in got[0][3] and "cudaMalloc" in got[0][1]
    assert got[1][3] == "the MCP client session ended (stdio closed)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_http(args: list[str], port: int, token: str) -> subprocess.Popen:
    env = dict(os.environ, INGERO_MCP_TOKEN=token)
    proc = subprocess.Popen([ingero_cmd(), *args, "--http", f"127.0.0.1:{port}"], env=env, stderr=subprocess.PIPE,
                            text=True)
    return wait_for_port(proc, port, 30)


@asynccontextmanager
async def http_session(url: str, token: str, terminate_on_close: bool = True):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    hc = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    transport = streamable_http_client(url, http_client=hc, terminate_on_close=terminate_on_close)
    async with hc, transport as (rd, wr), ClientSession(rd, wr) as s:
        await s.initialize()
        yield s


def test_investigation_over_http_and_clients_that_go_away(need_bpf, tmp_path: Path):
    """The same investigation over streamable HTTP; then a client that closes its session (DELETE) and one
    that vanishes without a word (idle timeout): the probes each attached end with their session, the one
    waiting for a library no traced process has mapped as well as the attached one."""
    db, audit_db = tmp_path / "live.db", tmp_path / "audit.db"
    port, token = _free_port(), "live-http-token"
    url = f"http://127.0.0.1:{port}/mcp"
    with Workload("--repeat", "3", "--hold", "60") as w:
        w.expect("waiting calls")
        proc = _start_http(_server_args(w.pid, db, audit_db, "--allow-attach", "--http-idle-timeout", "2"),
                           port, token)
        try:
            async def main():
                async with http_session(url, token) as s:
                    await investigate(s, w, db)
                ids, waiting = [], []
                for close in (True, False):
                    async with http_session(url, token, terminate_on_close=close) as s:
                        text = await call(s, "attach_probe", spec="probe frees = libcudart:cudaFree\n  record pid\n")
                        ids.append(int(text.split("attached probe ")[1].split()[0]))
                        # and one waiting for a library the workload never maps: it ends with its session too
                        text = await call(s, "attach_probe", spec="probe blas = libcublas.so.12:cublasCreate_v2\n")
                        assert "waiting for libcublas.so.12 in the traced tree" in text, text
                        waiting.append(int(text.split("attached probe ")[1].split()[0]))
                async with http_session(url, token) as s:
                    gone = "the MCP client session that attached it ended (HTTP session closed)"
                    t0 = time.monotonic()
                    listed = await wait_text(s, "list_probes", lambda t: t.count(gone) == 4, timeout=20)
                    return ids, waiting, listed, time.monotonic() - t0

            ids, waiting, listed, waited = anyio.run(main)
        finally:
            proc.terminate()
            proc.wait(30)
    for name, i in [("frees", i) for i in ids] + [("blas", i) for i in waiting]:
        row = [ln for ln in listed.splitlines() if ln.startswith(f"{i},{name},")]
        assert row and ",ended," in row[0], listed
    assert waited < 15
    check_audit(audit_db, "http")
    check_audit_http = [r for r in audit_rows(audit_db) if r[0] == "tools/call"]
    assert all(r[4] == "http" for r in check_audit_http)
    assert [r[1] for r in check_audit_http].count("attach_probe") == 5


def test_estimate_is_within_2x_of_the_recorded_rate(need_bpf, tmp_path: Path):
    """validate_probe's estimate for cudaMalloc, made while a paced workload runs, against the rate the
    attached probe then records."""
    lib = str(workload.wheel_libcudart(12))
    paced = ("import ctypes as ct, time\n"
             f"lib = ct.CDLL({lib!r})\n"
             "lib.cudaMalloc.argtypes = [ct.POINTER(ct.c_void_p), ct.c_size_t]\n"
             "p = ct.c_void_p(); t0 = time.monotonic(); i = 0\n"
             "while time.monotonic() - t0 < 30:\n"
             "    lib.cudaMalloc(ct.byref(p), 4096); i += 1\n"
             "    time.sleep(max(0.0, t0 + i / 400 - time.monotonic()))\n")
    child = subprocess.Popen([sys.executable, "-c", paced])
    db, audit_db = tmp_path / "live.db", tmp_path / "audit.db"
    try:
        async def main():
            async with live_stdio(_server_args(child.pid, db, audit_db, "--allow-attach")) as s:
                await anyio.sleep(3.0)  # let the standard trace see a few seconds of calls
                est = await call(s, "validate_probe", spec=SPEC, window_s=2.0)
                attached = await call(s, "attach_probe", spec=SPEC)
                pid_ = int(attached.split("attached probe ")[1].split()[0])
                await anyio.sleep(2.5)
                sql = await call(s, "run_sql", query="SELECT COUNT(*), MIN(timestamp), MAX(timestamp) FROM events "
                                                     f"WHERE source = 100 AND op = {pid_}")
                await call(s, "detach_probe", probe_id=pid_)
                return est, sql

        est, sql = anyio.run(main)
    finally:
        child.kill()
        child.wait()
    rate_est = float(est.split("-> ~")[1].split(" events/s")[0])
    n, first, last = json.loads(sql.split("\n\n", 1)[1])["data"][0]
    rate = (n - 1) / ((last - first) / 1e9)
    print(f"\n{est}\nrecorded by the probe: {n} events at {rate:.1f}/s; estimate/recorded = {rate_est / rate:.2f}")
    assert n > 100 and rate_est > 0, (est, sql)
    assert 0.5 <= rate_est / rate <= 2.0, (rate_est, rate, est)
