"""``ingero export perfetto``: valid trace-event JSON that nests, counts and times like the database.

Every upstream database is exported through the library and through the real ``ingero`` console script;
a small synthetic database covers what the upstream ones lack (overlapping slices, overlapping block I/O,
dynamic probe sources, ``comm``, several nodes with equal pids, a thread's sched_switch rows).
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ingero.analysis.window import ALL, TimeWindow
from ingero.export import export_perfetto, write_perfetto
from ingero.export.perfetto import time_base_ns
from ingero.store import TraceReader
from ingero.store.schema import DDL, OP_NAMES, SOURCE_NAMES
from tests.replay_helpers import DATALOADER, DBS, folder_fingerprint

INGERO = Path(sys.executable).parent / "ingero"
#: upstream stamps host (sched_switch), block I/O and socket rows at the end of the interval, the rest at entry
END_STAMPED_SOURCES = {3, 5, 7}


# --- checks shared by every export ---------------------------------------------------------------------
def ns(us: float) -> int:
    """Microseconds as parsed by json back to the exact nanoseconds written (three decimals)."""
    return round(us * 1000)


def check_trace(doc: dict, db: Path, window: TimeWindow = ALL, pids: tuple[int, ...] = ()) -> list[dict]:
    """Assert the export of ``db`` is valid, nested and complete; return its event slices and instants."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc["displayTimeUnit"] in ("ms", "ns")
    base = doc["otherData"]["time_base_unix_ns"]
    evs = doc["traceEvents"]
    for e in evs:
        assert {"ph", "name", "pid"} <= e.keys(), e
        assert e["ph"] in ("X", "i", "M", "C"), e
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int), e
        if e["ph"] == "X":
            assert {"ts", "dur", "tid", "name"} <= e.keys(), e
            assert e["dur"] > 0 and e["ts"] >= 0 and e["name"], e
        if e["ph"] == "i":
            assert {"ts", "tid", "s"} <= e.keys() and e["ts"] >= 0, e
    rows = [e for e in evs if e["ph"] in ("X", "i") and e.get("cat") != "causal_chain"]

    # slices of one thread track nest: a stack walk per (pid, tid), in start order, longest first
    tracks: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for e in rows:
        start = ns(e["ts"])
        tracks.setdefault((e["pid"], e["tid"]), []).append((start, start + (ns(e["dur"]) if e["ph"] == "X" else 0)))
    for key, spans in tracks.items():
        stack: list[int] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]))):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], f"track {key}: [{start}, {end}] overlaps a slice ending {stack[-1]}"
            stack.append(end)

    # Perfetto keys threads by tid alone: one tid, one process
    owners: dict[int, set[int]] = {}
    for e in evs:
        if "tid" in e:
            owners.setdefault(e["tid"], set()).add(e["pid"])
    assert all(len(p) == 1 for p in owners.values()), {t: p for t, p in owners.items() if len(p) > 1}

    # every track and process is named
    named_threads = {(e["pid"], e["tid"]) for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    named_procs = {e["pid"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    assert set(tracks) <= named_threads
    assert {p for p, _ in tracks} <= named_procs

    # the same rows as the database, each once, with the database's times
    con = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    where, params = window.sql()
    clauses = [where] if where else []
    if pids:
        clauses.append(f"pid IN ({','.join('?' * len(pids))})")
        params = [*params, *pids]
    sql = "SELECT id, timestamp, duration, source, op FROM events" + (" WHERE " + " AND ".join(clauses)
                                                                        if clauses else "")
    db_rows = {str(r[0]): r[1:] for r in con.execute(sql, params)}
    ops = {(s, o): n for s, o, n in con.execute("SELECT source_id, op_id, name FROM ops")}
    sources = {s: n.lower() for s, n in con.execute("SELECT id, name FROM sources")}
    con.close()
    got_ids = Counter(str(e["args"]["event_id"]) for e in rows)
    assert all(n == 1 for n in got_ids.values()), "an event exported twice"
    if not pids:
        assert set(got_ids) == set(db_rows)
    else:   # sched_switch rows of the processes' threads come along (rule 3)
        assert set(db_rows) <= set(got_ids)
    want = Counter()
    for eid in got_ids:
        ts, dur, source, op = db_rows[eid] if eid in db_rows else _row(db, eid)
        want[(SOURCE_NAMES.get(source) or sources.get(source), ops.get((source, op)) or OP_NAMES[(source, op)])] += 1
    assert Counter((e["cat"], e["name"]) for e in rows) == want
    for e in rows:
        eid = str(e["args"]["event_id"])
        if eid not in db_rows:
            continue
        ts, dur, source, _ = db_rows[eid]
        start = ts - dur if source in END_STAMPED_SOURCES and dur > 0 else ts
        assert base + ns(e["ts"]) == start, e
        assert (ns(e["dur"]) if e["ph"] == "X" else 0) == max(dur, 0), e
    return rows


def _row(db: Path, eid: str) -> tuple:
    con = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        return con.execute("SELECT timestamp, duration, source, op FROM events WHERE CAST(id AS TEXT) = ?",
                           (eid,)).fetchone()
    finally:
        con.close()


# --- the upstream databases ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untouched():
    before = folder_fingerprint()
    yield
    assert folder_fingerprint() == before, "the upstream databases changed"


@pytest.mark.parametrize("db", DBS, ids=[p.name for p in DBS])
def test_export_upstream_db(db: Path, tmp_path: Path, untouched):
    before = folder_fingerprint()
    out = tmp_path / "trace.json"
    summary = write_perfetto(db, out)
    assert folder_fingerprint() == before
    doc = json.loads(out.read_text())
    rows = check_trace(doc, db)
    with TraceReader.open(db) as r:
        assert summary.events == len(rows) == r.count("events")
        assert summary.chains == r.count("causal_chains")
    assert summary.slices + summary.instants == summary.events
    assert sum(n for _, _, n in summary.per_op) == summary.events
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file is renamed into place"


@pytest.mark.parametrize("db", DBS, ids=[p.name for p in DBS])
def test_export_cli(db: Path, tmp_path: Path, untouched):
    before = folder_fingerprint()
    out = tmp_path / "trace.json"
    r = subprocess.run([str(INGERO), "export", "perfetto", "--db", str(db), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: ")
    assert folder_fingerprint() == before
    check_trace(json.loads(out.read_text()), db)


def test_export_window_and_pid(tmp_path: Path, untouched):
    with TraceReader.open(DATALOADER) as r:
        first, last = r.time_bounds
        base = time_base_ns(r)
        pid = r.query("SELECT pid FROM events GROUP BY pid ORDER BY COUNT(*) DESC LIMIT 1")[0][0]
        whole = io.StringIO()
        export_perfetto(r, whole)
    mid = (first + last) // 2
    out = tmp_path / "t.json"
    s = write_perfetto(DATALOADER, out, window_since=str(mid), pids=[pid])
    doc = json.loads(out.read_text())
    assert doc["otherData"]["time_base_unix_ns"] == base, "the time base does not depend on the window"
    rows = check_trace(doc, DATALOADER, TimeWindow(mid, None), (pid,))
    total = sum(e["ph"] in ("X", "i") and e.get("cat") != "causal_chain"
                for e in json.loads(whole.getvalue())["traceEvents"])
    assert 0 < s.events == len(rows) < total
    assert s.chains == 0, "chains are not per process: left out with --pid"
    r2 = subprocess.run([str(INGERO), "export", "perfetto", "--db", str(DATALOADER), "-o", str(out),
                         "--since", "5s", "--pid", str(pid), "--no-chains", "--no-counters"],
                        capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stderr
    doc = json.loads(out.read_text())
    assert not [e for e in doc["traceEvents"] if e["ph"] == "C" or e.get("cat") == "causal_chain"]
    check_trace(doc, DATALOADER, TimeWindow(last - 5 * 10**9, None), (pid,))


def test_cli_errors(tmp_path: Path, untouched):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(INGERO), "export", "perfetto", *args], capture_output=True, text=True,
                              timeout=60)

    r = run("--db", str(tmp_path / "nope.db"), "-o", str(tmp_path / "t.json"))
    assert r.returncode == 1 and r.stderr.startswith("error: no database at"), r.stderr
    r = run("--db", str(DATALOADER), "-o", str(DATALOADER))
    assert r.returncode == 1 and "error: refusing" in r.stderr and "Traceback" not in r.stderr
    copy = tmp_path / "other.db"
    copy.write_bytes(DATALOADER.read_bytes())
    r = run("--db", str(DATALOADER), "-o", str(copy))
    assert r.returncode == 1 and "refusing to overwrite the SQLite database" in r.stderr
    r = run("--db", str(DATALOADER), "-o", str(tmp_path / "missing" / "t.json"))
    assert r.returncode == 1 and r.stderr.startswith("error: no directory")
    r = run("--db", str(DATALOADER), "-o", str(tmp_path / "t.json"), "--since", "soon")
    assert r.returncode == 1 and 'invalid duration "soon"' in r.stderr
    assert not (tmp_path / "t.json").exists()


# --- a synthetic database with what the upstream ones lack ------------------------------------------------
T0 = 1_775_000_000_123_456_789
PROBE_SOURCE = 100     # ingero's dynamic probes


def make_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.executescript(DDL)
    con.executemany("INSERT INTO sources VALUES (?, ?, ?)",
                    [(1, "CUDA", ""), (3, "HOST", ""), (5, "IO", ""), (PROBE_SOURCE, "PROBE", "dynamic probes")])
    con.executemany("INSERT INTO ops VALUES (?, ?, ?, ?)",
                    [(1, 3, "cudaLaunchKernel", ""), (1, 5, "cudaStreamSync", ""), (3, 1, "sched_switch", ""),
                     (3, 6, "process_exit", ""), (5, 2, "block_write", ""),
                     (PROBE_SOURCE, 1, "big_copies", ""), (PROBE_SOURCE, 2, "gemms", "")])
    con.executemany("INSERT INTO process_names VALUES (?, ?, 0)", [(100, "trainer")])
    rows = [
        # id, t(ns after T0), pid, tid, source, op, duration, arg0, arg1, node, comm
        ("a:1", 1000, 100, 100, 1, 5, 4000, 7, 0, "a", "trainer"),        # cudaStreamSync [1000, 5000]
        ("a:2", 4000, 100, 100, 3, 1, 2000, 0, 55, "a", "trainer"),       # off-CPU [2000, 4000]: nests
        ("a:3", 6000, 100, 100, 1, 3, 2000, 0xDEAD, 0, "a", "trainer"),   # launch [6000, 8000]
        ("a:4", 7000, 100, 100, PROBE_SOURCE, 1, 2000, 9, 1, "a", ""),    # probe [7000, 9000]: overlaps -> lane
        ("a:5", 6100, 100, 100, PROBE_SOURCE, 2, 100, 0, 0, "a", ""),     # probe [6100, 6200]: nests
        ("a:6", 20000, 100, 101, 5, 2, 10000, 8, 1234, "a", "worker"),    # I/O [10000, 20000]
        ("a:7", 25000, 100, 101, 5, 2, 10000, 8, 4321, "a", "worker"),    # I/O [15000, 25000]: -> I/O lane
        ("a:8", 12000, 101, 101, 3, 1, 1000, 0, 100, "a", "worker"),      # thread 101's off-CPU: to pid 100
        ("a:9", 30000, 100, 100, 3, 6, 0, 0, 0, "a", "trainer"),          # exit: instant
        ("b:1", 1000, 100, 100, 1, 5, 500, 0, 0, "b", "other"),           # node b, same pid 100
    ]
    con.executemany("INSERT INTO events (id, timestamp, pid, tid, source, op, duration, arg0, arg1, node, comm) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(i, T0 + t, *rest) for i, t, *rest in rows])
    # ingero's dynamic-probe side tables (ingero.store.lookup): names in probes.fields, values by event id
    con.executescript("""
        CREATE TABLE probes (id INTEGER PRIMARY KEY, name TEXT NOT NULL, fields TEXT NOT NULL DEFAULT '[]');
        CREATE TABLE probe_values (event_id TEXT PRIMARY KEY, probe_id INTEGER NOT NULL, v0, v1, v2, v3, v4, v5, v6,
                                   v7, more TEXT);
        INSERT INTO probes VALUES (1, 'big_copies', '[{"name":"count","type":"u64","column":"v0"},
                                                     {"name":"kind","type":"i32","column":"v1"}]');
        INSERT INTO probes VALUES (2, 'gemms', '[]');
        INSERT INTO probe_values (event_id, probe_id, v0, v1) VALUES ('a:4', 1, 1048576, 2);
    """)
    con.execute("INSERT INTO causal_chains (id, detected_at, severity, summary, root_cause, explanation) "
                "VALUES ('a:tail', ?, 'HIGH', 'cudaStreamSync p99', 'cpu', '')", (T0 + 40000,))
    con.execute("INSERT INTO system_snapshots (timestamp, cpu_pct, mem_pct, mem_avail, swap_mb, load_avg) "
                "VALUES (?, 97.5, 40, 1, 0, 3.5)", (T0 + 1000,))
    con.commit()
    con.close()
    return path


def test_nesting_rule_lanes_nodes_and_probes(tmp_path: Path):
    db = make_db(tmp_path / "synthetic.db")
    out = tmp_path / "t.json"
    s = write_perfetto(db, out)
    doc = json.loads(out.read_text())
    rows = check_trace(doc, db)
    by_id = {e["args"]["event_id"]: e for e in rows}
    assert s.events == 10 and s.instants == 1 and s.moved == 2 and s.lanes == 2
    assert doc["otherData"]["time_base_unix_ns"] == T0 // 10**9 * 10**9
    # two nodes with the same pid: two processes, their tids in the node's slot too
    a, b = by_id["a:1"]["pid"], by_id["b:1"]["pid"]
    assert a != b and a % 10_000_000 == b % 10_000_000 == 100
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    procs = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert procs[a] == "trainer [100] @a" and procs[b] == "trainer [100] @b"
    # the probe slice that overlaps the launch moved, whole, to an overlap lane of the same thread
    probe = by_id["a:4"]
    assert (probe["cat"], probe["name"], ns(probe["ts"]), probe["dur"]) == ("probe", "big_copies",
                                                                             ns(by_id["a:3"]["ts"]) + 1000, 2)
    assert probe["args"] == {"arg0": 9, "arg1": 1, "fields": {"count": 1048576, "kind": 2}, "event_id": "a:4",
                             "node": "a"}
    assert probe["tid"] != 100 and names[(a, probe["tid"])] == "trainer (overlap 1)"
    assert by_id["a:5"]["tid"] == by_id["a:2"]["tid"] == a and by_id["a:5"]["args"] == {"event_id": "a:5",
                                                                                           "node": "a"}
    # block I/O on the issuing thread's companion track; the overlapping one on its lane
    io1, io2 = by_id["a:6"], by_id["a:7"]
    assert names[(a, io1["tid"])] == "worker · block I/O" and names[(a, io2["tid"])] == "worker · block I/O (overlap 1)"
    assert io1["args"] == {"sectors": 8, "bytes": 4096, "sector": 1234, "event_id": "a:6", "node": "a"}
    # thread 101's sched_switch row (pid = tid = 101) is drawn on thread 101 of process 100
    assert (by_id["a:8"]["pid"], by_id["a:8"]["tid"]) == (a, a + 1) and names[(a, a + 1)] == "worker"
    assert by_id["a:9"]["ph"] == "i"
    assert by_id["a:1"]["args"]["stream"] == "0x7" and by_id["a:3"]["args"]["func"] == "0xdead"
    chains = [e for e in doc["traceEvents"] if e.get("cat") == "causal_chain"]
    assert len(chains) == 1 and chains[0]["s"] == "g" and chains[0]["name"] == "HIGH: cudaStreamSync p99"
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert counters[0]["args"] == {"cpu %": 97.5, "mem %": 40, "load": 3.5}

    # --pid 100 keeps process 100 of both nodes and thread 101's sched_switch row
    s = write_perfetto(db, out, pids=[100])
    ids = {e["args"]["event_id"] for e in json.loads(out.read_text())["traceEvents"] if e["ph"] in "Xi"
           and "event_id" in e.get("args", {})}
    assert "a:8" in ids and len(ids) == 10 and s.chains == 0


def test_streams_large_database(tmp_path: Path):
    """100k events: the output is written as the rows come (no list of events), in a few seconds."""
    import time

    db = tmp_path / "big.db"
    con = sqlite3.connect(db)
    con.executescript(DDL)
    n = 100_000
    con.executemany("INSERT INTO events (id, timestamp, pid, tid, source, op, duration) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ((f"n:{i}", T0 + i * 1000, 7, 7 + i % 4, 1 + 2 * (i % 2), 1 + i % 3, 900 if i % 5 else 0)
                     for i in range(n)))
    con.commit()
    con.close()
    t = time.perf_counter()
    s = write_perfetto(db, tmp_path / "big.json")
    took = time.perf_counter() - t
    assert s.events == n and took < 30
    check_trace(json.loads((tmp_path / "big.json").read_text()), db)


def test_tid_seen_under_two_processes(tmp_path: Path):
    """A reused tid (or a row naming another process's thread) still gives each process its own track."""
    db = tmp_path / "reuse.db"
    con = sqlite3.connect(db)
    con.executescript(DDL)
    con.executemany("INSERT INTO events (id, timestamp, pid, tid, source, op, duration) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [("r:1", T0, 5, 5, 1, 5, 1000), ("r:2", T0 + 5000, 6, 5, 1, 5, 1000),
                     ("r:3", T0 + 9000, 6, 5, 3, 7, 0), ("r:4", T0 + 9500, 6, 0, 3, 6, 0)])
    con.commit()
    con.close()
    write_perfetto(db, tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    by_id = {e["args"]["event_id"]: e for e in check_trace(doc, db)}
    assert by_id["r:1"]["tid"] == 5 and by_id["r:2"]["tid"] == by_id["r:3"]["tid"] == 10_000_005
    assert by_id["r:4"]["pid"] == 6 and by_id["r:4"]["tid"] == 10_000_000   # tid 0 is the system process's
