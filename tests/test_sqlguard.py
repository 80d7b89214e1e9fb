"""run_sql's guard: hostile inputs are refused with a clear message, or bounded; nothing ever changes."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingero.store import SqlFailed, SqlRefused, TraceReader, guard_connection, run_guarded
from ingero.store.sqlguard import MAX_VALUE_BYTES
from ingero.store.sqlworker import SqlRunner
from tests.replay_helpers import DB_DIR

SRC = DB_DIR / "sample-gpu-node-01.db"

# (query, substring the refusal must contain)
HOSTILE: list[tuple[str, str]] = [
    ("INSERT INTO events (id, timestamp, pid, tid, source, op, duration) VALUES ('x',1,1,1,1,1,1)",
     "INSERT on events"),
    ("UPDATE events SET duration = 0", "UPDATE on events"),
    ("DELETE FROM events", "DELETE on events"),
    ("DROP TABLE events", "schema changes"),
    ("CREATE TABLE evil (x)", "schema changes"),
    ("CREATE TEMP TABLE evil (x)", "schema changes"),
    ("CREATE VIEW v AS SELECT 1", "schema changes"),
    ("CREATE INDEX i ON events(pid)", "schema changes"),
    ("CREATE TRIGGER t AFTER INSERT ON events BEGIN SELECT 1; END", "CREATE TRIGGER"),
    ("ALTER TABLE events ADD COLUMN evil TEXT", "ALTER TABLE"),
    ("ALTER TABLE events RENAME TO e2", "ALTER TABLE"),
    ("REPLACE INTO ops VALUES (1, 1, 'x', 'y')", "INSERT on ops"),
    ("INSERT OR REPLACE INTO schema_info VALUES ('version', '9')", "INSERT on schema_info"),
    ("WITH x AS (SELECT 1) DELETE FROM events", "DELETE on events"),
    ("WITH\tx AS (SELECT 1) DELETE\tFROM events", "DELETE on events"),
    ("WITH\nx AS (SELECT 1)\nINSERT\rINTO ops SELECT 9,9,'a','b'", "INSERT on ops"),
    ("WITH x AS (SELECT 1) UPDATE\fevents SET pid = 0", "UPDATE on events"),
    ("/* SELECT */ DELETE FROM events", "DELETE on events"),
    ("-- SELECT\nDROP TABLE ops", "schema changes"),
    ("ATTACH DATABASE '/tmp/ingero-evil.db' AS evil", "ATTACH"),
    ("ATTACH ':memory:' AS m", "ATTACH"),
    ("DETACH DATABASE main", "ATTACH, DETACH"),
    ("VACUUM", "VACUUM"),
    ("VACUUM INTO '/tmp/ingero-evil-copy.db'", "VACUUM"),
    ("PRAGMA query_only = 0", "PRAGMA query_only = 0"),
    ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode = DELETE"),
    ("PRAGMA writable_schema = 1", "PRAGMA writable_schema"),
    ("PRAGMA user_version = 42", "PRAGMA user_version = 42"),
    ("PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA wal_checkpoint"),
    ("PRAGMA optimize", "PRAGMA optimize"),
    ("SELECT * FROM pragma_integrity_check", "PRAGMA integrity_check"),
    ("SELECT load_extension('/tmp/evil.so')", "load_extension"),
    ("SELECT zeroblob(1000000000)", "zeroblob"),
    ("SELECT randomblob(1000000000)", "randomblob"),
    ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
    ("BEGIN", "transactions"),
    ("BEGIN IMMEDIATE", "transactions"),
    ("COMMIT", "transactions"),
    ("SAVEPOINT s1", "transactions"),
    ("ANALYZE", "ANALYZE|schema changes"),
    ("REINDEX", "REINDEX"),
    ("SELECT 1; DELETE FROM events", "one statement"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT 'a;b'; DROP TABLE ops", "one statement"),
    ("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r", "time limit"),
    ("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x FROM r) SELECT MAX(x) FROM r", "time limit"),
    ("SELECT COUNT(*) FROM events a, events b, events c, events d", "time limit"),
    ("SELECT group_concat(a.id || b.id || a.timestamp) FROM events a, events b, ops", "exceeds|large"),
    ("SELECT printf('%.*c', 900000, 'x') FROM events", "too large"),
    ("SELECT length(printf('%.*c', 3000000, 'x')) + length(zeroblob(5))", "zeroblob"),
    ("", "empty query"),
    ("   \n\t ", "empty query"),
    ("SELECT 1\x00; DROP TABLE ops", "NUL"),
]


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """A copy of a real upstream DB in a writable folder: the guard, not file permissions, must hold."""
    d = tmp_path_factory.mktemp("guard")
    shutil.copy(SRC, d / SRC.name)
    r = TraceReader.open(d / SRC.name)
    yield r
    r.close()


@pytest.fixture(scope="module")
def conn(reader):
    c = reader.connect()
    guard_connection(c)
    yield c
    c.close()


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_corpus_has_at_least_30_inputs():
    assert len(HOSTILE) >= 30


@pytest.mark.parametrize("query,expect", HOSTILE, ids=[f"{i:02d}" for i in range(len(HOSTILE))])
def test_hostile_input_refused(conn, reader, query, expect):
    before = _digest(reader.path.parent)
    t0 = time.monotonic()
    with pytest.raises(SqlRefused) as e:
        run_guarded(conn, query, timeout_s=1.0)
    assert time.monotonic() - t0 < 5
    assert re.search(expect, str(e.value), re.I), str(e.value)
    assert _digest(reader.path.parent) == before
    assert conn.execute("PRAGMA query_only").fetchone()[0] == 1
    assert not Path("/tmp/ingero-evil.db").exists() and not Path("/tmp/ingero-evil-copy.db").exists()


def test_authorizer_holds_on_a_writable_connection(tmp_path):
    """Even with query_only off and a writable file, the authorizer alone refuses writes."""
    db = tmp_path / "w.db"
    shutil.copy(SRC, db)
    c = sqlite3.connect(db)
    c.execute("PRAGMA query_only = 0")
    for q, _ in HOSTILE[:24]:
        with pytest.raises(SqlRefused):
            run_guarded(c, q, timeout_s=1.0)
    assert c.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 200
    c.close()


@pytest.mark.parametrize("query,cols", [
    ("SELECT COUNT(*) AS n FROM events", ("n",)),
    ("select * from pragma_table_info('events')", ("cid", "name", "type", "notnull", "dflt_value", "pk")),
    ("PRAGMA table_info(events)", ("cid", "name", "type", "notnull", "dflt_value", "pk")),
    ("SELECT name FROM sqlite_master WHERE type = 'table'", ("name",)),
    ("EXPLAIN QUERY PLAN SELECT * FROM events WHERE pid = 1", ("id", "parent", "notused", "detail")),
    ("WITH t AS (SELECT pid FROM events) SELECT COUNT(DISTINCT pid) AS n FROM t", ("n",)),
    ("SELECT json_extract('{\"a\": 1}', '$.a') AS a", ("a",)),
    ("  -- a comment\n SELECT 1 AS one; ", ("one",)),
    ("SELECT 'DELETE FROM events' AS s", ("s",)),
    ("PRAGMA user_version", ("user_version",)),
])
def test_reads_are_allowed(conn, query, cols):
    res = run_guarded(conn, query)
    assert res.columns == cols and res.rows


def test_row_limit_and_truncation(conn):
    res = run_guarded(conn, "SELECT * FROM events", limit=7)
    assert len(res.rows) == 7 and res.truncated
    res = run_guarded(conn, "SELECT * FROM events", limit=0)
    assert len(res.rows) == 200 and not res.truncated
    res = run_guarded(conn, "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM r LIMIT 20000) "
                            "SELECT x FROM r", limit=50_000)
    assert len(res.rows) == 10_000 and res.truncated


def test_sql_errors_are_clear(conn):
    with pytest.raises(SqlFailed, match="no such column: nope"):
        run_guarded(conn, "SELECT nope FROM events")
    with pytest.raises(SqlFailed, match="ambiguous column name: pid") as e:
        run_guarded(conn, "SELECT pid FROM events e JOIN process_names pn ON e.pid = pn.pid")
    assert "qualify" in str(e.value)


_FRAGMENTS = ["SELECT", "WITH", "RECURSIVE", "INSERT", "INTO", "DELETE", "UPDATE", "SET", "DROP", "TABLE",
              "ATTACH", "DETACH", "PRAGMA", "VACUUM", "CREATE", "ALTER", "BEGIN", "COMMIT", "FROM", "WHERE",
              "events", "ops", "sqlite_master", "stack_traces", "*", "(", ")", ",", ";", "--", "/*", "*/",
              "'", "\"", "1", "x", "=", "AS", "UNION ALL", "LIMIT", "load_extension", "zeroblob(99999999)",
              "query_only", "writable_schema", "\t", "\n", "r(x)", "x+1", "count(*)", "VALUES"]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=14).map(" ".join),
    st.text(max_size=80),
))
def test_property_nothing_changes_nothing_hangs(conn, reader, sql):
    before = _digest(reader.path.parent)
    t0 = time.monotonic()
    try:
        res = run_guarded(conn, sql, limit=100, timeout_s=0.5)
    except (SqlRefused, SqlFailed) as e:
        assert str(e)
    else:
        assert len(res.rows) <= 100
    assert time.monotonic() - t0 < 5
    assert _digest(reader.path.parent) == before
    assert conn.execute("PRAGMA query_only").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 200


def test_sort_bomb_is_bounded_by_memory_or_time(tmp_path):
    """A sort over 10^8 generated rows may neither spill to disk nor hang: memory cap or time limit."""
    import sqlite3
    import time

    from ingero.store.sqlguard import SqlRefused, guard_connection, run_guarded

    db = tmp_path / "t.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    guard_connection(conn)
    t0 = time.monotonic()
    with pytest.raises(SqlRefused) as e:
        run_guarded(conn, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000000) "
                          "SELECT x, printf('%0100d', x) FROM c ORDER BY random() LIMIT 1", timeout_s=5)
    assert "memory limit" in str(e.value) or "time limit" in str(e.value)
    assert time.monotonic() - t0 < 10


# Single SQL function calls that run for minutes: SQLite's progress handler never runs inside one, so only
# the query's process being killed at the deadline stops them.
_A = "printf('%.*c', 1000000, 'a')"
_NEEDLE = "printf('%.*c', 500000, 'a') || 'b'"
_PATTERN = "printf('%.*c', 40000, 'a') || 'b'"  # under SQLite's LIKE/GLOB pattern length limit (50,000)
CPU_BOMBS = [
    f"SELECT instr({_A}, {_NEEDLE})",
    f"SELECT {_A} LIKE '%' || {_PATTERN} || '%'",
    f"SELECT {_A} GLOB '*' || {_PATTERN} || '*'",
    f"SELECT length(replace({_A}, {_NEEDLE}, 'x'))",
    f"SELECT instr(printf('%.*c', {MAX_VALUE_BYTES - 1}, 'a'), printf('%.*c', {MAX_VALUE_BYTES // 2}, 'a') || 'b')",
]


@pytest.mark.parametrize("query", CPU_BOMBS, ids=["instr", "like", "glob", "replace", "instr-max"])
def test_single_call_cpu_bomb_ends_within_the_limit(reader, query):
    before = _digest(reader.path.parent)
    # a limit well under the shortest bomb (the instr ones: 3.4 s on an idle AMD EPYC), so a faster CPU
    # cannot finish one inside it
    runner = SqlRunner(reader.uri, timeout_s=0.5, spare=False)
    t0 = time.monotonic()
    with pytest.raises(SqlRefused, match="0.5 s time limit"):
        runner.run(query)
    assert time.monotonic() - t0 < 0.5 + 1.0
    assert _digest(reader.path.parent) == before


def test_string_sizes_are_bounded_by_sqlite(conn):
    """A generated string over the per-value limit is NULL (printf) or an error, never megabytes more."""
    res = run_guarded(conn, f"SELECT printf('%.*c', {MAX_VALUE_BYTES + 1}, 'a') IS NULL AS n")
    assert res.rows == ((1,),)
    with pytest.raises(SqlRefused, match="exceeds"):
        run_guarded(conn, f"SELECT printf('%.*c', {MAX_VALUE_BYTES // 2}, 'a') || printf('%.*c', "
                          f"{MAX_VALUE_BYTES // 2 + 1}, 'a')")


def test_runner_answers_as_the_guard_does(reader):
    runner = SqlRunner(reader.uri, timeout_s=10)
    try:
        res = runner.run("SELECT COUNT(*) AS n, x'00ff' AS b, 1.5 AS f, NULL AS z FROM events")
        assert res.columns == ("n", "b", "f", "z") and res.rows == ((200, b"\x00\xff", 1.5, None),)
        assert runner.run("SELECT * FROM events", limit=7).truncated
        with pytest.raises(SqlRefused, match="DELETE on events"):
            runner.run("DELETE FROM events")
        with pytest.raises(SqlFailed, match="no such column: nope"):
            runner.run("SELECT nope FROM events")
    finally:
        runner.close()


def test_memory_of_a_query_is_given_back(reader):
    """A query that sorts ~200 MB runs in its own process: the caller's RSS does not keep it (ground truth:
    /proc/self/status, and getrusage of the waited child for what the query used)."""
    import resource

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    runner = SqlRunner(reader.uri, timeout_s=60, spare=False)
    before = rss_kib()
    res = runner.run("SELECT COUNT(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                     "LIMIT 1500000) SELECT x, printf('%0100d', x) AS s FROM c ORDER BY s DESC)")
    assert res.rows == ((1_500_000,),)
    child_peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert child_peak_kib > 150 * 1024, child_peak_kib          # the query did use that memory...
    assert rss_kib() - before < 16 * 1024, (before, rss_kib())    # ...and none of it stayed here
