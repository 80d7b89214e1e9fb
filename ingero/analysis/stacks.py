"""Call stacks per operation, most frequent first, with resolved frames (upstream's ``get_stacks``)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from ingero.analysis.window import ALL, TimeWindow
from ingero.store.reader import TraceReader
from ingero.store.schema import resolve_op

MAX_FRAMES_JSON = 64 * 1024
MAX_STACKS = 100


@dataclass(frozen=True)
class StackSummary:
    hash: int
    count: int
    avg_ns: int
    min_ns: int
    max_ns: int
    sum_arg0: int
    processes: tuple[str, ...]
    frames: tuple[str, ...]


def render_frame(f: dict) -> str:
    """``Symbol`` (else ``IP``), `` at File[:Line]``, `` -> PyFunc (PyFile[:PyLine])`` (upstream's format)."""
    out = str(f.get("s") or f.get("i") or "")
    if f.get("f"):
        out += f" at {f['f']}" + (f":{f['l']}" if f.get("l") else "")
    if f.get("pfn") or f.get("pf"):
        py = str(f.get("pf", "")) + (f":{f['pl']}" if f.get("pl") else "")
        out += f" -> {f.get('pfn', '')} ({py})"
    return out.strip()


def parse_frames(frames: str, ips: str) -> tuple[str, ...]:
    out: list[str] = []
    if frames and len(frames) <= MAX_FRAMES_JSON:
        try:
            v = json.loads(frames)
        except ValueError:
            v = []
        if isinstance(v, list):
            for f in v:
                if isinstance(f, dict):
                    s = render_frame(f)
                elif isinstance(f, str):
                    s = f
                else:
                    continue
                if s:
                    out.append(s)
    if not out and ips and len(ips) <= MAX_FRAMES_JSON:
        try:
            v = json.loads(ips)
        except ValueError:
            v = []
        if isinstance(v, list):
            out = [str(x) for x in v]
    return tuple(out)


def top_stacks(reader: TraceReader, *, source: int = 0, op: str = "", pid: int = 0,
               window: TimeWindow = ALL, limit: int = 10) -> tuple[StackSummary, ...]:
    """Stacks grouped by hash; ``op`` (a name, case-insensitive) wins over ``source``."""
    limit = 10 if limit <= 0 else min(limit, MAX_STACKS)
    if not (reader.has_table("events") and reader.has_table("stack_traces")):
        return ()
    where = ["e.stack_hash != 0"]
    params: list = []
    if op:
        s, o = resolve_op(op)
        where.append("e.source = ? AND e.op = ?")
        params += [s, o]
    elif source > 0:
        where.append("e.source = ?")
        params.append(source)
    if pid > 0:
        where.append("e.pid = ?")
        params.append(pid)
    w, p = window.sql("e.timestamp")
    if w:
        where.append(w)
        params += p
    names = []
    if reader.has_column("events", "comm"):
        names.append("NULLIF(e.comm, '')")
    join = ""
    if reader.has_table("process_names"):
        names.append("NULLIF(pn.name, '')")
        join = "LEFT JOIN process_names pn ON e.pid = pn.pid"
    proc = f"GROUP_CONCAT(DISTINCT COALESCE({', '.join(names)}, ''))" if names else "''"
    ips = "COALESCE(st.ips, '')" if reader.has_column("stack_traces", "ips") else "''"
    frames = "COALESCE(st.frames, '')" if reader.has_column("stack_traces", "frames") else "''"

    def run(sum_expr: str) -> list[tuple]:
        return reader.query(
            f"SELECT e.stack_hash, {frames}, {ips}, COUNT(*) AS n, MIN(e.duration), MAX(e.duration), "
            f"SUM(e.duration)/COUNT(*), {sum_expr}, {proc} FROM events e "
            f"JOIN stack_traces st ON e.stack_hash = st.hash {join} WHERE {' AND '.join(where)} "
            "GROUP BY e.stack_hash ORDER BY n DESC, e.stack_hash LIMIT ?", params + [limit])

    try:
        rows = run("SUM(e.arg0)")
    except sqlite3.OperationalError as e:  # pointer-valued arg0 overflows SUM: fall back to a float sum
        if "overflow" not in str(e):
            raise
        rows = run("CAST(TOTAL(e.arg0) AS INTEGER)")
    out = []
    for h, fr, ip, n, mn, mx, avg, sa, pn in rows:
        procs = tuple(x for x in (pn or "").split(",") if x)
        out.append(StackSummary(int(h), int(n), int(avg), int(mn), int(mx), int(sa or 0), procs,
                                parse_frames(fr, ip)))
    return tuple(out)
