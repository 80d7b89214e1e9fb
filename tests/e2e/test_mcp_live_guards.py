"""The guards of `ingero mcp --live`, through a real MCP client over stdio, as root.

Attach without --allow-attach, a library off the allow-list, a process outside the traced tree, a budget
over the server's limit, a probe that spends its event budget and detaches itself, and a target that
exits (its probes end, and the trace refuses new ones). The HTTP client that disconnects is in
test_mcp_live.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from tests.e2e.test_mcp_live import (
    ATTACH_TOOLS,
    PROBE_TOOLS,
    SPEC,
    _server_args,
    audit_rows,
    call,
    call_err,
    db_rows,
    live_stdio,
    wait_text,
)
from tests.helpers import Workload

pytestmark = pytest.mark.bpf


def test_without_allow_attach_the_attach_tools_are_absent(need_bpf, tmp_path: Path):
    db, audit_db = tmp_path / "live.db", tmp_path / "audit.db"
    with Workload("--repeat", "1", "--hold", "30") as w:
        w.expect("waiting calls")

        async def main():
            async with live_stdio(_server_args(w.pid, db, audit_db)) as s:
                tools = {t.name for t in (await s.list_tools()).tools}
                err = await call_err(s, "attach_probe", spec=SPEC)
                err2 = await call_err(s, "detach_probe", probe_id=1)
                valid = await call(s, "validate_probe", spec=SPEC)
                return tools, err, err2, valid

        tools, err, err2, valid = anyio.run(main)
    assert PROBE_TOOLS <= tools and not (ATTACH_TOOLS & tools)
    assert "started without --allow-attach" in err and "detach_probe is not available" in err2
    assert "attach: not possible: this server was started without --allow-attach" in valid
    rows = [r for r in audit_rows(audit_db) if r[1] == "attach_probe"]
    assert rows and rows[0][2] == "error" and json.loads(rows[0][3])["spec"] == SPEC
    assert db_rows(db, "SELECT COUNT(*) FROM probes") == [(0,)]


def test_guards_budgets_and_a_target_that_exits(need_bpf, tmp_path: Path):
    db, audit_db = tmp_path / "live.db", tmp_path / "audit.db"
    with Workload("--repeat", "3") as w, Workload("--repeat", "1", "--hold", "30") as other:
        w.expect("waiting calls")
        other.expect("waiting calls")

        async def main():
            out = {}
            async with live_stdio(_server_args(w.pid, db, audit_db, "--allow-attach", "--max-probes", "3",
                                               "--probe-events", "1000")) as s:
                out["lib"] = await call_err(s, "attach_probe", spec="probe m = libc.so.6:malloc\n")
                out["lib_v"] = await call(s, "validate_probe", spec="probe m = libc.so.6:malloc\n")
                out["tree"] = await call_err(
                    s, "attach_probe", spec=f"probe m = libcudart.so.12:cudaMalloc pid {other.pid}\n  record size\n")
                out["events"] = await call_err(s, "attach_probe", spec=SPEC + "    limit events 5000\n")
                out["ttl"] = await call_err(s, "attach_probe", spec=SPEC + "    limit ttl 10min\n")
                out["pid_tool"] = await call_err(s, "list_libraries", pid=other.pid)
                budget = await call(s, "attach_probe", spec=SPEC + "    limit events 4\n")
                frees = await call(s, "attach_probe", spec="probe frees = libcudart:cudaFree\n  record pid\n")
                b_id = int(budget.split("attached probe ")[1].split()[0])
                f_id = int(frees.split("attached probe ")[1].split()[0])
                out["count"] = await call(s, "attach_probe", spec="probe syncs = libcudart:cudaDeviceSynchronize\n")
                out["sync_id"] = int(out["count"].split("attached probe ")[1].split()[0])
                out["too_many"] = await call_err(s, "attach_probe", spec="probe x = libcudart:cudaFree\n")
                w.go()
                w.finish()
                out["listed"] = await wait_text(s, "list_probes", lambda t: t.startswith("trace: ended"))
                out["budget_res"] = await call(s, "get_probe_results", probe_id=b_id)
                out["frees_res"] = await call(s, "get_probe_results", probe_id=f_id)
                out["after"] = await call_err(s, "attach_probe", spec=SPEC)
                out["stats"] = await call(s, "get_trace_stats")
                out["ids"] = (b_id, f_id)
            return out

        t0 = time.monotonic()
        out = anyio.run(main)
        took = time.monotonic() - t0
    assert "libc.so.6 is not on this server's library allow-list (the CUDA libraries)" in out["lib"]
    assert "attach: refused: libc.so.6 is not on this server's library allow-list" in out["lib_v"]
    assert f"process {other.pid} is not in the traced process tree" in out["tree"]
    assert "events 5000 is over this server's limit of 1000" in out["events"]
    assert "ttl 600s is over this server's limit of 300s" in out["ttl"]
    assert "not in the traced process tree" in out["pid_tool"]
    assert "at most 3 probes may be active at once (3 are)" in out["too_many"]
    b_id, f_id = out["ids"]
    lines = {int(ln.split(",")[0]): ln for ln in out["listed"].splitlines() if ln[:1].isdigit()}
    assert "events budget reached (4 events)" in lines[b_id]
    assert "the traced processes exited" in lines[f_id]
    assert "; 4 events stored" in out["budget_res"]
    assert "; 9 events stored" in out["frees_res"] and "by pid: " in out["frees_res"]
    assert "the trace has ended (the traced processes exited)" in out["after"]
    ops = {o["op"]: o["n"] for o in json.loads(out["stats"].split("\n\n", 1)[1])["ops"]}
    assert ops["probe:mallocs"] == 4 and ops["probe:frees"] == 9 and ops["cudaMalloc"] == 9
    assert took < 60
    # a later replay of the file still has the aggregating probe's in-kernel counts
    from ingero.mcp.live import ProbeTools
    from ingero.store import TraceReader

    reader = TraceReader.open(db)
    try:
        replayed = ProbeTools(reader).results(out["sync_id"])
    finally:
        reader.close()
    assert "aggregates as last read from the kernel (stored)" in replayed
    assert "symbol=cudaDeviceSynchronize: count=3" in replayed, replayed
    refused = [r for r in audit_rows(audit_db) if r[1] == "attach_probe" and r[2] == "error"]
    assert len(refused) == 6
    # a refusal after checking still records what the spec resolved to
    tree = json.loads(refused[1][3])
    assert tree["_ingero"]["resolved"] == {"m": ["cudaMalloc"]}
