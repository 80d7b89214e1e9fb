"""Run an untrusted SQL query read-only and bounded (the engine of ``run_sql`` and ``ingero query``).

The guard does not rely on keyword filtering. It stacks engine-level checks:

1. the connection itself is read-only (``mode=ro&immutable=1`` or a temp copy) with
   ``PRAGMA query_only = 1`` and extension loading off;
2. an SQLite **authorizer** (``set_authorizer``) that SQLite consults while compiling the statement: only
   SELECT, reading columns, recursive CTEs, functions of an allow-list and a few introspection pragmas
   pass; every write, DDL, ATTACH/DETACH (and so ``VACUUM INTO``), transaction and other pragma is
   refused with its reason;
3. one statement only (the sqlite3 module refuses a second one);
4. limits: a time limit through a progress handler (a runaway recursive CTE is interrupted), a row
   limit with ``fetchmany``, a size limit on the output, and SQLite's own per-value length limit.

The progress handler never runs inside one SQL function call (``instr()`` over two megabyte strings):
:mod:`ingero.store.sqlworker` runs each query in a child process killed at the deadline, the hard limit.

Each refusal raises :class:`SqlRefused` with a message that says what was refused and what to do.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from ingero.errors import IngeroError

DEFAULT_ROWS = 1000
MAX_ROWS = 10_000
DEFAULT_TIMEOUT_S = 30.0
MAX_OUTPUT_BYTES = 1 << 20
MAX_VALUE_BYTES = 1 << 20
MAX_SQL_CHARS = 100_000
MAX_HEAP_BYTES = 512 << 20

#: SQL functions a query may call: core scalar, aggregate, window, date, math and JSON functions.
#: Left out on purpose: load_extension, zeroblob/randomblob (memory bombs), fts3_tokenizer, and anything
#: an extension might register.
ALLOWED_FUNCTIONS = frozenset("""
abs avg changes char coalesce concat concat_ws count date datetime format glob group_concat hex ifnull
iif instr julianday last_insert_rowid length like likelihood likely lower ltrim max min nullif octet_length
printf quote random replace round rtrim sign soundex sqlite_version strftime string_agg substr substring
sum time total total_changes trim typeof unhex unicode unixepoch unlikely upper
row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10 log2 mod pi
pow power radians sin sinh sqrt tan tanh trunc
json json_array json_array_length json_extract json_insert json_object json_patch json_quote json_remove
json_replace json_set json_type json_valid json_group_array json_group_object json_each json_tree
->  ->>
""".split())

#: pragmas that only describe the schema (and take no value to set): allowed as statements and as
#: ``pragma_*`` table-valued functions.
ALLOWED_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "function_list", "collation_list",
})
#: pragmas that may be read but never set
READ_ONLY_PRAGMAS = frozenset({"user_version", "schema_version", "page_count", "page_size",
                               "journal_mode", "encoding", "freelist_count", "application_id"})

_A = sqlite3
_WRITE_ACTIONS = {
    _A.SQLITE_INSERT: "INSERT", _A.SQLITE_UPDATE: "UPDATE", _A.SQLITE_DELETE: "DELETE",
    _A.SQLITE_ALTER_TABLE: "ALTER TABLE", _A.SQLITE_REINDEX: "REINDEX", _A.SQLITE_ANALYZE: "ANALYZE",
    _A.SQLITE_CREATE_INDEX: "CREATE INDEX", _A.SQLITE_CREATE_TABLE: "CREATE TABLE",
    _A.SQLITE_CREATE_TEMP_INDEX: "CREATE INDEX", _A.SQLITE_CREATE_TEMP_TABLE: "CREATE TABLE",
    _A.SQLITE_CREATE_TEMP_TRIGGER: "CREATE TRIGGER", _A.SQLITE_CREATE_TEMP_VIEW: "CREATE VIEW",
    _A.SQLITE_CREATE_TRIGGER: "CREATE TRIGGER", _A.SQLITE_CREATE_VIEW: "CREATE VIEW",
    _A.SQLITE_CREATE_VTABLE: "CREATE VIRTUAL TABLE", _A.SQLITE_DROP_INDEX: "DROP INDEX",
    _A.SQLITE_DROP_TABLE: "DROP TABLE", _A.SQLITE_DROP_TEMP_INDEX: "DROP INDEX",
    _A.SQLITE_DROP_TEMP_TABLE: "DROP TABLE", _A.SQLITE_DROP_TEMP_TRIGGER: "DROP TRIGGER",
    _A.SQLITE_DROP_TEMP_VIEW: "DROP VIEW", _A.SQLITE_DROP_TRIGGER: "DROP TRIGGER",
    _A.SQLITE_DROP_VIEW: "DROP VIEW", _A.SQLITE_DROP_VTABLE: "DROP VIRTUAL TABLE",
}


class SqlRefused(IngeroError):
    """The query was refused or stopped by the guard (the message says why)."""


class SqlFailed(IngeroError):
    """SQLite itself rejected the query (syntax error, unknown column...)."""


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]
    truncated: bool
    duration_ms: int


class _Authorizer:
    """The authorizer callback; remembers why it refused, for the error message."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.select_seen = False

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                 trigger: str | None) -> int:
        if action == _A.SQLITE_SELECT:
            self.select_seen = True
        if action in (_A.SQLITE_SELECT, _A.SQLITE_READ, _A.SQLITE_RECURSIVE):
            return _A.SQLITE_OK
        if action == _A.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            if name in ALLOWED_FUNCTIONS:
                return _A.SQLITE_OK
            return self._deny(f"function {arg2}() is not allowed in run_sql")
        if action == _A.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in ALLOWED_PRAGMAS:
                return _A.SQLITE_OK
            if name in READ_ONLY_PRAGMAS and arg2 is None:
                return _A.SQLITE_OK
            what = f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else "")
            return self._deny(f"{what} is not allowed: only schema-describing pragmas are "
                              f"({', '.join(sorted(ALLOWED_PRAGMAS))})")
        if action == _A.SQLITE_UPDATE and arg1 in ("sqlite_master", "sqlite_temp_master") \
                and self.reason is None and self.select_seen:
            # SQLite reads the schema this way while preparing a pragma_* table-valued function; the
            # connection is read-only and query_only, so no update of the schema can happen anyway.
            return _A.SQLITE_OK
        if action in (_A.SQLITE_ATTACH, _A.SQLITE_DETACH):
            return self._deny("ATTACH, DETACH and VACUUM are not allowed: run_sql reads only the open "
                              "database")
        if action in (_A.SQLITE_TRANSACTION, _A.SQLITE_SAVEPOINT):
            return self._deny("transactions (BEGIN/COMMIT/SAVEPOINT) are not allowed: run_sql is read-only")
        if action in _WRITE_ACTIONS:
            if arg1 in ("sqlite_master", "sqlite_temp_master"):
                # CREATE/DROP first write the schema table, and SQLite stops at the first refusal
                return self._deny("schema changes (CREATE, DROP, ALTER) are not allowed: run_sql is "
                                  "read-only (SELECT, WITH and EXPLAIN only)")
            target = f" on {arg1}" if arg1 else ""
            return self._deny(f"{_WRITE_ACTIONS[action]}{target} is not allowed: run_sql is read-only "
                              "(SELECT, WITH and EXPLAIN only)")
        return self._deny(f"this statement is not allowed (authorizer action {action}): run_sql is "
                          "read-only (SELECT, WITH and EXPLAIN only)")

    def _deny(self, reason: str) -> int:
        if self.reason is None:
            self.reason = reason
        return _A.SQLITE_DENY


def guard_connection(conn: sqlite3.Connection) -> None:
    """Make ``conn`` as safe as the guard can before any query (called once per connection)."""
    from ingero.store.schema import shadow_old_probe_views

    conn.execute("PRAGMA temp_store = MEMORY")  # (changing it later would drop the temp views made next)
    shadow_old_probe_views(conn)  # comm filled in the probe views of older databases (this connection only)
    conn.execute("PRAGMA query_only = 1")
    try:
        conn.enable_load_extension(False)
    except AttributeError:  # Python built without extension support: nothing to turn off
        pass
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_CHARS)
    # memory and disk: sorts and temp b-trees stay in memory (no spill files that could fill a disk), and
    # SQLite's heap is capped (process-wide; lowered only, never raised), so a sort or DISTINCT bomb
    # fails with "out of memory" instead of exhausting the machine.
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA hard_heap_limit = {MAX_HEAP_BYTES}")


def run_guarded(conn: sqlite3.Connection, sql: str, *, limit: int = DEFAULT_ROWS,
                timeout_s: float = DEFAULT_TIMEOUT_S, max_bytes: int = MAX_OUTPUT_BYTES,
                stated_timeout_s: float | None = None) -> QueryResult:
    """Run one read-only statement on a connection prepared by :func:`guard_connection`.

    ``limit`` <= 0 means the default (1000); above 10000 it is capped (upstream's rules). ``stated_timeout_s``:
    the limit a refusal names when ``timeout_s`` is what is left of it (a worker process started late). Raises
    :class:`SqlRefused` for anything the guard stops and :class:`SqlFailed` for SQLite errors.
    """
    limit = DEFAULT_ROWS if limit <= 0 else min(limit, MAX_ROWS)
    if not sql or not sql.strip():
        raise SqlRefused("empty query", "give one SELECT, WITH or EXPLAIN statement")
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused(f"query too long ({len(sql)} characters, max {MAX_SQL_CHARS})")
    if "\x00" in sql:
        raise SqlRefused("query contains a NUL character")
    auth = _Authorizer()
    deadline = time.monotonic() + timeout_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1
        return 0

    start = time.monotonic()
    conn.set_authorizer(auth)
    conn.set_progress_handler(progress, 10_000)
    size = 0
    try:
        try:
            cur = conn.execute(sql)
        except sqlite3.ProgrammingError as e:
            if "one statement" in str(e):
                raise SqlRefused("only one statement per query is allowed",
                                 "send each statement in its own run_sql call") from None
            raise SqlFailed(f"SQL error: {e}") from None
        except sqlite3.Warning as e:
            raise SqlRefused("only one statement per query is allowed",
                             "send each statement in its own run_sql call") from e
        columns = tuple(d[0] for d in (cur.description or ()))
        rows: list[tuple] = []
        truncated = False
        while True:
            batch = cur.fetchmany(min(256, limit + 1 - len(rows)))
            if not batch:
                break
            for r in batch:
                size += sum(_cell_size(v) for v in r) + 2
            rows.extend(batch)
            if size > max_bytes:
                raise SqlRefused(f"SQL response too large (over {max_bytes} bytes)",
                                 "add LIMIT, select fewer columns or aggregate")
            if len(rows) > limit:
                rows = rows[:limit]
                truncated = True
                break
        cur.close()
    except MemoryError:
        raise SqlRefused(f"query needs more than the {MAX_HEAP_BYTES >> 20} MiB memory limit",
                         "add LIMIT, filter first, or aggregate") from None
    except sqlite3.DatabaseError as e:
        if timed_out:
            raise time_limit_refusal(stated_timeout_s or timeout_s) from None
        if auth.reason:
            raise SqlRefused(auth.reason) from None
        msg = str(e)
        if "ambiguous column name" in msg:
            raise SqlFailed(f"SQL error: {msg}", "qualify column names with table aliases (e.g. e.pid, "
                            "pn.pid) when joining tables that share column names") from None
        if "out of memory" in msg:
            raise SqlRefused(f"query needs more than the {MAX_HEAP_BYTES >> 20} MiB memory limit",
                             "add LIMIT, filter first, or aggregate") from None
        if "string or blob too big" in msg:
            raise SqlRefused(f"a value in the result exceeds {MAX_VALUE_BYTES} bytes",
                             "select smaller values") from None
        if "readonly" in msg or "read-only" in msg:
            raise SqlRefused(f"refused by the read-only connection: {msg}") from None
        raise SqlFailed(f"SQL error: {msg}") from None
    finally:
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
        if conn.in_transaction:
            conn.rollback()
    return QueryResult(columns, tuple(rows), truncated, int((time.monotonic() - start) * 1000))


def time_limit_refusal(timeout_s: float) -> SqlRefused:
    """The refusal of a query stopped at its time limit (by the progress handler or by killing its process)."""
    return SqlRefused(
        f"query stopped after the {timeout_s:g} s time limit",
        "add LIMIT, filter events by timestamp/source/op first, or query event_aggregates or stack_traces; a "
        "recursive CTE needs a terminating WHERE; string functions over huge generated strings never finish")


def _cell_size(v: object) -> int:
    if v is None:
        return 4
    if isinstance(v, (str, bytes)):
        return len(v) + 2
    return 8
