"""SQLite storage in upstream Ingero's schema: the read-only reader, the run_sql guard and the writer.

The names below are imported when first used, so that ``ingero.store.schema`` (the codes and names of
sources and ops, which the shells' ``--help`` texts are made from) costs no SQLite import.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "EpochClock": "clock",
    "OpenMode": "reader", "TraceReader": "reader",
    "QueryResult": "sqlguard", "SqlFailed": "sqlguard", "SqlRefused": "sqlguard", "guard_connection": "sqlguard",
    "run_guarded": "sqlguard",
    "Event": "records", "Frame": "records", "ProbeField": "records", "ProbeHandle": "records",
    "ProbeInfo": "records", "SessionInfo": "records", "StoreError": "records", "SystemSnapshot": "records",
    "EventWriter": "writer",
}  # fmt: skip

def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ingero.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ingero.store.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_WHERE)
