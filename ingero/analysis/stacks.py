"""Call stacks per operation, most frequent first, with resolved frames (upstream's ``get_stacks``)."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass

from ingero.analysis.window import ALL, TimeWindow
from ingero.errors import IngeroError, suggestion
from ingero.store.reader import TraceReader
from ingero.store.schema import (
    OP_NAMES,
    SOURCE_HOST,
    SOURCE_IO,
    SOURCE_NAMES,
    SOURCE_PROBE,
    UNKNOWN_OP_FORMATS,
    resolve_op,
)

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
    #: the innermost Python frame, "file:line in function" ("" without Python frames); with
    #: ``group="python_line"`` the summary covers every stack with this line (``frames``: the commonest)
    python_line: str = ""

#: how top_stacks can group
GROUPS = ("stack", "python_line")


def python_line(frames: str) -> str:
    """The innermost Python frame of a stored ``frames`` column as ``file:line in function`` ("" if none)."""
    if not frames or len(frames) > MAX_FRAMES_JSON:
        return ""
    try:
        v = json.loads(frames)
    except ValueError:
        return ""
    for f in v if isinstance(v, list) else ():
        if isinstance(f, dict) and (f.get("pfn") or f.get("pf")) and not str(f.get("pfn", "")).startswith("["):
            where = str(f.get("pf", "")) + (f":{f['pl']}" if f.get("pl") else "")
            return f"{where} in {f.get('pfn', '')}"
    return ""


def has_python_frames(reader: TraceReader) -> bool:
    """Whether a stored stack may have a Python frame (its frames text names a ``pf``/``pfn`` key): when not,
    no stack has a ``python_line`` and grouping by it finds nothing."""
    if not (reader.has_table("stack_traces") and reader.has_column("stack_traces", "frames")):
        return False
    return reader.conn.execute("""SELECT 1 FROM stack_traces WHERE frames LIKE '%"pf%' LIMIT 1""").fetchone() \
        is not None


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


_PRINTED_UNKNOWN = re.compile(r"^([a-z_]+)\((\d+)\)$")


def resolve_source(source: int | str) -> int:
    """A source given as its code (3, "3") or name ("host", "HOST", "cuda_graph") -> its code; 0 = any."""
    if isinstance(source, int):
        return max(source, 0)
    key = source.strip().lower()
    if not key:
        return 0
    if key.isdigit():
        return int(key)
    for code, name in SOURCE_NAMES.items():
        if name == key:
            return code
    raise IngeroError(f'unknown source "{source}": use a code or one of {", ".join(SOURCE_NAMES.values())}',
                      suggestion(key, SOURCE_NAMES.values()))


def resolve_any_op(reader: TraceReader, op: str) -> tuple[int, int]:
    """Every op name get_trace_stats prints -> (source, op): upstream's and ingero's names (with
    upstream's aliases), ``probe:NAME`` (a dynamic probe, by the ``ops`` table) and the names of codes
    without a name (``host_op(9)``, ``unknown(13)``)."""
    name = op.strip()
    if name.startswith("probe:"):
        probe = name[len("probe:"):]
        known = {}
        if reader.has_table("ops"):
            known = {str(n): int(o) for o, n in reader.query(
                "SELECT op_id, name FROM ops WHERE source_id = ?", (SOURCE_PROBE,))}
        if probe in known:
            return SOURCE_PROBE, known[probe]
        have = ", ".join(f"probe:{n}" for n in sorted(known)) or "none in this database"
        raise IngeroError(f'no probe named "{probe}" (probes: {have})', suggestion(probe, known, "probe:"))
    m = _PRINTED_UNKNOWN.match(name)
    if m:
        src = next((s for s, fmt in UNKNOWN_OP_FORMATS.items() if fmt == m.group(1) + "({})"), None)
        if src is not None:
            return src, int(m.group(2))
    try:
        return resolve_op(name)
    except IngeroError as e:
        raise IngeroError(f'unknown op "{op}": use an op name get_trace_stats prints (cudaMalloc, '
                          'sched_switch, probe:NAME, ...)', suggestion(name, OP_NAMES.values())) from e


def _filters(reader: TraceReader, source: int | str, op: str, pid: int, window: TimeWindow
             ) -> tuple[list[str], list]:
    where: list[str] = []
    params: list = []
    if op:
        s, o = resolve_any_op(reader, op)
        where.append("e.source = ? AND e.op = ?")
        params += [s, o]
    elif (code := resolve_source(source)) > 0:
        where.append("e.source = ?")
        params.append(code)
    if pid > 0:
        where.append("e.pid = ?")
        params.append(pid)
    w, p = window.sql("e.timestamp")
    if w:
        where.append(w)
        params += p
    return where, params


def why_no_stacks(reader: TraceReader, *, source: int | str = 0, op: str = "", pid: int = 0,
                  window: TimeWindow = ALL) -> str:
    """What an empty :func:`top_stacks` answer means for these filters."""
    hint = "Ensure trace was run with --stacks (default: on)."
    if not reader.has_table("events"):
        return "No stacks found: the database has no events table."
    where, params = _filters(reader, source, op, pid, window)
    code = resolve_source(source)
    what = (op or (SOURCE_NAMES.get(code, f"source {code}") if code else "")).strip()
    scope = " ".join(x for x in (what, "events", f"of pid {pid}" if pid > 0 else "",
                                 "in the window" if window.sql("e.timestamp")[0] else "") if x)
    cond = " AND ".join(where) or "1"
    n = reader.query(f"SELECT COUNT(*) FROM events e WHERE {cond}", params)[0][0]
    if not (where or n):
        return "No events found in the database."
    if not n:
        return f"No stacks found: no {scope} (get_trace_stats lists the ops this trace has)."
    kinds = {int(s) for (s,) in reader.query(f"SELECT DISTINCT e.source FROM events e WHERE {cond}", params)}
    if kinds <= {SOURCE_HOST, SOURCE_IO}:
        return (f"No stacks found: {n} {scope}, none with a call stack -- host and I/O events never carry "
                "one (stacks are captured for CUDA/driver calls and probes that record them).")
    if kinds <= {SOURCE_HOST, SOURCE_IO, SOURCE_PROBE}:
        return (f"No stacks found: {n} {scope}, none with a call stack -- probe events never carry one here: a "
                "probe that records `stack` keeps it among its values (get_probe_results, or run_sql on its "
                "view probe_NAME).")
    if not where:
        return f"No stacks found. {hint}"
    return f"No stacks found: {n} {scope}, none with a call stack. {hint}"


def top_stacks(reader: TraceReader, *, source: int | str = 0, op: str = "", pid: int = 0,
               window: TimeWindow = ALL, limit: int = 10, group: str = "stack") -> tuple[StackSummary, ...]:
    """Stacks grouped by hash (``group="stack"``) or by their innermost Python frame
    (``group="python_line"``: "which line of my Python code makes these calls"; stacks without Python
    frames are left out); ``op`` (any name get_trace_stats prints, case-insensitive for upstream's names)
    wins over ``source`` (a code or name). Unknown names raise :class:`IngeroError`."""
    if group not in GROUPS:
        raise IngeroError(f"unknown grouping {group!r}", hint=suggestion(group, GROUPS) or "stack or python_line")
    limit = 10 if limit <= 0 else min(limit, MAX_STACKS)
    filters, params = _filters(reader, source, op, pid, window)  # names are checked even on an empty db
    if not (reader.has_table("events") and reader.has_table("stack_traces")):
        return ()
    where = ["e.stack_hash != 0", *filters]
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
            "GROUP BY e.stack_hash ORDER BY n DESC, e.stack_hash" + (" LIMIT ?" if group == "stack" else ""),
            params + ([limit] if group == "stack" else []))

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
                                parse_frames(fr, ip), python_line(fr)))
    if group == "python_line":
        return _by_python_line(out, limit)
    return tuple(out)


def _by_python_line(stacks: list[StackSummary], limit: int) -> tuple[StackSummary, ...]:
    """Stacks (most frequent first) merged per innermost Python frame: counts, sums and extremes exact;
    the average is the count-weighted one (of the per-stack integer averages: within 1 ns per stack)."""
    groups: dict[str, list[StackSummary]] = {}
    for s in stacks:
        if s.python_line:
            groups.setdefault(s.python_line, []).append(s)
    out = []
    for line, ss in groups.items():
        n = sum(s.count for s in ss)
        top = ss[0]  # the commonest stack of this line (rows come most frequent first)
        out.append(StackSummary(
            top.hash, n, sum(s.avg_ns * s.count for s in ss) // n, min(s.min_ns for s in ss),
            max(s.max_ns for s in ss), sum(s.sum_arg0 for s in ss),
            tuple(dict.fromkeys(p for s in ss for p in s.processes)), top.frames, line))
    out.sort(key=lambda s: (-s.count, s.python_line))
    return tuple(out[:limit])
