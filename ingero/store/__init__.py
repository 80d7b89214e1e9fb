"""SQLite storage in upstream Ingero's schema: the read-only reader and the run_sql guard."""

from ingero.store.reader import OpenMode, TraceReader
from ingero.store.sqlguard import QueryResult, SqlFailed, SqlRefused, guard_connection, run_guarded

__all__ = ["OpenMode", "QueryResult", "SqlFailed", "SqlRefused", "TraceReader", "guard_connection",
           "run_guarded"]
