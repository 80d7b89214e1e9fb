"""End to end: real MCP clients drive `ingero mcp --db` on every upstream database.

The SDK's client spawns the server over stdio (and once over streamable HTTP with a bearer token), calls
every standard tool and checks real content; the MCP Inspector CLI (TypeScript SDK) is a second client.
The databases and their folder must be unchanged afterwards, and every call must be in the audit log.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import ssl
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from ingero.mcp.format import PREAMBLE
from tests.conftest import skip_or_fail
from tests.helpers import OtherUser
from tests.replay_helpers import (
    DATALOADER,
    DB_DIR,
    DBS,
    folder_fingerprint,
    free_port,
    ingero_cmd,
    start_http,
    stdio_session,
    text_of,
)

STANDARD_SEVEN = {"get_check", "get_trace_stats", "get_causal_chains", "run_demo", "get_test_report",
                  "run_sql", "get_stacks"}
# replay also offers the probe tools that work on library files and stored probes (issue 7); no attach tools
REPLAY_TOOLS = STANDARD_SEVEN | {"list_libraries", "list_symbols", "describe_symbol", "validate_probe",
                                 "list_probes", "get_probe_results"}


@pytest.fixture(autouse=True)
def _dbs_unchanged():
    before = folder_fingerprint()
    yield
    assert folder_fingerprint() == before, "a database or its folder changed"


def _nearest(vals: list[int], p: float) -> int:
    vals = sorted(vals)
    return vals[max(0, math.ceil(p * len(vals)) - 1)]


def _direct(db: Path, sql: str, params=()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _stats_json(text: str) -> dict:
    assert text.startswith(PREAMBLE)
    return json.loads(text[len(PREAMBLE):])


def _audit_rows(audit_db: Path) -> list[tuple]:
    conn = sqlite3.connect(audit_db)
    try:
        return conn.execute("SELECT method, tool, transport, client_name, outcome, bytes_out, token_fp, args "
                            "FROM calls ORDER BY id").fetchall()
    finally:
        conn.close()


async def _exercise_all(s, db: Path) -> dict[str, str]:
    """Call every tool once; returns tool -> text."""
    tools = await s.list_tools()
    assert {t.name for t in tools.tools} == REPLAY_TOOLS
    assert all(t.output_schema is None for t in tools.tools)
    out = {}
    for name, args in [("get_check", {}), ("get_trace_stats", {}), ("get_causal_chains", {}),
                       ("run_demo", {"scenario": "incident"}), ("get_test_report", {}),
                       ("run_sql", {"query": "SELECT COUNT(*) AS n FROM events"}), ("get_stacks", {})]:
        r = await s.call_tool(name, args)
        assert not r.is_error, (name, r)
        assert r.structured_content is None, name
        out[name] = text_of(r)
    return out


@pytest.mark.parametrize("db", DBS, ids=[d.stem for d in DBS])
def test_every_tool_on_every_db_over_stdio(db: Path, tmp_path: Path):
    audit_db = tmp_path / "audit.db"
    n_events = _direct(db, "SELECT COUNT(*) FROM events")[0][0]

    async def main():
        async with stdio_session(db, audit_db) as s:
            out = await _exercise_all(s, db)
            prompt = await s.get_prompt("investigate")
            return out, prompt

    out, prompt = anyio.run(main)
    assert "[PASS] Kernel version" in out["get_check"] or "[FAIL] Kernel version" in out["get_check"]
    stats = _stats_json(out["get_trace_stats"])
    assert stats["n"] == n_events
    counts = dict(_direct(db, "SELECT o.name, COUNT(*) FROM events e JOIN ops o ON o.source_id = e.source "
                              "AND o.op_id = e.op GROUP BY 1"))
    assert {o["op"]: o["n"] for o in stats["ops"]} == counts
    sql = _stats_json(out["run_sql"])
    assert sql["data"] == [[n_events]] and sql["columns"] == ["n"]
    n_stacks = _direct(db, "SELECT COUNT(DISTINCT e.stack_hash) FROM events e JOIN stack_traces st "
                           "ON e.stack_hash = st.hash WHERE e.stack_hash != 0")[0][0]
    if n_stacks:
        stacks = json.loads(out["get_stacks"][len(PREAMBLE):])["stacks"]
        assert len(stacks) == min(10, n_stacks) and all(s["frames"] for s in stacks)
    elif _direct(db, "SELECT COUNT(*) FROM events WHERE source NOT IN (3, 5)")[0][0]:
        assert out["get_stacks"] == "No stacks found. Ensure trace was run with --stacks (default: on)."
    else:  # host and I/O events only: the answer says they never have stacks
        assert out["get_stacks"] == (f"No stacks found: {n_events} events, none with a call stack -- host and I/O "
                                     "events never carry one (stacks are captured for CUDA/driver calls and "
                                     "probes that record them).")
    assert out["get_causal_chains"].startswith(PREAMBLE)
    chains = json.loads(out["get_causal_chains"][len(PREAMBLE):])
    n_stored = _direct(db, "SELECT COUNT(DISTINCT cuda_op || '/' || severity) FROM causal_chains")[0][0]
    assert len(chains) == min(10, n_stored)
    assert "Scenario: incident" in out["run_demo"] and "Insight:" in out["run_demo"]
    assert "ingero selftest" in out["get_test_report"]
    text = prompt.messages[0].content.text
    for tool in ("get_trace_stats", "get_causal_chains", "get_stacks", "run_sql"):
        assert tool in text
    assert "graph_lifecycle" not in text and "graph_frequency" not in text
    rows = _audit_rows(audit_db)
    calls = [r for r in rows if r[0] == "tools/call"]
    assert [r[1] for r in calls] == ["get_check", "get_trace_stats", "get_causal_chains", "run_demo",
                                     "get_test_report", "run_sql", "get_stacks"]
    assert all(r[2] == "stdio" and r[3] == "mcp" and r[4] == "ok" and r[5] > 0 for r in calls)
    assert any(r[0] == "prompts/get" and r[1] == "investigate" for r in rows)
    assert any(r[0] == "tools/list" for r in rows)


def test_dataloader_content(tmp_path: Path):
    """316 stored chains dedup to 8, HIGH first; stats match direct nearest-rank SQL."""
    audit_db = tmp_path / "audit.db"

    async def main():
        async with stdio_session(DATALOADER, audit_db) as s:
            chains = text_of(await s.call_tool("get_causal_chains", {"top_n": 0}))
            default = text_of(await s.call_tool("get_causal_chains", {}))
            verbose = text_of(await s.call_tool("get_causal_chains", {"tsc": False}))
            stats = text_of(await s.call_tool("get_trace_stats", {}))
            vstats = text_of(await s.call_tool("get_trace_stats", {"tsc": False}))
            bad = await s.call_tool("get_trace_stats", {"since": "yesterday"})
            last = text_of(await s.call_tool("get_trace_stats", {"since": "10s"}))
            stacks = text_of(await s.call_tool("get_stacks", {"op": "cudastreamsynchronize", "limit": 2}))
            unknown_op = await s.call_tool("get_stacks", {"op": "cudaMallocc"})
            return chains, default, verbose, stats, vstats, bad, last, stacks, unknown_op

    chains, default, verbose, stats, vstats, bad, last, stacks, unknown_op = anyio.run(main)
    assert _direct(DATALOADER, "SELECT COUNT(*) FROM causal_chains")[0][0] == 316
    arr = json.loads(chains[len(PREAMBLE):])
    assert len(arr) == 8 and json.loads(default[len(PREAMBLE):]) == arr
    sevs = [c["sev"] for c in arr]
    assert sevs == ["HIGH"] * 4 + ["MEDIUM"] * 4
    assert arr[0]["sum"].startswith("[traced-data]cudaLaunchKernel p99=") and "356.6x" in arr[0]["sum"]
    assert all(set(c) == {"rc", "rec", "sev", "sum", "tl", "src"} for c in arr)
    # stored chains say so, with when the tracer computed them (ground truth: the table's detected_at)
    stamps = {time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(d) / 1e9))
              for (d,) in _direct(DATALOADER, "SELECT detected_at FROM causal_chains")}
    for c in arr:
        assert c["src"].startswith("stored: computed by the tracer's live correlator at "), c["src"]
        assert c["src"].split(" at ")[1].split()[0] in stamps
    assert verbose.startswith(PREAMBLE + "8 stored causal chain(s) found:") and "CONTEXT FOR ANALYSIS" in verbose
    assert verbose.count("   Origin: stored: computed by the tracer's live correlator at ") == 8

    st = _stats_json(stats)
    by_op = {o["op"]: o for o in st["ops"]}
    for name, (src, op) in {"cudaStreamSync": (1, 5), "sched_switch": (3, 1)}.items():
        durs = [d for (d,) in _direct(DATALOADER, "SELECT duration FROM events WHERE source=? AND op=?",
                                      (src, op))]
        o = by_op[name]
        assert o["n"] == len(durs)
        for key, p in (("p50", .50), ("p95", .95), ("p99", .99)):
            assert o[key] == _nearest(durs, p) // 1000, (name, key)
        assert o["max"] == max(durs) // 1000
    # sched_switch: 191835 counted by event_aggregates, 3676 stored
    agg = _direct(DATALOADER, "SELECT SUM(count) FROM event_aggregates WHERE source=3 AND op=1")[0][0]
    assert by_op["sched_switch"]["total"] == agg == 191835 and by_op["sched_switch"]["n"] == 3676
    assert st["total_events"] > st["stored_events"] == 3807
    assert "[Host] sched_switch" in vstats and "count=3676 (191835 total)" in vstats
    assert "Stats (3807 stored of" in vstats
    assert bad.is_error and 'invalid duration "yesterday"' in text_of(bad)
    # the last 10 s of the trace, relative to its end, not to now
    end = _direct(DATALOADER, "SELECT MAX(timestamp) FROM events")[0][0]
    n_last = _direct(DATALOADER, "SELECT COUNT(*) FROM events WHERE timestamp >= ?",
                     (end - 10 * 10**9,))[0][0]
    assert 0 < _stats_json(last)["n"] == n_last < 3807
    s = json.loads(stacks[len(PREAMBLE):])
    assert len(s["stacks"]) == 1 and s["stacks"][0]["n"] == 21
    assert any("copy_kernel_cuda" in f for f in s["stacks"][0]["frames"])
    assert all(f.startswith("[traced-data]") for f in s["stacks"][0]["frames"])
    assert unknown_op.is_error and "cudaMalloc" in text_of(unknown_op)


def test_run_sql_refusals_reach_the_agent(tmp_path: Path):
    audit_db = tmp_path / "audit.db"

    async def main():
        async with stdio_session(DATALOADER, audit_db, "--sql-timeout", "1") as s:
            out = []
            for q in ["DELETE FROM events", "ATTACH DATABASE '/tmp/x.db' AS x", "PRAGMA query_only=0",
                      "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM r) SELECT COUNT(*) FROM r",
                      "SELECT 1; DROP TABLE events", "SELECT load_extension('/tmp/evil')"]:
                out.append(await s.call_tool("run_sql", {"query": q}))
            big = await s.call_tool("run_sql", {"query": "SELECT * FROM events", "limit": 5})
            return out, big

    out, big = anyio.run(main)
    msgs = [text_of(r) for r in out]
    assert all(r.is_error for r in out)
    assert "DELETE on events is not allowed" in msgs[0]
    assert "ATTACH" in msgs[1]
    assert "PRAGMA query_only = 0 is not allowed" in msgs[2]
    assert "time limit" in msgs[3]
    assert "one statement" in msgs[4]
    assert "load_extension" in msgs[5]
    res = json.loads(text_of(big)[len(PREAMBLE):])
    assert res["meta"] == {"duration_ms": res["meta"]["duration_ms"], "rows": 5, "truncated": True}
    rows = _audit_rows(audit_db)
    errs = [r for r in rows if r[0] == "tools/call" and r[4] == "error"]
    assert len(errs) == 6 and "DELETE FROM events" in errs[0][7]


def test_run_demo_scenarios_show_their_effect(tmp_path: Path):
    async def main():
        async with stdio_session(DATALOADER, tmp_path / "audit.db") as s:
            out = {}
            for name in ("incident", "cold-start", "cpu-contention", "gpu-steal", "memcpy-bottleneck",
                         "periodic-spike", "nope"):
                t0 = time.monotonic()
                r = await s.call_tool("run_demo", {"scenario": name})
                out[name] = (text_of(r), time.monotonic() - t0, r.is_error)
            return out

    out = anyio.run(main)

    def ops(name: str) -> dict:
        text = out[name][0]
        body = text.split("\n\n", 1)[1].split("\n\nCausal chains:")[0]
        return {o["op"]: o for o in json.loads(body)["ops"]}

    assert all(t < 3.0 for _, t, _ in out.values())
    inc = ops("incident")
    assert inc["cudaStreamSync"]["p99"] > 8 * inc["cudaStreamSync"]["p50"]
    assert inc["sched_switch"]["n"] == 850
    assert '"sev":"HIGH"' in out["incident"][0] and "sched_switch events" in out["incident"][0]
    cold = ops("cold-start")
    assert cold["cudaMalloc"]["max"] > 50 * cold["cudaMalloc"]["p50"]
    cpu = ops("cpu-contention")
    assert cpu["cudaStreamSync"]["p99"] > 3 * cpu["cudaStreamSync"]["p50"]
    assert "cudaStreamSync" in out["cpu-contention"][0].split("Causal chains:")[1]
    steal = ops("gpu-steal")
    assert steal["cudaStreamSync"]["p99"] > 3 * steal["cudaStreamSync"]["p50"]
    mem = ops("memcpy-bottleneck")
    assert float(mem["cudaMemcpy"]["w%"]) > 80 and list(mem)[0] == "cudaMemcpy"
    spike = ops("periodic-spike")
    assert spike["cudaMalloc"]["p95"] > 40 * spike["cudaMalloc"]["p50"]
    assert 'Unknown scenario "nope". Available: cold-start, cpu-contention' in out["nope"][0]
    assert out["nope"][2]  # an error (ToolError), not a result


def test_test_report_newest(tmp_path: Path):
    state = tmp_path / "state"
    (state / "selftest").mkdir(parents=True)
    old = state / "selftest" / "a.json"
    old.write_text('{"status": "old"}')
    new = state / "selftest" / "b.json"
    new.write_text('{"status":"new","tests":[1]}')
    os.utime(old, (1, 1))

    async def main():
        env = {"INGERO_STATE_DIR": str(state)}
        async with stdio_session(DATALOADER, tmp_path / "audit.db", env=env) as s:
            return (text_of(await s.call_tool("get_test_report", {})),
                    text_of(await s.call_tool("get_test_report", {"tsc": False})))

    raw, pretty = anyio.run(main)
    assert raw == '{"status":"new","tests":[1]}'
    assert json.loads(pretty) == {"status": "new", "tests": [1]} and "\n  " in pretty


def test_http_with_token_and_refusal_without(tmp_path: Path):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    audit_db = tmp_path / "audit.db"
    port = free_port()
    token = "s3cret-token-for-tests"
    proc = start_http(DATALOADER, audit_db, port, token)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        hdrs = {"Accept": "application/json, text/event-stream"}
        for auth in (None, "Bearer wrong", "Basic " + token, "Bearer"):
            h = dict(hdrs, **({"Authorization": auth} if auth else {}))
            for method in ("POST", "GET", "DELETE"):
                r = httpx2.request(method, url, json=body if method == "POST" else None, headers=h, timeout=5)
                assert r.status_code == 401 and r.text == "unauthorized\n"
                assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        r = httpx2.get(f"http://127.0.0.1:{port}/anything", timeout=5)
        assert r.status_code == 401

        async def main():
            hc = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            transport = streamable_http_client(url, http_client=hc)
            async with hc, transport as (rd, wr), ClientSession(rd, wr) as s:
                await s.initialize()
                return await _exercise_all(s, DATALOADER)
        out = anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(10)
    assert json.loads(out["get_causal_chains"][len(PREAMBLE):])[0]["sev"] == "HIGH"
    rows = _audit_rows(audit_db)
    refused = [r for r in rows if r[4] == "unauthorized"]
    assert len(refused) == 13
    calls = [r for r in rows if r[0] == "tools/call"]
    assert len(calls) == 7 and all(r[2] == "http" and r[6] and r[4] == "ok" for r in calls)
    from ingero.audit import token_fingerprint
    assert {r[6] for r in calls} == {token_fingerprint(token)}


def test_https_with_a_certificate(tmp_path: Path):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    openssl = shutil.which("openssl")
    if not openssl:
        skip_or_fail("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    port = free_port()
    proc = start_http(DATALOADER, tmp_path / "audit.db", port, "tls-token", "--tls-cert", str(cert),
                       "--tls-key", str(key))
    url = f"https://127.0.0.1:{port}/mcp"
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        r = httpx2.post(url, json={}, verify=ctx, timeout=5)
        assert r.status_code == 401

        async def main():
            hc = httpx2.AsyncClient(headers={"Authorization": "Bearer tls-token"}, verify=ctx, timeout=30)
            transport = streamable_http_client(url, http_client=hc)
            async with hc, transport as (rd, wr), ClientSession(rd, wr) as s:
                await s.initialize()
                return text_of(await s.call_tool("run_sql", {"query": "SELECT COUNT(*) AS n FROM events"}))
        out = anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(10)
    assert '"data":[[3807]]' in out
    assert "https://127.0.0.1" in proc.stderr.read()


def test_http_generated_token_is_printed_and_required(tmp_path: Path):
    import httpx2

    port = free_port()
    proc = start_http(DATALOADER, tmp_path / "audit.db", port, None)
    try:
        r = httpx2.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=5)
        assert r.status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)
    err = proc.stderr.read()
    assert "Bearer token (generated" in err
    token = err.split("Bearer token (generated; set INGERO_MCP_TOKEN to choose one): ")[1].split()[0]
    assert len(token) >= 32


def test_http_refuses_remote_bind_without_tls(tmp_path: Path):
    r = subprocess.run([ingero_cmd(), "mcp", "--db", str(DATALOADER), "--audit-db", str(tmp_path / "a.db"),
                        "--http", "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "without TLS" in r.stderr


@pytest.mark.other_user
def test_read_only_copy_as_unprivileged_user(need_root):
    """A copy of every DB in a read-only folder, served as uid 65534 (nobody): every tool works."""
    with OtherUser() as nobody:
        folder = nobody.base / "ro"
        folder.mkdir()
        for db in DBS:
            shutil.copy(db, folder / db.name)
            os.chmod(folder / db.name, 0o444)
        os.chmod(folder, 0o555)
        state = nobody.home
        before = folder_fingerprint(folder)
        server = [nobody.python, "-c", "from ingero.cli import main; main()"]
        script = nobody.root / "tests" / "e2e" / "mcp_replay_ro_client.py"
        try:
            for db in sorted(folder.glob("*.db")):
                r = nobody.run([str(script), json.dumps(server), str(db), str(state / "audit.db")],
                               env={"INGERO_STATE_DIR": str(state)})
                assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
                assert "ALL OK" in r.stdout
            assert folder_fingerprint(folder) == before
            assert sorted(p.name for p in folder.iterdir()) == sorted(d.name for d in DBS)
            from ingero.audit import read_audit

            calls = [r for r in read_audit(state / "audit.db", 0) if r.method == "tools/call"]
            assert len(calls) == 7 * len(DBS) and all(r.outcome == "ok" for r in calls)
        finally:
            os.chmod(folder, 0o755)


def test_inspector_cli(tmp_path: Path):
    """A second, independent client: the MCP Inspector CLI (TypeScript SDK)."""
    npx = shutil.which("npx")
    if not npx:
        skip_or_fail("npx (Node 20) is needed for the MCP Inspector CLI")
    base = [npx, "-y", "@modelcontextprotocol/inspector@0.15.0", "--cli", ingero_cmd(), "mcp", "--db",
            str(DATALOADER), "--audit-db", str(tmp_path / "audit.db")]
    r = subprocess.run(base + ["--method", "tools/list"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    names = {t["name"] for t in json.loads(r.stdout)["tools"]}
    assert names == REPLAY_TOOLS
    r = subprocess.run(base + ["--method", "tools/call", "--tool-name", "get_trace_stats", "--tool-arg",
                               "tsc=false"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert not res.get("isError") and "structuredContent" not in res
    text = res["content"][0]["text"]
    assert "Stats (3807 stored of" in text and "[CUDA] cudaStreamSync" in text
    rows = _audit_rows(tmp_path / "audit.db")
    assert any(r[1] == "get_trace_stats" and r[3] == "inspector-cli" for r in rows), rows


def test_db_folder_is_readonly_listing():
    assert DB_DIR.is_dir() and len(DBS) == 5
