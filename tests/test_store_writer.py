"""The writer: upstream's schema as the reader and the analysis see it, probes, stacks, clock, size cap."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time

import pytest

from ingero.analysis import causal_chains, top_stacks, trace_stats
from ingero.analysis.chains import CausalChain, TimelineEntry
from ingero.store import (
    EpochClock,
    Event,
    EventWriter,
    Frame,
    ProbeField,
    ProbeInfo,
    SessionInfo,
    StoreError,
    SystemSnapshot,
    TraceReader,
    guard_connection,
    run_guarded,
)
from ingero.store.clock import ktime_now
from ingero.store.lookup import USER_VERSION
from ingero.store.records import Aggregate, stack_hash_frames, stack_hash_ips
from ingero.store.schema import INGERO_OPS, OP_NAMES, SOURCE_PROBE
from tests.replay_helpers import DATALOADER

COPIES = ProbeInfo("big_copies", "probe big_copies = libcudart:cudaMemcpyAsync\n    record count, stream, latency",
                   (ProbeField("count"), ProbeField("stream", "ptr"), ProbeField("latency")), "libcudart.so.12",
                   ("cudaMemcpyAsync",))


def _writer(path, **kw) -> EventWriter:
    return EventWriter(path, node="test-node", session=SessionInfo(command="python train.py", pid_filter="4242"),
                       **kw)


def test_round_trip_through_reader_and_analysis(tmp_path):
    db = tmp_path / "t.db"
    with _writer(db) as w:
        probe = w.register_probe(COPIES)
        stack = w.add_stack([Frame(0x7F00, "cudaMemcpyAsync+0x1c", "/opt/cuda/libcudart.so.12"),
                             Frame(0x4000, py_file="train.py", py_func="step", py_line=12)])
        k = ktime_now()
        batch = [Event(k + i * 1000, 4242, 4243, 1, 5, 10_000 + i, stack_hash=stack, comm="python")
                 for i in range(20)]
        batch += [Event(k + i * 1000 + 500, 4242, 4243, SOURCE_PROBE, probe.op, 2_000 + i, arg0=1 << 20,
                        arg1=(1 << 64) - 8, comm="python", values=(1 << 20, (1 << 64) - 8, 2_000 + i))
                  for i in range(10)]
        batch.append((k, 4242, 4243, 3, 1, 50_000, 0, 0, 4243, 0, 0, "python", 0))   # a plain tuple
        assert w.add_events(batch) == 31
        w.add_snapshot(SystemSnapshot(time.time_ns(), 97.0, 40.0, 1000, 0, 3.0))
        w.add_process_names({4242: "python"})
        w.add_lost(7, "ring buffer full", probe_id=probe.probe_id)
        w.add_aggregates([Aggregate(0, 1, 5, 4242, count=30, stored=20, sum_dur=1, min_dur=1, max_dur=1)])
        w.add_aggregates([Aggregate(0, 1, 5, 4242, count=5, stored=5, sum_dur=1, min_dur=1, max_dur=2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.db"]        # -wal checkpointed away
    with TraceReader.open(db) as r:
        assert r.mode.kind == "immutable" and r.schema_version == "0.10"
        assert r.query("PRAGMA user_version")[0][0] == USER_VERSION
        assert r.has_column("events", "comm") and r.query("SELECT typeof(id) FROM events LIMIT 1") == [("text",)]
        assert r.query("SELECT MIN(id), MIN(node), MAX(node) FROM events") == [("test-node:1",) + ("test-node",) * 2]
        st = trace_stats(r)
        assert st.stored_events == 31
        assert st.op("cudaStreamSync").count == 20 and st.op("cudaStreamSync").total == 35
        probe_op = st.op("probe:big_copies")  # named from the ops table, as every analysis shows it
        assert probe_op is not None and probe_op.count == 10 and probe_op.min_ns == 2_000
        assert r.op_descriptions["big_copies"].startswith("Dynamic probe big_copies on libcudart.so.12")
        stacks = top_stacks(r, op="cudaStreamSync")
        assert stacks[0].count == 20 and stacks[0].frames[0] == "cudaMemcpyAsync+0x1c at libcudart.so.12"
        assert stacks[0].processes == ("python",)
        assert r.query("SELECT arg1 FROM events WHERE source = 100 LIMIT 1") == [(-8,)]   # u64 as int64
        conn = r.connect()
        guard_connection(conn)
        res = run_guarded(conn, f"SELECT count, stream, latency, retval FROM {probe.view} ORDER BY latency")
        assert res.rows[0] == (1 << 20, -8, 2000, 0) and len(res.rows) == 10
        res = run_guarded(conn, "SELECT name, status, end_reason, events, lost, fields FROM probes")
        (name, status, why, n, lost, fields), = res.rows
        assert (name, status, why, n, lost) == ("big_copies", "ended", "session ended", 10, 7)
        assert [f["name"] for f in json.loads(fields)] == ["count", "stream", "latency"]
        assert run_guarded(conn, "SELECT COUNT(*) FROM probe_values pv JOIN events e ON e.id = pv.event_id "
                                 "WHERE e.source = 100").rows == ((10,),)
        assert run_guarded(conn, "SELECT reason, count FROM lost_events").rows == (("ring buffer full", 7),)
        conn.close()
        (cmd, pf, stopped, started, lost, node), = r.query(
            "SELECT command, pid_filter, stopped_at, started_at, lost_events, node FROM sessions")
        assert (cmd, pf, lost, node) == ("python train.py", "4242", 7, "test-node") and stopped >= started
        assert r.query("SELECT name FROM process_names WHERE pid = 4242") == [("python",)]
        assert r.query("SELECT count, stored, max_dur FROM event_aggregates") == [(35, 25, 2)]
        names = dict(((s, o), n) for s, o, n in r.query("SELECT source_id, op_id, name FROM ops"))
        assert all(names[k] == v for k, v in OP_NAMES.items() if k in names)
        # upstream's 30 rows, ingero's own ops above upstream's codes, and the one probe of this test
        assert len(names) == 30 + len(INGERO_OPS) + 1 and {k: names[k] for k in INGERO_OPS} == {
            k: name for k, (name, _) in INGERO_OPS.items()}
        assert r.query("SELECT name FROM sources WHERE id = 100") == [("PROBE",)]


def test_schema_matches_what_the_reader_expects_without_migration(tmp_path):
    with _writer(tmp_path / "t.db"):
        pass
    with TraceReader.open(tmp_path / "t.db") as r:
        upstream = {"events", "stack_traces", "causal_chains", "system_snapshots", "sessions", "process_names",
                    "event_aggregates", "event_aggregates_5s", "cgroup_metadata", "cgroup_schedstat", "sources",
                    "ops", "schema_info", "annotations"}
        assert upstream <= set(r.tables)
        assert set(r.tables) - upstream == {"probes", "probe_values", "probe_aggregates", "lost_events"}
        assert r.tables["events"][:17] == ["id", "timestamp", "pid", "tid", "source", "op", "duration", "gpu_id",
                                           "arg0", "arg1", "ret_code", "stack_hash", "node", "rank", "local_rank",
                                           "world_size", "comm"]
        idx = {n for (n,) in r.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")}
        assert {"idx_events_timestamp", "idx_events_pid", "idx_events_source_op_stack", "idx_events_cgroup"} <= idx
        assert r.query("PRAGMA auto_vacuum") == [(2,)]
    assert (tmp_path / "t.db").read_bytes()[18:20] == b"\x02\x02"       # WAL mode in the file header
    with TraceReader.open(tmp_path / "t.db") as r:
        keys = {k for (k,) in r.query("SELECT key FROM schema_info")}
        assert {"version", "comm_note", "node_note", "stack_traces_note", "probes_note"} <= keys


def test_stacks_are_deduplicated_and_hashed_as_upstream(tmp_path):
    frames = [Frame(0x10, "cudaMalloc+0x1cb", "/usr/lib/libcudart.so.12"), Frame(0x20)]   # 2nd: garbage
    with _writer(tmp_path / "t.db") as w:
        h1 = w.add_stack(frames)
        h2 = w.add_stack([Frame(0x99, "cudaMalloc+0x1cb", "/usr/lib/libcudart.so.12"), Frame(0x20)])
        h3 = w.add_stack(ips=[0x7F0000001234, 0x7F0000005678])
        assert h1 == h2 == stack_hash_frames(frames) != 0      # ASLR-independent: symbols, not IPs
        assert h3 == stack_hash_ips([0x7F0000001234, 0x7F0000005678]) and w.add_stack() == 0
        k = ktime_now()
        w.add_events([Event(k + i, 1, 1, 1, 1, 10, stack_hash=h1 if i % 2 else h3) for i in range(100)])
        w.add_stack(frames)
        w.add_events([Event(k + 200, 1, 1, 1, 1, 10, stack_hash=h1)])
    with TraceReader.open(tmp_path / "t.db") as r:
        rows = dict((h, (ips, fr)) for h, ips, fr in r.query("SELECT hash, ips, frames FROM stack_traces"))
        assert len(rows) == 2
        assert rows[h1] == ("", '[{"s":"cudaMalloc+0x1cb","f":"libcudart.so.12"}]')
        assert rows[h3] == ('["0x7f0000001234","0x7f0000005678"]', "")
        assert r.query("SELECT COUNT(DISTINCT stack_hash) FROM events") == [(2,)]


def test_stack_hash_known_values():
    # FNV-1a-64 of nothing is the offset basis; of one zero IP, eight zero bytes
    assert stack_hash_ips([]) == 0xCBF29CE484222325 - (1 << 64)
    h = 0xCBF29CE484222325
    for _ in range(8):
        h = (h * 0x100000001B3) & ((1 << 64) - 1)
    assert stack_hash_ips([0]) == (h - (1 << 64) if h >= 1 << 63 else h)


def test_epoch_conversion(tmp_path):
    clock = EpochClock.measure()
    assert clock.uncertainty_ns < 1_000_000
    assert abs(clock.to_epoch(ktime_now()) - time.time_ns()) < 5_000_000
    with _writer(tmp_path / "t.db", clock=clock) as w:
        k = ktime_now()
        w.add_events([Event(k, 1, 1, 1, 6, 5)])
        wall = time.time_ns()
        w.add_events([Event(wall, 1, 1, 1, 6, 5)], epoch=True)
    with TraceReader.open(tmp_path / "t.db") as r:
        (t1,), (t2,) = r.query("SELECT timestamp FROM events ORDER BY id")
    assert abs(t1 - wall) < 5_000_000 and t2 == wall


def test_size_cap_prunes_the_oldest_events_and_their_side_rows(tmp_path):
    db = tmp_path / "t.db"
    cap = 1_500_000
    with _writer(db, max_db_size=cap, check_every=1) as w:
        probe = w.register_probe(COPIES)
        k = ktime_now()
        for b in range(60):
            rows = [Event(k + (b * 1000 + i) * 1000, 7, 7, SOURCE_PROBE if i % 2 else 1,
                          probe.op if i % 2 else 3, 100 + i, comm="x" * 15,
                          values=(i, b, 100 + i) if i % 2 else None) for i in range(1000)]
            w.add_events(rows)
        assert w.stats.prunes >= 1 and w.stats.pruned_events > 0
        assert w.db_bytes() <= cap
        stats = w.stats
    assert db.stat().st_size <= cap
    with TraceReader.open(db) as r:
        n = r.count("events")
        assert n == 60_000 - stats.pruned_events and n < 60_000
        newest = r.query("SELECT MAX(timestamp) FROM events")[0][0]
        assert newest - EpochClock(0).to_epoch(0) > 0
        assert r.query("SELECT MIN(arg0) FROM events") == [(0,)]
        orphans = r.query("SELECT COUNT(*) FROM probe_values WHERE event_id NOT IN (SELECT id FROM events)")
        assert orphans == [(0,)]
        assert r.count("probe_values") == r.query("SELECT COUNT(*) FROM events WHERE source = 100")[0][0]
        # the newest batch survived
        last = r.query("SELECT COUNT(*) FROM events WHERE timestamp >= (SELECT MAX(timestamp) FROM events) - "
                       "999 * 1000")[0][0]
        assert last == 1000


def test_chains_stored_as_upstream_and_read_back(tmp_path):
    chain = CausalChain("tail-high-cudaStreamSync", "HIGH",
                        "cudaStreamSync p99=93.587µs (3.4x p50) — high CPU utilization", "high CPU utilization",
                        "expl", ("Pin training process to dedicated cores with taskset",),
                        (TimelineEntry("SYSTEM", "cpu", "CPU 97%"),
                         TimelineEntry("CUDA", "cudaStreamSync", "p99=93.587µs (3.4x p50=27.657µs)", 93)),
                        "cudaStreamSync", 3.4)
    with _writer(tmp_path / "t.db") as w:
        w.record_chains([chain])
        w.record_chains([chain])                                  # INSERT OR REPLACE by id
    with TraceReader.open(tmp_path / "t.db") as r:
        row = r.query("SELECT id, cuda_op, cuda_p99_us, cuda_p50_us, tail_ratio, node, timeline, recommendations "
                      "FROM causal_chains")
        assert row == [("test-node:tail-high-cudaStreamSync", "cudaStreamSync", 93, 27, 3.4, "test-node",
                        '[{"layer":"SYSTEM","op":"cpu","detail":"CPU 97%"},{"layer":"CUDA","op":"cudaStreamSync",'
                        '"detail":"p99=93.587µs (3.4x p50=27.657µs)","dur_us":93}]',
                        '["Pin training process to dedicated cores with taskset"]')]
        res = causal_chains(r)
        assert res.path == "stored" and res.chains[0].severity == "HIGH" and res.chains[0].timeline[-1].dur_us == 93


def test_background_thread_writes_while_main_thread_adds(tmp_path):
    with _writer(tmp_path / "t.db") as w:
        probe = w.register_probe(COPIES)
        k = ktime_now()

        def ring_buffer_thread():
            for b in range(20):
                w.add_events([Event(k + b * 100 + i, 1, 1, SOURCE_PROBE, probe.op, 5, values=(i, 0, 5))
                              for i in range(100)])

        t = threading.Thread(target=ring_buffer_thread)
        t.start()
        for i in range(20):
            w.add_snapshot(SystemSnapshot(time.time_ns() + i, 10.0, 10.0, 1, 0, 0.1))
            w.add_lost(1, "rate limit")
        t.join()
        w.end_probe(probe, "event budget reached", "expired")
    with TraceReader.open(tmp_path / "t.db") as r:
        assert r.count("events") == 2000 == r.count("probe_values")
        assert r.count("system_snapshots") == 20
        assert r.query("SELECT status, end_reason, events FROM probes") == [("expired", "event budget reached", 2000)]
        assert r.query("SELECT SUM(count) FROM lost_events") == [(20,)]


def test_reopen_appends_with_fresh_ids_and_a_new_session(tmp_path):
    db = tmp_path / "t.db"
    for _ in range(2):
        with _writer(db) as w:
            p = w.register_probe(COPIES)
            w.add_events([Event(ktime_now(), 1, 1, SOURCE_PROBE, p.op, 5, values=(1, 2, 5)) for _ in range(3)])
    with TraceReader.open(db) as r:
        assert r.count("events") == 6 and r.count("sessions") == 2
        assert r.query("SELECT MAX(id) FROM events") == [("test-node:6",)]
        assert r.query("SELECT id, view FROM probes") == [(1, "probe_big_copies"), (2, "probe_big_copies_2")]
        assert r.query("SELECT COUNT(*) FROM probe_big_copies_2") == [(3,)]


def test_deferred_indexes_are_built_at_close(tmp_path):
    with _writer(tmp_path / "t.db", defer_indexes=True) as w:
        names = {n for (n,) in w.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "idx_events_source_op_stack" not in names and "idx_events_timestamp" not in names
        w.add_events([Event(ktime_now(), 1, 1, 1, 1, 5)])
    with TraceReader.open(tmp_path / "t.db") as r:
        names = {n for (n,) in r.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"idx_events_source_op_stack", "idx_events_pid", "idx_events_timestamp"} <= names


def test_refuses_foreign_and_newer_files(tmp_path):
    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE notes (x)")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="not a trace database"):
        _writer(other)
    newer = tmp_path / "newer.db"
    c = sqlite3.connect(newer)
    c.execute("PRAGMA user_version = 99")
    c.execute("CREATE TABLE events (id TEXT)")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="newer Ingero"):
        _writer(newer)
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot create"):
        _writer(tmp_path / "file" / "x.db")
    old = tmp_path / "v08.db"
    shutil.copy(DATALOADER, old)
    with pytest.raises(StoreError, match="older Ingero schema"):
        _writer(old)
    assert old.read_bytes() == DATALOADER.read_bytes()             # never migrated
    w = _writer(tmp_path / "ok.db")
    w.close()
    with pytest.raises(StoreError, match="closed"):
        w.add_events([Event(1, 1, 1, 1, 1, 1)])
    w.close()                                                      # idempotent


def test_probe_values_need_a_registered_probe(tmp_path):
    with _writer(tmp_path / "t.db") as w:
        with pytest.raises(StoreError, match="not a registered probe"):
            w.add_events([Event(1, 1, 1, SOURCE_PROBE, 99, 1, values=(1,))])
        many = ProbeInfo("wide", fields=tuple(ProbeField(f"a{i}") for i in range(10)))
        p = w.register_probe(many)
        w.add_events([Event(ktime_now(), 1, 1, SOURCE_PROBE, p.op, 1, values=tuple(range(10)))])
        assert w.conn.execute(f"SELECT a0, a7, a8, a9 FROM {p.view}").fetchall() == [(0, 7, 8, 9)]
        odd = w.register_probe(ProbeInfo("odd", fields=(ProbeField("stack", "stack"), ProbeField("ptr"))))
        w.add_events([Event(ktime_now(), 1, 1, SOURCE_PROBE, odd.op, 1, values=(("f <a>", "g"), (1 << 64) - 1))])
        assert w.conn.execute(f"SELECT stack, ptr FROM {odd.view}").fetchall() == [('["f \\u003ca\\u003e","g"]', -1)]


def test_an_entry_only_probe_view_shows_latency_and_retval_as_absent(tmp_path):
    """An entry-only probe never saw the return: its view says NULL (absent), never 0 (a fast success)."""
    allocs = ProbeInfo("allocs", "probe allocs = libcudart:cudaMalloc\n    record size", (ProbeField("size"),),
                       "libcudart.so.12", ("cudaMalloc",), at_return=False)
    db = tmp_path / "t.db"
    with _writer(db) as w:
        entry, both = w.register_probe(allocs), w.register_probe(COPIES)
        w.add_events([Event(ktime_now(), 1, 1, SOURCE_PROBE, entry.op, values=(256,))])
        w.add_events([Event(ktime_now(), 1, 1, SOURCE_PROBE, both.op, 1500, ret_code=35, values=(4096, 7, 1500))])
    with TraceReader.open(db) as r:
        assert r.query("SELECT latency, retval, size FROM probe_allocs") == [(None, None, 256)]
        assert r.query("SELECT latency, retval, count FROM probe_big_copies") == [(1500, 35, 4096)]
