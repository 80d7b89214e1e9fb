"""SQLite storage in upstream Ingero's schema: the read-only reader, the run_sql guard and the writer."""

from ingero.store.clock import EpochClock
from ingero.store.reader import OpenMode, TraceReader
from ingero.store.sqlguard import QueryResult, SqlFailed, SqlRefused, guard_connection, run_guarded
from ingero.store.writer import (
    Event,
    EventWriter,
    Frame,
    ProbeField,
    ProbeHandle,
    ProbeInfo,
    SessionInfo,
    StoreError,
    SystemSnapshot,
)

__all__ = ["EpochClock", "Event", "EventWriter", "Frame", "OpenMode", "ProbeField", "ProbeHandle", "ProbeInfo",
           "QueryResult", "SessionInfo", "SqlFailed", "SqlRefused", "StoreError", "SystemSnapshot", "TraceReader",
           "guard_connection", "run_guarded"]
