"""The read-only reader: how each kind of file is opened, and that nothing beside it ever changes."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from ingero.errors import IngeroError, NotFound
from ingero.store import TraceReader
from ingero.store.schema import DDL, op_name, resolve_op
from tests.replay_helpers import DATALOADER, DB_DIR, DBS, folder_fingerprint


@pytest.fixture(autouse=True)
def _dbs_unchanged():
    before = folder_fingerprint()
    yield
    assert folder_fingerprint() == before


@pytest.mark.parametrize("db", DBS, ids=[d.stem for d in DBS])
def test_upstream_dbs_open_immutable(db):
    with TraceReader.open(db) as r:
        assert r.mode.kind == "immutable" and r.mode.opened == db
        assert r.count("events") in (200, 600, 3807)
        assert r.has_column("events", "stack_hash") and not r.has_column("events", "comm")
        assert r.time_bounds[0] < r.time_bounds[1]
        with pytest.raises(sqlite3.OperationalError):
            r.conn.execute("DELETE FROM events")


def test_versions_are_told_apart():
    with TraceReader.open(DATALOADER) as r:
        assert r.schema_version == "0.8" and not r.has_column("events", "node")
        assert not r.has_column("causal_chains", "node")
        assert r.conn.execute("SELECT typeof(id) FROM events LIMIT 1").fetchone()[0] == "integer"
    with TraceReader.open(DB_DIR / "sample-cluster.db") as r:
        assert r.schema_version == "0.9" and r.has_column("events", "node")
        assert r.has_column("causal_chains", "node")
        assert r.conn.execute("SELECT typeof(id) FROM events LIMIT 1").fetchone()[0] == "text"


def test_nonempty_wal_is_read_from_a_copy(tmp_path):
    """A tracer killed mid-write leaves rows only in -wal: they are read, from a copy."""
    live = tmp_path / "live"
    live.mkdir()
    w = sqlite3.connect(live / "t.db")
    w.execute("PRAGMA journal_mode=WAL")
    w.execute("PRAGMA wal_autocheckpoint=0")
    w.executescript(DDL)
    w.execute("INSERT INTO events (id, timestamp, pid, tid, source, op, duration) "
              "VALUES ('n:1', 1, 1, 1, 1, 5, 9)")
    w.commit()
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(live / "t.db", killed / "t.db")
    shutil.copy(live / "t.db-wal", killed / "t.db-wal")
    w.close()
    assert (killed / "t.db-wal").stat().st_size > 0
    before = folder_fingerprint(killed)
    with TraceReader.open(killed / "t.db") as r:
        assert r.mode.kind == "wal-copy" and r.mode.opened.parent != killed
        assert r.count("events") == 1
        tmp = r.mode.opened.parent
    assert not tmp.exists()
    assert folder_fingerprint(killed) == before


def test_empty_wal_opens_immutable(tmp_path):
    shutil.copy(DATALOADER, tmp_path / "d.db")
    (tmp_path / "d.db-wal").write_bytes(b"")
    with TraceReader.open(tmp_path / "d.db") as r:
        assert r.mode.kind == "immutable" and r.count("events") == 3807
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.db", "d.db-wal"]


def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(DATALOADER, folder / "d.db")
    os.chmod(folder / "d.db", 0o444)
    os.chmod(folder, 0o555)
    try:
        with TraceReader.open(folder / "d.db") as r:
            assert r.count("causal_chains") == 316
            c = r.connect()
            assert c.execute("SELECT COUNT(*) FROM stack_traces").fetchone()[0] == 21
            c.close()
        assert [p.name for p in folder.iterdir()] == ["d.db"]
    finally:
        os.chmod(folder, 0o755)


def test_live_mode_uses_mode_ro(tmp_path):
    shutil.copy(DATALOADER, tmp_path / "d.db")
    with TraceReader.open(tmp_path / "d.db", live=True) as r:
        assert r.mode.kind == "live" and r.count("events") == 3807


def test_errors_are_user_errors(tmp_path):
    with pytest.raises(NotFound, match="no database at"):
        TraceReader.open(tmp_path / "missing.db")
    (tmp_path / "x.db").write_text("not sqlite at all, just text....")
    with pytest.raises(IngeroError, match="not an SQLite database"):
        TraceReader.open(tmp_path / "x.db")
    with pytest.raises(IngeroError, match="not a file"):
        TraceReader.open(tmp_path)


def test_op_names_and_aliases():
    assert op_name(1, 5) == "cudaStreamSync" and op_name(3, 99) == "host_op(99)" and op_name(42, 1) == "op(1)"
    assert resolve_op("CUDASTREAMSYNC") == (1, 5) == resolve_op("cudaStreamSynchronize")
    assert resolve_op("cuMemAlloc_v2") == (4, 5)
    with pytest.raises(IngeroError) as e:
        resolve_op("cudaMallok")
    assert "did you mean 'cudaMalloc'" in str(e.value)


def test_tables_listing_matches_sqlite_master():
    with TraceReader.open(DATALOADER) as r:
        assert set(r.tables) == {"causal_chains", "cgroup_metadata", "cgroup_schedstat", "event_aggregates",
                                 "events", "ops", "process_names", "schema_info", "sessions", "sources",
                                 "stack_traces", "system_snapshots"}
        assert r.op_descriptions["cudaMalloc"] == "GPU memory allocation"
