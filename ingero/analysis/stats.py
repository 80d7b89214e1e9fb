"""Per-operation trace statistics with exact nearest-rank percentiles.

Upstream keeps only the last 1000 samples per op for its percentiles; here they are computed over every
stored event of the op in the window (``idx = ceil(p*n) - 1`` on the sorted durations). Where
``event_aggregates`` counted more events than were stored (upstream's selective storage), ``total``
carries the aggregate count beside the stored ``count``. CUDA runtime and driver calls that returned an
error are counted per op and error code (``errors``, names from the catalogue; see failures.py).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from ingero.analysis.durations import op_durations
from ingero.analysis.failures import NONE, Failures, OpErrors, calls_per_source, find_failures
from ingero.analysis.window import ALL, TimeWindow, events_access
from ingero.store.reader import TraceReader
from ingero.store.schema import SOURCE_PROBE, op_name


@dataclass(frozen=True)
class OpStats:
    source: int
    op: int
    name: str
    count: int          # stored events in the window
    total: int          # events counted by event_aggregates (0 when unknown); may exceed count
    p50_ns: int
    p95_ns: int
    p99_ns: int
    min_ns: int
    max_ns: int
    sum_ns: int
    anomalies: int = 0  # events slower than 3x p50 (upstream's anomaly threshold)
    description: str = ""
    errors: tuple[OpErrors, ...] = ()  # stored calls that returned an error, per error code, most first

    @property
    def failed(self) -> int:
        return sum(e.count for e in self.errors)

    @property
    def avg_ns(self) -> int:
        return self.sum_ns // self.count if self.count else 0


@dataclass(frozen=True)
class TraceStats:
    ops: tuple[OpStats, ...]          # sorted by total duration, descending (as upstream)
    stored_events: int
    aggregate_events: int             # SUM(count) of event_aggregates in the window, 0 if none
    span_ns: int                      # the window's length (its ends, or its first/last event where open)
    window: TimeWindow
    failures: Failures = NONE         # failing CUDA runtime/driver calls of the window

    def op(self, name: str) -> OpStats | None:
        return next((o for o in self.ops if o.name == name), None)


def nearest_rank(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    n = len(sorted_values)
    if n == 0:
        return 0
    idx = max(0, min(n - 1, math.ceil(p * n) - 1))
    return sorted_values[idx]


def event_filter(reader: TraceReader, window: TimeWindow, pids: tuple[int, ...] = (),
                 alias: str = "") -> tuple[str, list[int]]:
    """``WHERE`` clause (with the keyword, or ``""``) for a window and pid filter on ``events``."""
    col = f"{alias}." if alias else ""
    where, params = window.sql(f"{col}timestamp")
    parts = [where] if where else []
    if pids:
        parts.append(f"{col}pid IN ({','.join('?' * len(pids))})")
        params = params + list(pids)
    return ("WHERE " + " AND ".join(parts)) if parts else "", params


def trace_stats(reader: TraceReader, window: TimeWindow = ALL, pids: tuple[int, ...] = ()
                ) -> TraceStats:
    if not reader.has_table("events"):
        return TraceStats((), 0, 0, 0, window)
    where, params = event_filter(reader, window, pids)
    durations = op_durations(reader, where, params, events_access(reader, window))
    first = last = None
    b = reader.conn.execute(f"SELECT MIN(timestamp), MAX(timestamp) FROM events {where}", params).fetchone()
    if b and b[0] is not None:
        first, last = b
    # minute buckets cannot be cut to an arbitrary window: totals are given for the whole trace only
    agg = _aggregate_counts(reader, window, pids) if window.is_open else {}
    descs = reader.op_descriptions
    failures = find_failures(reader, window, pids, calls_per_source({k: len(v) for k, v in durations.items()}))
    probes = reader.probe_ops
    ops = []
    for (s, o), ds in durations.items():
        name, desc = op_name(s, o), ""
        if s == SOURCE_PROBE and o in probes:  # a dynamic probe's events go by the probe's name
            name, desc = f"probe:{probes[o][0]}", probes[o][1]
        p50 = nearest_rank(ds, 0.50)
        anomalies = len(ds) - bisect.bisect_right(ds, 3 * p50) if p50 > 0 else 0
        ops.append(OpStats(s, o, name, len(ds), agg.get((s, o), 0), p50, nearest_rank(ds, 0.95),
                           nearest_rank(ds, 0.99), ds[0], ds[-1], sum(ds), anomalies, desc or descs.get(name, ""),
                           tuple(e for e in failures.errors if (e.source, e.op) == (s, o))))
    ops.sort(key=lambda x: (-x.sum_ns, x.source, x.op))
    stored = sum(x.count for x in ops)
    span = 0
    if first is not None:
        # the window asked for, where it has ends: shares of wall time are over it, not over its events
        lo = window.start_ns if window.start_ns is not None else first
        hi = window.end_ns if window.end_ns is not None else last
        span = max(hi - lo, last - first)
    return TraceStats(tuple(ops), stored, sum(agg.values()), span, window, failures)


def no_events_message(reader: TraceReader, window: TimeWindow = ALL, pids: tuple[int, ...] = ()) -> str:
    """What an empty answer means: nothing in the database, or nothing matching the filter."""
    total = reader.count("events") if reader.has_table("events") else 0
    if not total:
        return "No events found in the database."
    asked = [w for w, on in (("the time window", not window.is_open),
                             (f"pid {', '.join(map(str, pids))}", bool(pids))) if on]
    return f"No events match the filter ({' and '.join(asked) or 'none'}): {total} events in the database."


def _aggregate_counts(reader: TraceReader, window: TimeWindow, pids: tuple[int, ...]
                      ) -> dict[tuple[int, int], int]:
    if not reader.has_table("event_aggregates"):
        return {}
    # buckets are minute-truncated: a bucket overlaps the window if it ends after its start
    parts, params = [], []
    if window.start_ns is not None:
        parts.append("bucket >= ?")
        params.append(window.start_ns - 60 * 10**9 + 1)
    if window.end_ns is not None:
        parts.append("bucket <= ?")
        params.append(window.end_ns)
    if pids:
        parts.append(f"pid IN ({','.join('?' * len(pids))})")
        params += list(pids)
    where = ("WHERE " + " AND ".join(parts)) if parts else ""
    rows = reader.query(f"SELECT source, op, SUM(count) FROM event_aggregates {where} GROUP BY source, op",
                        params)
    return {(s, o): int(n or 0) for s, o, n in rows}
