"""The writer's ingest paths a live trace uses: numbered rows, the all-standard fast path, deferred indexes
built at close (or given up within a time budget), 16 KiB pages on new files."""

from __future__ import annotations

import sqlite3

from ingero.store import EpochClock, Event, EventWriter, SessionInfo, TraceReader
from ingero.store.lookup import DEFERRABLE_INDEXES


def _writer(path, **kw) -> EventWriter:
    return EventWriter(path, node="n1", clock=EpochClock(1_000), session=SessionInfo(command="t"), **kw)


def _rows(db) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, timestamp, pid, op, arg0, arg1, comm FROM events ORDER BY rowid").fetchall()
    finally:
        conn.close()


def _indexes(db) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()


def test_numbered_rows_and_the_fast_path_number_as_add_events_does(tmp_path):
    db = tmp_path / "t.db"
    with _writer(db) as w:
        w.add_events([(10, 1, 1, 1, 4, 5, 0, 4096, 1, 0, 0, "a", 0)])  # plain 13-tuple: the fast path
        w.add_numbered(lambda first: [(first + i, 20 + i, 2, 2, 1, 7, 5, 0, -1, 2, 0, 0, "b", 0) for i in range(3)])
        w.add_events([Event(30, 3, 3, 1, 1, 5, arg0=1 << 63)])  # u64 above int64: stored as upstream
    rows = _rows(db)
    assert [r[0] for r in rows] == ["n1:1", "n1:2", "n1:3", "n1:4", "n1:5"]
    assert [r[1] for r in rows] == [1_010, 1_020, 1_021, 1_022, 1_030]  # monotonic -> epoch
    assert rows[1][4:] == (-1, 2, "b") and rows[4][4] == -(1 << 63)


def test_deferred_indexes_are_built_at_close(tmp_path):
    db = tmp_path / "d.db"
    w = _writer(db, defer_indexes=True)
    names = {n for n, _ in DEFERRABLE_INDEXES}
    assert not names & _indexes(db)
    w.add_events([(i, 1, 1, 1, 4, 5, 0, 0, 0, 0, 0, "a", 0) for i in range(1000)])
    w.close()
    assert names <= _indexes(db) and w.indexes_missing == ()
    assert sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0] == 16384


def test_a_bounded_close_leaves_a_complete_file_without_the_indexes(tmp_path):
    db = tmp_path / "b.db"
    w = _writer(db, defer_indexes=True)
    w.add_events([(i, 1, 1, 1, 4, 5, 0, 0, 0, 0, 0, "a", 0) for i in range(20_000)])
    w.close(index_budget_s=0.0)  # no time at all: the build is interrupted at once
    names = {n for n, _ in DEFERRABLE_INDEXES}
    assert set(w.indexes_missing) == names and not names & _indexes(db)
    assert len(_rows(db)) == 20_000
    r = TraceReader.open(db)
    try:
        assert r.conn.execute("SELECT COUNT(*) FROM events WHERE pid = 1").fetchone()[0] == 20_000
    finally:
        r.close()
    _writer(db).close()  # a writer appending to the file builds them
    assert names <= _indexes(db)
