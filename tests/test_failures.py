"""Failing CUDA calls as findings, in replay: error names against the catalogue's headers, upstream's own
databases (none of their calls failed), and a copy of one where calls are made to fail, on both the stored
and the recomputed chain paths; get_stacks' op and source names round-trip with what stats prints."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingero.analysis import causal_chains, trace_stats
from ingero.analysis.chains import failure_chains, replay_chains
from ingero.analysis.failures import error_label, error_name, find_failures, trace_calls_check
from ingero.analysis.stacks import resolve_any_op, resolve_source
from ingero.analysis.window import ALL, TimeWindow, events_access
from ingero.catalogue import DATA_DIR
from ingero.errors import IngeroError
from ingero.store import TraceReader
from ingero.store.schema import OP_NAMES, SOURCE_NAMES, UNKNOWN_OP_FORMATS, op_name
from tests.replay_helpers import DATALOADER, DBS


def test_error_names_are_the_headers_enumerators():
    names: dict[tuple[int, int], set[str]] = {}  # (source, value) -> its enumerators in CUDA 12 and 13
    for major in (12, 13):
        enums = json.loads((DATA_DIR / f"runtime-{major}.json").read_text())["enums"]
        for source, enum in ((1, "cudaError"), (4, "cudaError_enum")):
            for name, value in enums[enum]["values"].items():
                names.setdefault((source, value), set()).add(name)
    assert len(names) > 200
    for (source, value), known in names.items():
        if value:
            assert error_name(source, value) in known, (source, value)
    assert error_name(1, 35) == "cudaErrorInsufficientDriver" and error_name(4, 100) == "CUDA_ERROR_NO_DEVICE"
    assert error_name(1, 0) == "" and error_name(3, 35) == "" and error_label(1, 123456) == "error 123456"
    assert error_label(4, 34) == "CUDA_ERROR_STUB_LIBRARY (34)"


@pytest.mark.parametrize("db", DBS, ids=[d.stem for d in DBS])
def test_upstream_databases_have_no_failing_calls_and_say_so(db):
    with TraceReader.open(db) as r:
        assert find_failures(r).errors == ()
        assert all(not o.errors for o in trace_stats(r).ops)
        assert not any(c.id.startswith("cuda-error") for c in causal_chains(r, top_n=0).chains)
        check = trace_calls_check(r)
    n = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True).execute(
        "SELECT COUNT(*) FROM events WHERE source IN (1, 4)").fetchone()[0]
    assert (check.status, check.value) == (("PASS", f"{n} calls, none failed") if n else
                                           ("INFO", "no CUDA runtime or driver call recorded"))


@pytest.fixture()
def failing(tmp_path) -> Path:
    """A copy of upstream's DataLoader database (316 stored chains) where 4 of its 41 cuLaunchKernel calls
    returned CUDA_ERROR_NO_DEVICE (100) and 2 of its cudaMalloc calls cudaErrorMemoryAllocation (2)."""
    db = tmp_path / "failing.db"
    shutil.copy(DATALOADER, db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE events SET ret_code = 100 WHERE id IN (SELECT id FROM events WHERE source = 4 "
                     "AND op = 1 ORDER BY timestamp LIMIT 4)")
        conn.execute("UPDATE events SET ret_code = 2 WHERE id IN (SELECT id FROM events WHERE source = 1 "
                     "AND op = 1 ORDER BY timestamp LIMIT 2)")
    conn.close()
    return db


def _direct(db: Path, q: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(q).fetchall()
    finally:
        conn.close()


def test_failures_are_findings_on_both_chain_paths(failing):
    (driver,), = _direct(failing, "SELECT COUNT(*) FROM events WHERE source = 4")
    (runtime,), = _direct(failing, "SELECT COUNT(*) FROM events WHERE source = 1")
    want = {f"4 of {driver} CUDA driver calls returned CUDA_ERROR_NO_DEVICE (100): no CUDA-capable device is "
            "visible to this process",
            f"2 of {runtime} CUDA runtime calls returned cudaErrorMemoryAllocation (2): the process ran out of "
            "GPU (or pinned host) memory"}
    with TraceReader.open(failing) as r:
        stored = causal_chains(r, top_n=0)
        assert stored.path == "stored"
        replayed, _ = replay_chains(r)
        launch = trace_stats(r).op("cuLaunchKernel")
        check = trace_calls_check(r)
    for chains in (stored.chains, replayed):
        got = {c.summary for c in chains if c.id.startswith("cuda-error")}
        assert got == want
        assert all(c.severity == "HIGH" for c in chains if c.id.startswith("cuda-error"))
    # upstream's 8 deduplicated stored chains are all still there, after the findings of the same severity
    assert len(stored.chains) == 8 + 2
    assert [(e.code, e.error, e.count) for e in launch.errors] == [(100, "CUDA_ERROR_NO_DEVICE", 4)]
    assert check.status == "FAIL" and all(f"HIGH: {w}" in check.value for w in want)


def test_cli_stats_and_explain_report_failures(failing):
    ingero = str(Path(sys.executable).parent / "ingero")
    stats = subprocess.run([ingero, "stats", "--db", str(failing)], capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    line = next(ln for ln in stats.stdout.splitlines() if ln.startswith("cuLaunchKernel "))
    assert line.rstrip().endswith("4 CUDA_ERROR_NO_DEVICE (100)")
    (driver,), = _direct(failing, "SELECT COUNT(*) FROM events WHERE source = 4")
    assert f"HIGH: 4 of {driver} CUDA driver calls returned CUDA_ERROR_NO_DEVICE (100)" in stats.stdout
    for extra in ([], ["--chains"]):
        out = subprocess.run([ingero, "explain", "--db", str(failing), *extra], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"[HIGH] 4 of {driver} CUDA driver calls returned CUDA_ERROR_NO_DEVICE (100)" in out.stdout, extra


@settings(max_examples=300, deadline=None)
@given(source=st.sampled_from(sorted(UNKNOWN_OP_FORMATS)), op=st.integers(0, 255))
def test_every_op_name_stats_prints_resolves_back(source, op):
    name = op_name(source, op)  # a name, or host_op(9), unknown(13)... for codes without one
    with TraceReader.open(DATALOADER) as r:
        assert resolve_any_op(r, name) == (source, op), name


def test_every_known_op_name_resolves():
    with TraceReader.open(DATALOADER) as r:
        assert all(resolve_any_op(r, name) == code for code, name in OP_NAMES.items())


def test_source_names_and_bad_names():
    assert [resolve_source(x) for x in ("HOST", "host", "3", 3, "", 0, "cuda_graph", "Probe")] == [
        3, 3, 3, 3, 0, 0, 8, 100]
    with pytest.raises(IngeroError) as e:
        resolve_source("hots")
    assert "did you mean 'host'" in str(e.value.hint) and set(SOURCE_NAMES.values()) == set(
        e.value.message.split(": use a code or one of ")[1].split(", "))


@pytest.fixture()
def spread(tmp_path) -> Path:
    """A copy of upstream's DataLoader database whose CUDA calls are split between two pids (every third
    to pid 2254) and fail with three codes spread over the trace, so a pid or time filter changes each count."""
    db = tmp_path / "spread.db"
    shutil.copy(DATALOADER, db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE events SET pid = 2254 WHERE source IN (1, 4) AND rowid % 3 = 0")
        conn.execute("UPDATE events SET ret_code = 100 WHERE source = 4 AND rowid % 4 = 1")
        conn.execute("UPDATE events SET ret_code = 35 WHERE source = 1 AND rowid % 5 = 2")
        conn.execute("UPDATE events SET ret_code = 2 WHERE source = 1 AND rowid % 7 = 3")
    conn.close()
    return db


def test_failure_counts_with_pid_and_time_filters_equal_direct_sql(spread):
    (first, last), = _direct(spread, "SELECT MIN(timestamp), MAX(timestamp) FROM events WHERE source IN (1, 4)")
    (t0, t1), = _direct(spread, "SELECT MIN(timestamp), MAX(timestamp) FROM events")
    mid = (first + last) // 2
    narrow = TimeWindow(mid - (t1 - t0) // 20, mid + (t1 - t0) // 20)  # 10% of the trace: the timestamp index
    wide = TimeWindow(mid, None)                                        # a pass over the table
    with TraceReader.open(spread) as r:
        assert events_access(r, narrow) == "INDEXED BY idx_events_timestamp"
        assert events_access(r, wide) == events_access(r, ALL) == "NOT INDEXED"
        for w in (ALL, narrow, wide, TimeWindow(None, mid)):
            for pids in ((), (2233,), (2254,), (2233, 2254), (999,)):
                where = " AND ".join(["source IN (1, 4)"] + ([f"timestamp >= {w.start_ns}"] if w.start_ns else [])
                                     + ([f"timestamp <= {w.end_ns}"] if w.end_ns else [])
                                     + ([f"pid IN ({','.join(map(str, pids))})"] if pids else []))
                calls = dict(_direct(spread, f"SELECT source, COUNT(*) FROM events WHERE {where} GROUP BY 1"))
                failing = {(s, o, rc): n for s, o, rc, n in _direct(
                    spread, f"SELECT source, op, ret_code, COUNT(*) FROM events WHERE {where} AND ret_code != 0 "
                            "GROUP BY 1, 2, 3")}
                f = find_failures(r, w, pids)
                assert f.calls == calls, (w, pids)
                assert {(e.source, e.op, e.code): e.count for e in f.errors} == failing, (w, pids)
                # the finding's text, as get_causal_chains and get_check say it
                want = set()
                for (s, code) in {(s, c) for s, _, c in failing}:
                    n = sum(v for (s2, _, c2), v in failing.items() if (s2, c2) == (s, code))
                    what = "CUDA runtime calls" if s == 1 else "CUDA driver calls"
                    want.add(f"{n} of {calls[s]} {what} returned {error_label(s, code)}")
                got = {c.summary.split(":")[0] for c in failure_chains(r, w, pids)}
                assert got == want, (w, pids)
                if pids == () and w == ALL:
                    assert len(want) == 3 and trace_calls_check(r).status == "FAIL"


def test_failure_queries_never_look_up_every_call_through_an_index(spread, monkeypatch):
    """The plans (EXPLAIN QUERY PLAN) of the failure counts: the whole trace counts calls from the covering
    source index and scans once for failing calls; a pid filter scans; a narrow window uses the timestamp
    index. (Searching the source or pid index and reading each row it names cost 0.45 s on 1M events.)"""
    (t0, t1), = _direct(spread, "SELECT MIN(timestamp), MAX(timestamp) FROM events")
    mid = (t0 + t1) // 2
    with TraceReader.open(spread) as r:
        seen: list[str] = []
        real = r.query

        def query(sql, params=()):
            seen.append(" | ".join(row[3] for row in r.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)))
            return real(sql, params)

        monkeypatch.setattr(r, "query", query)
        for w, pids, plans in ((ALL, (), ["COVERING INDEX idx_events_source_op_stack", "SCAN events"]),
                               (ALL, (2233,), ["SCAN events", "SCAN events"]),
                               (TimeWindow(mid, mid + (t1 - t0) // 20), (2233,),
                                ["USING INDEX idx_events_timestamp"] * 2)):
            seen.clear()
            find_failures(r, w, pids)
            assert len(seen) == len(plans), seen
            for want, plan in zip(plans, seen, strict=True):
                assert want in plan and "idx_events_pid" not in plan, seen
                assert "COVERING" in want or "idx_events_source_op_stack" not in plan, seen
