"""Analysis over real upstream databases and synthetic ones: stats, chains, stacks, windows, demos."""

from __future__ import annotations

import math
import shutil
import sqlite3

import pytest

from ingero.analysis import TimeWindow, causal_chains, durations, make_window, top_stacks, trace_stats
from ingero.analysis.chains import CausalChain, dedup_stored, replay_chains
from ingero.analysis.demo import SCENARIOS, find_scenario, generate, run_scenario, scenario_db
from ingero.analysis.stacks import parse_frames, render_frame
from ingero.analysis.stats import nearest_rank
from ingero.analysis.window import events_access, go_duration, parse_duration_ns, parse_time
from ingero.errors import IngeroError
from ingero.host import format_checks, run_all_checks
from ingero.store import TraceReader
from tests.replay_helpers import DATALOADER, DB_DIR, DBS


def _sql(db, q, p=()):
    c = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        return c.execute(q, p).fetchall()
    finally:
        c.close()


@pytest.mark.parametrize("db", DBS, ids=[d.stem for d in DBS])
def test_stats_match_direct_sql_on_every_db(db):
    with TraceReader.open(db) as r:
        st = trace_stats(r)
    groups = _sql(db, "SELECT source, op, COUNT(*), MIN(duration), MAX(duration), SUM(duration) FROM events "
                      "GROUP BY 1, 2")
    assert len(st.ops) == len(groups)
    for s, o, n, mn, mx, total in groups:
        x = next(x for x in st.ops if (x.source, x.op) == (s, o))
        assert (x.count, x.min_ns, x.max_ns, x.sum_ns) == (n, mn, mx, total)
        durs = sorted(d for (d,) in _sql(db, "SELECT duration FROM events WHERE source=? AND op=?", (s, o)))
        for p, got in ((0.5, x.p50_ns), (0.95, x.p95_ns), (0.99, x.p99_ns)):
            assert got == durs[math.ceil(p * n) - 1]
    assert [o.sum_ns for o in st.ops] == sorted((o.sum_ns for o in st.ops), reverse=True)


def test_nearest_rank():
    assert nearest_rank([], 0.5) == 0
    assert nearest_rank([7], 0.99) == 7
    vals = list(range(1, 101))
    assert (nearest_rank(vals, 0.5), nearest_rank(vals, 0.95), nearest_rank(vals, 0.99)) == (50, 95, 99)
    assert nearest_rank([1, 2, 3, 4], 0.5) == 2


def test_windows_are_relative_to_the_end_of_the_trace():
    with TraceReader.open(DATALOADER) as r:
        first, last = r.time_bounds
        w = make_window("30s", "", last)
        assert w == TimeWindow(last - 30 * 10**9, None)
        st = trace_stats(r, w)
        n = _sql(DATALOADER, "SELECT COUNT(*) FROM events WHERE timestamp >= ?", (last - 30 * 10**9,))[0][0]
        assert st.stored_events == n
        w2 = make_window("", "1m", last)
        assert trace_stats(r, w2).stored_events + n <= 3807
        assert make_window("0", "", last).is_open


def test_time_parsing():
    assert parse_duration_ns("1h30m") == 5400 * 10**9
    assert parse_duration_ns("250ms") == 250 * 10**6 and parse_duration_ns("2d") == 172800 * 10**9
    assert parse_duration_ns("1.5s") == 1_500_000_000 and parse_duration_ns("90us") == 90_000
    for bad in ("5 minutes", "m5", "1x", "--1s"):
        with pytest.raises(IngeroError, match="invalid duration"):
            parse_duration_ns(bad)
    assert parse_time("2026-03-20T13:56:02", None) == 1774014962 * 10**9
    assert parse_time("2026-03-20T13:56:02Z", None) == 1774014962 * 10**9
    assert parse_time("@1774014962.5", None) == 1774014962_500_000_000
    assert parse_time("1774014962000000000", None) == 1774014962000000000
    assert parse_time("5m", None) is None and parse_time("", 10) is None
    with pytest.raises(IngeroError, match="empty"):
        make_window("@20", "@10", None)


def test_go_duration():
    assert go_duration(0) == "0s" and go_duration(999) == "999ns"
    assert go_duration(93587) == "93.587µs" and go_duration(27_657_000) == "27.657ms"
    assert go_duration(12_405_034_000) == "12.405034s" and go_duration(62_500_000_000) == "1m2.5s"
    assert go_duration(3_723_000_000_000) == "1h2m3s" and go_duration(1_000_000) == "1ms"


def _chain(op, sev, ratio):
    return CausalChain(f"{op}-{sev}-{ratio}", sev, f"{op} {ratio}", "rc", "", (), (), op, ratio)


def test_dedup_stored_rules():
    chains = [_chain("a", "MEDIUM", 2.0), _chain("a", "MEDIUM", 5.0), _chain("a", "HIGH", 1.0),
              _chain("b", "LOW", 9.0), _chain("b", "HIGH", 3.0), _chain("a", "MEDIUM", 5.0)]
    out = dedup_stored(chains, 0)
    assert [(c.cuda_op, c.severity, c.tail_ratio) for c in out] == [
        ("b", "HIGH", 3.0), ("a", "HIGH", 1.0), ("a", "MEDIUM", 5.0), ("b", "LOW", 9.0)]
    assert out[2].id == "a-MEDIUM-5.0"  # the first of equal ratios wins
    assert len(dedup_stored(chains, 2)) == 2
    assert len(dedup_stored([_chain("x", "HIGH", 1.0)] * 60, 10)) == 1


def test_dataloader_stored_chains_dedup_to_8():
    with TraceReader.open(DATALOADER) as r:
        res = causal_chains(r, top_n=0)
    assert res.path == "stored" and res.considered == 316 and len(res.chains) == 8
    assert [c.severity for c in res.chains] == ["HIGH"] * 4 + ["MEDIUM"] * 4
    assert res.chains[0].cuda_op == "cudaLaunchKernel" and res.chains[0].tail_ratio == 356.6
    assert res.chains[0].timeline[-1].layer == "CUDA"


def test_cluster_chains_keep_node():
    with TraceReader.open(DB_DIR / "sample-cluster.db") as r:
        res = causal_chains(r)
    assert res.path == "stored" and {c.node for c in res.chains} >= {"gpu-node-01"}


def test_replay_recomputes_chains_from_events():
    with TraceReader.open(DATALOADER) as r:
        chains, n = replay_chains(r)
        by_pid = causal_chains(r, pids=(30581,))
    assert n == 3807
    ops = {c.cuda_op for c in chains}
    assert {"cudaLaunchKernel", "cuLaunchKernel", "cudaStreamSync"} <= ops
    launch = next(c for c in chains if c.cuda_op == "cudaLaunchKernel")
    assert launch.severity == "HIGH" and "3676 sched_switch events" in launch.root_cause
    assert launch.timeline[0].detail == "CPU 100%" and launch.timeline[-1].op == "cudaLaunchKernel"
    assert "Pin training process to dedicated cores with taskset" in launch.recommendations
    assert by_pid.path == "replay"


def test_replay_on_synthetic_incident():
    with scenario_db(find_scenario("incident")) as reader:
        chains, n = replay_chains(reader)
        assert n == 1468
        sync = next(c for c in chains if c.cuda_op == "cudaStreamSync")
        assert sync.severity == "HIGH" and sync.tail_ratio > 8
        assert sync.summary.startswith("cudaStreamSync p99=") and "850 sched_switch events" in sync.summary
        quiet = replay_chains(reader, TimeWindow(0, 1))[0]
        assert quiet == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_demo_database_is_written_by_the_store_s_writer_in_upstream_s_schema(scenario):
    """Every generated event and snapshot is a row of upstream's tables, exactly (read back by direct SQL),
    with the lookup rows and version any trace the writer writes has; the folder is gone afterwards."""
    g = generate(scenario)
    with scenario_db(scenario) as reader:
        db = reader.mode.opened
        cols = "id, timestamp, pid, tid, source, op, duration, gpu_id, arg0, arg1, ret_code, stack_hash, comm, node"
        rows = _sql(db, f"SELECT {cols} FROM events ORDER BY CAST(substr(id, 6) AS INTEGER)")
        snaps = _sql(db, "SELECT timestamp, cpu_pct, mem_pct, mem_avail, swap_mb, load_avg FROM system_snapshots "
                         "ORDER BY id")
        (version,), = _sql(db, "PRAGMA user_version")
        sources = _sql(db, "SELECT id, name FROM sources")
        (session,), = _sql(db, "SELECT command FROM sessions")
    assert rows == [(f"demo:{i}", e.timestamp, e.pid, e.tid, e.source, e.op, e.duration, 0, e.arg0, e.arg1, 0, 0, "",
                     "demo") for i, e in enumerate(g.events, 1)]
    assert snaps == [tuple(s.__dict__.values()) for s in g.snaps]
    assert version == 10 and (1, "CUDA") in sources and (3, "HOST") in sources
    assert session == f"ingero demo scenario {scenario.name}"
    assert not db.exists() and not db.parent.exists()


def test_stacks_on_dataloader():
    with TraceReader.open(DATALOADER) as r:
        top = top_stacks(r, limit=3)
        sync = top_stacks(r, op="cudaStreamSync")
        driver = top_stacks(r, source=4, limit=100)
        none = top_stacks(r, pid=1)
    assert len(top) == 3 and top[0].count >= top[1].count >= top[2].count
    assert top[0].processes == ("python3",)
    assert len(sync) == 1 and sync[0].count == 21
    assert sum(s.count for s in driver) == _sql(DATALOADER, "SELECT COUNT(*) FROM events e JOIN stack_traces "
                                                            "st ON e.stack_hash = st.hash WHERE source = 4")[0][0]
    assert none == ()


def test_frame_rendering():
    assert render_frame({"s": "cudaMalloc+0x1cb", "f": "libcudart.so.12"}) == "cudaMalloc+0x1cb at libcudart.so.12"
    assert render_frame({"i": "0x7f", "f": "a.so", "l": 12}) == "0x7f at a.so:12"
    assert render_frame({"pf": "/x/sdpa.py", "pfn": "repeat_kv", "pl": 6}) == "-> repeat_kv (/x/sdpa.py:6)"
    assert parse_frames("", '["0x1","0x2"]') == ("0x1", "0x2")
    assert parse_frames("not json", "") == ()
    assert parse_frames('["legacy"]', "") == ("legacy",)


@pytest.mark.parametrize("scenario", [s.name for s in SCENARIOS])
def test_every_scenario_runs_fast_and_shows_its_effect(scenario):
    r = run_scenario(scenario)
    assert r.events > 100 and r.stats.stored_events == r.events
    ops = {o.name: o for o in r.stats.ops}
    effect = {
        "incident": lambda: ops["cudaStreamSync"].p99_ns > 8 * ops["cudaStreamSync"].p50_ns,
        "cold-start": lambda: ops["cudaMalloc"].max_ns > 50 * ops["cudaMalloc"].p50_ns,
        "cpu-contention": lambda: any(c.cuda_op == "cudaStreamSync" for c in r.chains.chains),
        "gpu-steal": lambda: ops["cudaStreamSync"].p99_ns > 3 * ops["cudaStreamSync"].p50_ns,
        "memcpy-bottleneck": lambda: r.stats.ops[0].name == "cudaMemcpy",
        "periodic-spike": lambda: ops["cudaMalloc"].p95_ns > 40 * ops["cudaMalloc"].p50_ns,
    }[scenario]
    assert effect()


def test_scenario_lookup():
    assert find_scenario("contention").name == "gpu-steal"
    with pytest.raises(IngeroError) as e:
        find_scenario("incidnet")
    assert "did you mean 'incident'" in str(e.value)


def test_system_check_shape():
    checks = run_all_checks()
    assert [c.name for c in checks] == ["Kernel version", "BTF support", "NVIDIA driver", "GPU model",
                                        "CUDA runtime", "CUDA driver (libcuda.so)", "CUDA processes",
                                        "Privileges", "ptrace_scope"]
    text = format_checks(checks)
    assert all(line.split("]")[0] in ("[PASS", "[FAIL", "[INFO") for line in text.splitlines())


def _sql_stats(db, where: str, params: tuple) -> dict[tuple[int, int], tuple]:
    """Per op, by SQL alone: count, nearest-rank p50/p95/p99 (row ceil(p*n) of the op's sorted durations),
    min, max, sum, and the events slower than 3x p50."""
    rows = _sql(db, f"""
        WITH r AS (SELECT source, op, duration, COUNT(*) OVER (PARTITION BY source, op) AS n,
                          ROW_NUMBER() OVER (PARTITION BY source, op ORDER BY duration) AS rn FROM events {where})
        SELECT source, op, n, MAX(CASE WHEN rn = (50 * n + 99) / 100 THEN duration END),
               MAX(CASE WHEN rn = (95 * n + 99) / 100 THEN duration END),
               MAX(CASE WHEN rn = (99 * n + 99) / 100 THEN duration END), MIN(duration), MAX(duration), SUM(duration)
        FROM r GROUP BY source, op""", params)
    out = {}
    for s, o, *vals in rows:
        p50 = vals[1]
        (slow,), = _sql(db, f"SELECT COUNT(*) FROM events {where} {'AND' if where else 'WHERE'} source = ? AND "
                            "op = ? AND duration > ?", (*params, s, o, 3 * p50))
        out[(s, o)] = (*vals, slow if p50 > 0 else 0)
    return out


@pytest.mark.parametrize("path", ["filter", "group_by"])
@pytest.mark.parametrize("db", DBS, ids=[d.stem for d in DBS])
def test_stats_with_pid_and_window_equal_sql_percentiles(db, path, monkeypatch):
    """Each op's count, p50/p95/p99, min, max, sum and anomalies equal a computation in SQL alone, for the
    whole trace, the busiest pid, a window (both access paths) and both ways durations are read."""
    if path == "group_by":
        monkeypatch.setattr(durations, "FILTER_OPS", 0)
    (t0, t1), = _sql(db, "SELECT MIN(timestamp), MAX(timestamp) FROM events")
    (pid, _), = _sql(db, "SELECT pid, COUNT(*) FROM events GROUP BY pid ORDER BY 2 DESC LIMIT 1")
    mid, span = (t0 + t1) // 2, t1 - t0
    cases = [(TimeWindow(), ()), (TimeWindow(), (pid,)), (TimeWindow(t0 + span // 4, t1 - span // 4), ()),
             (TimeWindow(mid - span // 40, mid + span // 40), (pid,))]
    with TraceReader.open(db) as r:
        assert events_access(r, cases[3][0]) == "INDEXED BY idx_events_timestamp"
        for w, pids in cases:
            st = trace_stats(r, w, pids)
            conds = [c for c, on in (("timestamp >= ?", w.start_ns is not None),
                                     ("timestamp <= ?", w.end_ns is not None), ("pid = ?", bool(pids))) if on]
            params = tuple(x for x in (w.start_ns, w.end_ns, *pids) if x is not None)
            want = _sql_stats(db, f"WHERE {' AND '.join(conds)}" if conds else "", params)
            got = {(x.source, x.op): (x.count, x.p50_ns, x.p95_ns, x.p99_ns, x.min_ns, x.max_ns, x.sum_ns,
                                      x.anomalies) for x in st.ops}
            assert got == want, (w, pids)
            assert st.stored_events == sum(v[0] for v in want.values())


def test_durations_longer_than_an_sqlite_string_are_read_as_rows():
    with TraceReader.open(DATALOADER) as r:
        want = durations.op_durations(r, "", [])
        r.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 5000)  # the launch or sched_switch durations pass it
        with pytest.raises(sqlite3.DataError):
            r.conn.execute("SELECT group_concat(duration) FROM events").fetchone()
        assert durations.op_durations(r, "", []) == want
        assert want[(3, 1)] == sorted(d for (d,) in _sql(DATALOADER, "SELECT duration FROM events WHERE "
                                                                    "source = 3 AND op = 1"))


def test_durations_that_are_not_integers_are_read_as_stored(tmp_path):
    """A duration SQLite holds as a REAL (a database written by something else) is not rounded: the read
    falls back to rows and returns the stored values."""
    db = tmp_path / "real.db"
    shutil.copy(DATALOADER, db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE events SET duration = duration + 0.5 WHERE rowid % 10 = 0")
    conn.close()
    want: dict[tuple[int, int], list] = {}
    for s, o, d in _sql(db, "SELECT source, op, duration FROM events"):
        want.setdefault((s, o), []).append(d)
    assert any(isinstance(d, float) for ds in want.values() for d in ds)
    with TraceReader.open(db) as r:
        got = durations.op_durations(r, "", [])
    assert got == {k: sorted(v) for k, v in want.items()}


def _sql_context(db, w: TimeWindow, pids: tuple[int, ...]) -> dict:
    """What replay's context holds, each figure by a plain SQL query of its own."""
    win = [c for c, on in ((f"timestamp >= {w.start_ns}", w.start_ns is not None),
                           (f"timestamp <= {w.end_ns}", w.end_ns is not None)) if on]
    p = ",".join(map(str, pids))
    mine = [f"pid IN ({p})"] if pids else []
    sched = [f"(pid IN ({p}) OR arg1 IN ({p}))"] if pids else []

    def one(expr: str, *conds: str) -> int:
        (v,), = _sql(db, f"SELECT {expr} FROM events WHERE {' AND '.join([*win, *conds]) or '1'}")
        return v or 0

    out = {"sched": one("COUNT(*)", "source = 3 AND op = 1", *sched),
           "off_cpu_ns": one("SUM(duration)", "source = 3 AND op = 1", *sched),
           "alloc_count": one("COUNT(*)", "source = 3 AND op = 3", *mine),
           "alloc_bytes": one("SUM(arg0)", "source = 3 AND op = 3", *mine),
           "oom": one("COUNT(*)", "source = 3 AND op IN (4, 12)", *mine),
           "pod_restart": one("COUNT(*)", "source = 3 AND op = 10", *mine),
           "pod_eviction": one("COUNT(*)", "source = 3 AND op = 11", *mine),
           "io_count": one("COUNT(*)", "source = 5", *mine), "io_total_ns": one("SUM(duration)", "source = 5", *mine),
           "io_max_ns": one("MAX(duration)", "source = 5", *mine),
           "io_bytes": 512 * one("SUM(arg0)", "source = 5", *mine),
           "io_reads": one("COUNT(*)", "source = 5 AND op = 1", *mine),
           "io_writes": one("COUNT(*)", "source = 5 AND op = 2", *mine),
           "tcp": one("COUNT(*)", "source = 6", *mine), "net_count": one("COUNT(*)", "source = 7", *mine),
           "net_bytes": one("SUM(arg1)", "source = 7", *mine)}
    if not pids:  # whole-host summaries count only without a pid filter
        out["sched"] += one("SUM(arg0)", "source = 3 AND op = 21")
        out["off_cpu_ns"] += one("SUM(arg1)", "source = 3 AND op = 21")
        out["alloc_count"] += one("SUM(arg0)", "source = 3 AND op = 20")
        out["alloc_bytes"] += one("SUM(arg1)", "source = 3 AND op = 20")
    ops: dict[tuple[int, int], list[int]] = {}
    for s, o, d in _sql(db, f"SELECT source, op, duration FROM events WHERE "
                            f"{' AND '.join([*win, *mine, 'source IN (1, 4)'])} ORDER BY duration"):
        ops.setdefault((s, o), []).append(d)
    out["ops"] = ops
    out["n"] = one("COUNT(*)", f"(pid IN ({p}) OR (source = 3 AND op = 1 AND arg1 IN ({p})))" if pids else "1")
    return out


@pytest.mark.parametrize("path", ["filter", "group_by"])
@pytest.mark.parametrize("db", DBS, ids=[d.stem for d in DBS])
def test_replay_context_equals_direct_sql(db, path, monkeypatch):
    """Everything replay decides chains on (counts and sums per cause, each CUDA op's sorted durations, the
    events analysed) equals plain SQL, for each pid of the trace, the whole trace and windows."""
    from ingero.analysis.chains import _collect

    if path == "group_by":
        monkeypatch.setattr(durations, "FILTER_OPS", 0)
    (t0, t1), = _sql(db, "SELECT MIN(timestamp), MAX(timestamp) FROM events")
    span = t1 - t0
    pids = [(), *((p,) for (p,) in _sql(db, "SELECT DISTINCT pid FROM events ORDER BY pid")), (999_999,)]
    windows = [TimeWindow(), TimeWindow(t0 + span // 3, None), TimeWindow(t0 + span // 2 - span // 30,
                                                                          t0 + span // 2 + span // 30)]
    with TraceReader.open(db) as r:
        for w in windows:
            for ps in pids:
                ctx, n = _collect(r, w, ps)
                want = _sql_context(db, w, ps)
                got = {k: getattr(ctx, k) for k in want if k not in ("ops", "n")} | {"ops": dict(ctx.ops), "n": n}
                assert got == want, (w, ps)


def test_replay_names_python_lines_only_when_stacks_have_python_frames(tmp_path):
    """A trace without Python frames skips the per-chain stack query; one with them names the lines, with
    counts equal to direct SQL."""
    from ingero.analysis.stacks import has_python_frames
    from ingero.store.schema import op_code

    db = tmp_path / "py.db"
    shutil.copy(DATALOADER, db)
    with TraceReader.open(db) as r:
        assert not has_python_frames(r)
        assert not any(e.layer == "PYTHON" for c in replay_chains(r, pids=(2233,))[0] for e in c.timeline)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("""UPDATE stack_traces SET frames = '[{"pf":"/app/train.py","pl":' || (abs(hash) % 3 + 1)
                        || ',"pfn":"step"},' || substr(frames, 2)""")
    conn.close()
    s, o = op_code("cudaLaunchKernel")
    (calls,), = _sql(db, "SELECT COUNT(*) FROM events WHERE source = ? AND op = ? AND pid = 2233", (s, o))
    want = [f"{n} of {calls} cudaLaunchKernel calls from /app/train.py:{line} in step" for line, n in _sql(
        db, "SELECT abs(st.hash) % 3 + 1 AS line, COUNT(*) AS n FROM events e JOIN stack_traces st "
            "ON e.stack_hash = st.hash WHERE e.source = ? AND e.op = ? AND e.pid = 2233 GROUP BY line "
            "ORDER BY n DESC, line", (s, o))]
    with TraceReader.open(db) as r:
        assert has_python_frames(r)
        launch = next(c for c in replay_chains(r, pids=(2233,))[0] if c.cuda_op == "cudaLaunchKernel")
    assert [e.detail for e in launch.timeline if e.layer == "PYTHON"] == want and want
