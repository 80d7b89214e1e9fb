"""Export a stored trace as Chrome/Perfetto trace-event JSON (the "JSON Object Format").

Open the file in https://ui.perfetto.dev or ``chrome://tracing``. What goes in:

* every ``events`` row, once: a complete event (``ph: "X"``) when it has a duration, an instant
  (``ph: "i"``, thread scope) when it has none. ``name`` is the op name (``ops`` table, then upstream's
  names), ``cat`` the source (``cuda``, ``driver``, ``host``, ``io``..., or the ``sources`` table's name
  for dynamic probe sources), ``args`` the columns that mean something for that op (size, kind, stream,
  pointers, ret_code, preemptor, sectors...) plus ``event_id``, the call stack when one is stored, and a
  dynamic probe's recorded fields (``probe_values``, named by ``probes.fields``) under ``fields``;
* process and thread names as metadata (``ph: "M"``) from ``process_names`` and, where the file has it,
  the per-thread ``comm`` column;
* stored causal chains as global instant markers (``cat: "causal_chain"``) at their ``detected_at``;
* ``system_snapshots`` as counters (CPU %, memory %, load) on a ``system`` process (pid 0).

**Time.** ``events.timestamp`` is the *entry* time for CUDA, driver, CUDA graph and dynamic probe events,
and the *end* time for events measured by the kernel after the fact (host ``sched_switch``: the moment the
thread came back on CPU, duration = off-CPU time; block I/O: completion, duration = issue->complete;
socket send/recv: syscall exit). A slice starts at ``timestamp - duration`` for those
(:data:`END_STAMPED_SOURCES`) and at ``timestamp`` otherwise. All times are rebased to
``otherData.time_base_unix_ns`` (the whole second before the file's first event) and written as exact
decimal microseconds with three decimals, so nanosecond precision survives double-precision parsers.

**Tracks and nesting.** Slices of one thread track must nest. The rule:

1. each event has a home track: its thread ``(pid, tid)``; block I/O, which runs asynchronously to the
   thread that issued it, goes to a companion track of that thread named ``<thread> · block I/O``;
2. events are placed in start order (longest first on a tie) with a stack walk per track. An event that
   would overlap the open slice on its track without nesting inside it is moved, whole and unclipped, to
   the first *overflow lane* of that track where it nests (a sibling track named ``<track> (overlap N)``,
   created on demand). Nothing is clipped or dropped; :attr:`ExportSummary.moved` counts the moved ones;
3. a ``sched_switch`` row names the resuming task by its kernel thread id as both pid and tid; when
   another row shows that id as a thread of a process, the slice goes to that thread in that process.

Ids are ``slot * 10_000_000 + id`` (above Linux's ``pid_max``, so a synthetic id is never a real one): a
thread's extra tracks (companion, overflow lanes) take slots 1, 2...; a database merged from several nodes
(``events.node``) puts each node's pids and tids in the node's slot, so equal ids of different machines
stay apart (the real pid and node are in the process name). Perfetto keys threads by tid alone, so every
tid of the file belongs to one process (see :class:`_TrackIds`).

The writer streams: one ordered SQL pass over ``events``, one line per trace event, no list of events in
memory (only per-track stacks of open slice ends, names and a stack-text cache).
"""

from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ingero.analysis.stacks import parse_frames
from ingero.analysis.window import ALL, TimeWindow
from ingero.errors import IngeroError
from ingero.store.reader import TraceReader
from ingero.store.schema import (
    OP_NAMES,
    SOURCE_CUDA,
    SOURCE_DRIVER,
    SOURCE_HOST,
    SOURCE_IO,
    SOURCE_NAMES,
    SOURCE_NET,
    SOURCE_TCP,
    op_name,
)

#: sources whose ``events.timestamp`` is the end of the measured interval (see the module docstring)
END_STAMPED_SOURCES: frozenset[int] = frozenset({SOURCE_HOST, SOURCE_IO, SOURCE_NET})
#: sources that run asynchronously to the issuing thread: a companion track per thread
ASYNC_SOURCES: dict[int, str] = {SOURCE_IO: "block I/O"}
#: synthetic ids: lanes and nodes are multiples of this (above Linux's pid_max of 2**22)
ID_STRIDE = 10_000_000
#: frames kept in a slice's ``stack`` argument
MAX_STACK_FRAMES = 32
SYSTEM_PID = 0

MEMCPY_KINDS = {0: "HostToHost", 1: "HostToDevice", 2: "DeviceToHost", 3: "DeviceToDevice", 4: "Default",
                5: "unknown"}
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
SCHED_SWITCH = (SOURCE_HOST, 1)


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    events: int                 #: events rows written (slices + instants)
    slices: int                 #: ``ph: "X"``
    instants: int               #: ``ph: "i"`` from events rows
    moved: int                  #: slices placed on an overflow lane by the nesting rule
    lanes: int                  #: overflow lane tracks created
    processes: int
    threads: int                #: thread tracks, lanes and companion tracks included
    chains: int                 #: causal-chain markers
    counters: int               #: system snapshot counter samples
    time_base_ns: int
    per_op: tuple[tuple[str, str, int], ...] = field(default=())   #: (cat, name, count), most first


def _us(ns: int) -> str:
    """Non-negative nanoseconds as exact decimal microseconds (``1234.567``, ``12``)."""
    q, r = divmod(ns, 1000)
    return f"{q}.{r:03d}" if r else str(q)


def _hex(v: int) -> str:
    return hex(v & 0xFFFFFFFFFFFFFFFF)


def _demangle(frame: str) -> str:
    """``_ZN...+0x1a at lib.so`` -> ``ns::f(args)+0x1a at lib.so`` (frames stay as stored when cxxfilt cannot)."""
    if not frame.startswith("_Z"):
        return frame
    sym, sep, rest = frame.partition("+0x")
    if not sep:
        sym, sep, rest = frame.partition(" ")
    try:
        import cxxfilt

        return cxxfilt.demangle(sym) + sep + rest
    except Exception:  # noqa: BLE001 - any failure keeps the stored text
        return frame


#: upstream's memcpy family (cudaMemcpy2D* carry a width in arg0, the others a size)
_MEMCPY_OPS = frozenset(("cudaMemcpy", "cudaMemcpyAsync", "cudaMemcpy2D", "cudaMemcpy2DAsync", "cudaMemcpyPeer",
                         "cudaMemcpyPeerAsync"))


def event_args(source: int, op: int, arg0: int, arg1: int, ret_code: int, gpu_id: int) -> dict[str, object]:
    """The arguments worth showing for one event, by what ``arg0``/``arg1`` mean for its op."""
    a: dict[str, object] = {}
    name = OP_NAMES.get((source, op), "")
    if source == SOURCE_CUDA:
        if name in ("cudaMalloc", "cudaMallocManaged"):
            a["size"] = arg0
            if arg1:
                a["ptr"] = _hex(arg1)
        elif name == "cudaFree":
            a["ptr"] = _hex(arg0)
            if arg1:
                a["size"] = arg1
        elif name == "cudaLaunchKernel":
            a["func"] = _hex(arg0)
            a["stream"] = _hex(arg1)
        elif name in _MEMCPY_OPS:
            a["width" if "2D" in name else "size"] = arg0
            a["kind"] = MEMCPY_KINDS.get(arg1, str(arg1))
        elif name == "cudaStreamSync":
            a["stream"] = _hex(arg0)
        elif name != "cudaDeviceSync":
            a.update(arg0=arg0, arg1=arg1)
    elif source == SOURCE_DRIVER and name:
        if name == "cuLaunchKernel":
            a["func"] = _hex(arg0)
        elif name != "cuCtxSynchronize":
            a["size"] = arg0
    elif source == SOURCE_HOST:
        if name == "sched_switch":
            a["preempted_by"] = arg1
        elif name == "sched_wakeup":
            a["wakee"] = arg1
        elif name == "mm_page_alloc":
            a["bytes"] = arg0
        elif name in ("oom_kill", "pod_oom_kill"):
            a["victim"] = arg1
        elif name == "process_fork":
            a["child"] = arg1
        elif name == "mm_page_alloc_summary":
            a.update(count=arg0, bytes=arg1)
        elif name == "sched_switch_summary":
            a.update(count=arg0, off_cpu_ns=arg1)
        elif arg0 or arg1:
            a.update(arg0=arg0, arg1=arg1)
    elif source == SOURCE_IO:
        a.update(sectors=arg0, bytes=arg0 * 512, sector=arg1)
    elif source == SOURCE_TCP:
        a.update(addrs=_hex(arg0), ports=_hex(arg1), state=TCP_STATES.get(gpu_id, str(gpu_id)))
        gpu_id = 0
    elif source == SOURCE_NET:
        a.update(fd=arg0, bytes=arg1)
    else:
        if arg0:
            a["arg0"] = arg0
        if arg1:
            a["arg1"] = arg1
    if ret_code:
        a["ret_code"] = ret_code
    if gpu_id:
        a["gpu_id"] = gpu_id
    return a


class _Track:
    """One thread's home track group: lanes of open-slice end stacks."""

    __slots__ = ("lanes",)

    def __init__(self) -> None:
        self.lanes: list[list[int]] = [[]]

    def place(self, start: int, end: int) -> int:
        """The first lane where [start, end] nests; a new lane when none does."""
        for i, stack in enumerate(self.lanes):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or end <= stack[-1]:
                stack.append(end)
                return i
        self.lanes.append([end])
        return len(self.lanes) - 1


class _Names:
    """Labels for the source/op codes of one file: the ``ops``/``sources`` tables, then upstream's."""

    def __init__(self, reader: TraceReader) -> None:
        self.ops: dict[tuple[int, int], str] = {}
        self.sources: dict[int, str] = {}
        if reader.has_table("ops"):
            self.ops = {(int(s), int(o)): str(n) for s, o, n in reader.query("SELECT source_id, op_id, name FROM ops")}
        if reader.has_table("sources"):
            self.sources = {int(i): str(n) for i, n in reader.query("SELECT id, name FROM sources")}
        self._cache: dict[tuple[int, int], tuple[str, str, str, str]] = {}

    def op(self, source: int, op: int) -> str:
        return self.ops.get((source, op)) or op_name(source, op)

    def cat(self, source: int) -> str:
        return SOURCE_NAMES.get(source) or (self.sources.get(source) or f"source_{source}").lower()

    def encoded(self, source: int, op: int) -> tuple[str, str, str, str]:
        """(name, cat, JSON name, JSON cat) for a code pair, cached."""
        got = self._cache.get((source, op))
        if got is None:
            name, cat = self.op(source, op), self.cat(source)
            got = self._cache[(source, op)] = (name, cat, json.dumps(name), json.dumps(cat))
        return got


def _col(reader: TraceReader, column: str, default: str) -> str:
    return column if reader.has_column("events", column) else default


def time_base_ns(reader: TraceReader) -> int:
    """The whole second at or before the earliest slice start, snapshot and chain of the file."""
    end = ",".join(str(s) for s in sorted(END_STAMPED_SOURCES))
    cands: list[int] = []
    row = reader.query(f"SELECT MIN(CASE WHEN source IN ({end}) AND duration > 0 THEN timestamp - duration "
                       "ELSE timestamp END) FROM events")
    if row and row[0][0] is not None:
        cands.append(int(row[0][0]))
    for table, column in (("system_snapshots", "timestamp"), ("causal_chains", "detected_at")):
        if reader.has_column(table, column):
            row = reader.query(f"SELECT MIN({column}) FROM {table} WHERE {column} > 0")
            if row and row[0][0] is not None:
                cands.append(int(row[0][0]))
    return (min(cands) // 10**9) * 10**9 if cands else 0


def export_perfetto(reader: TraceReader, out: TextIO, window: TimeWindow = ALL, pids: Iterable[int] = (),
                    chains: bool = True, snapshots: bool = True) -> ExportSummary:
    """Write ``reader``'s events (in ``window``, of processes ``pids`` if given) as trace-event JSON to ``out``."""
    if not reader.has_table("events"):
        raise IngeroError(f"{reader.path} has no events table", "is it an ingero trace database?")
    pids = tuple(dict.fromkeys(int(p) for p in pids))
    names = _Names(reader)
    base = time_base_ns(reader)
    node_col = _col(reader, "node", "''")
    comm_col = _col(reader, "comm", "''")
    stack_col = _col(reader, "stack_hash", "0")
    id_col = "id" if reader.has_column("events", "id") else "rowid"

    # nodes: a merged multi-node file keeps equal pids of different machines apart
    nodes = [r[0] for r in reader.query(f"SELECT DISTINCT {node_col} FROM events ORDER BY 1")] if \
        node_col != "''" else [""]
    multi_node = len([n for n in nodes if n]) > 1
    node_index = {n: i + 1 for i, n in enumerate(nodes)}

    # kernel thread id -> owning process, for sched_switch rows (pid = tid = the resuming thread)
    owner: dict[tuple[str, int], int] = {}
    for node, pid, tid in reader.query(f"SELECT DISTINCT {node_col}, pid, tid FROM events WHERE pid != tid"):
        owner.setdefault((node or "", int(tid)), int(pid))

    where, params = window.sql("e.timestamp")
    clauses = [where] if where else []
    wanted = set(pids)
    if pids:   # sched_switch rows of the processes' threads too: filtered again below, after rule 3
        clauses.append(f"(e.pid IN ({','.join('?' * len(pids))}) OR (e.source = ? AND e.op = ? AND e.pid = e.tid))")
        params = [*params, *pids, *SCHED_SWITCH]
    end_list = ",".join(str(s) for s in sorted(END_STAMPED_SOURCES))
    start_expr = f"(CASE WHEN e.source IN ({end_list}) AND e.duration > 0 THEN e.timestamp - e.duration " \
                 "ELSE e.timestamp END)"
    probe_fields, pv_expr = _probe_values(reader, id_col)
    sql = (f"SELECT {id_col}, {start_expr} AS start, e.duration, e.pid, e.tid, e.source, e.op, e.arg0, e.arg1, "
           f"e.ret_code, e.gpu_id, {stack_col}, {node_col}, {comm_col}, {pv_expr} FROM events e "
           f"{'WHERE ' + ' AND '.join(clauses) if clauses else ''} ORDER BY start, e.duration DESC")

    w = out.write
    w('{"displayTimeUnit":"ns","otherData":')
    w(json.dumps({"generator": "ingero export perfetto", "source_db": reader.path.name,
                  "schema_version": reader.schema_version, "time_base_unix_ns": base,
                  "time_note": "ts and dur are microseconds since time_base_unix_ns"}, separators=(",", ":")))
    w(',"traceEvents":[\n')
    first = [True]

    def emit(line: str) -> None:
        if first[0]:
            first[0] = False
            w(line)
        else:
            w(",\n" + line)

    stacks: dict[int, str] = {}

    def stack_text(h: int) -> str:
        got = stacks.get(h)
        if got is None:
            got = ""
            if reader.has_table("stack_traces"):
                frames_col = "frames" if reader.has_column("stack_traces", "frames") else "''"
                row = reader.query(f"SELECT {frames_col}, ips FROM stack_traces WHERE hash = ?", (h,))
                if row:
                    frames = parse_frames(row[0][0] or "", row[0][1] or "")[:MAX_STACK_FRAMES]
                    got = json.dumps([_demangle(f) for f in frames], separators=(",", ":")) if frames else ""
            stacks[h] = got
        return got

    tracks: dict[tuple[int, int, int], _Track] = {}     # (perfetto pid, tid, group) -> lanes
    procs: dict[int, tuple[str, int]] = {}              # perfetto pid -> (node, real pid)
    comms: dict[tuple[int, int], str] = {}              # (perfetto pid, tid) -> last comm seen
    per_op: Counter[tuple[str, str]] = Counter()
    ids = _TrackIds(len(nodes) if multi_node else 0)
    ids.tid(SYSTEM_PID, 0, 0, 0)       # tid 0 is the system process's (counters, chain markers)
    n_x = n_i = moved = 0

    rows = reader.conn.execute(sql, params)
    for eid, start, dur, pid, tid, source, op, arg0, arg1, ret, gpu, sh, node, comm, pvals in rows:
        node = node or ""
        dur = max(int(dur or 0), 0)
        if (source, op) == SCHED_SWITCH and pid == tid:
            pid = owner.get((node, tid), pid)
            if wanted and pid not in wanted:
                continue
        slot = node_index[node] if multi_node else 0
        ppid = slot * ID_STRIDE + pid
        if ppid not in procs:
            procs[ppid] = (node, pid)
        if comm:
            comms[(ppid, tid)] = comm
        name, cat, jname, jcat = names.encoded(source, op)
        per_op[(cat, name)] += 1
        args = event_args(source, op, int(arg0 or 0), int(arg1 or 0), int(ret or 0), int(gpu or 0))
        if pvals:
            fields = _fields(pvals, probe_fields)
            if fields:
                args["fields"] = fields
        args["event_id"] = eid
        if node:
            args["node"] = node
        jargs = json.dumps(args, separators=(",", ":"))
        if sh:
            st = stack_text(int(sh))
            if st:
                jargs = jargs[:-1] + ',"stack":' + st + "}"
        group = source if source in ASYNC_SOURCES else 0
        key = (ppid, tid, group)
        track = tracks.get(key)
        if track is None:
            track = tracks[key] = _Track()
        rel = start - base
        if dur == 0:
            n_i += 1
            emit(f'{{"ph":"i","s":"t","name":{jname},"cat":{jcat},"ts":{_us(rel)},"pid":{ppid},'
                 f'"tid":{ids.tid(ppid, tid, group, 0, slot)},"args":{jargs}}}')
            continue
        lane = track.place(start, start + dur)
        if lane:
            moved += 1
        n_x += 1
        emit(f'{{"ph":"X","name":{jname},"cat":{jcat},"ts":{_us(rel)},"dur":{_us(dur)},"pid":{ppid},'
             f'"tid":{ids.tid(ppid, tid, group, lane, slot)},"args":{jargs}}}')

    n_chains = _write_chains(reader, window, base, emit) if chains and not pids else 0
    n_counters = _write_snapshots(reader, window, base, emit) if snapshots else 0
    n_threads, n_lanes = _write_metadata(reader, procs, tracks, ids, comms, multi_node, emit,
                                         system=n_counters > 0)
    w("\n]}\n")
    return ExportSummary(events=n_x + n_i, slices=n_x, instants=n_i, moved=moved, lanes=n_lanes,
                         processes=len(procs), threads=n_threads, chains=n_chains, counters=n_counters,
                         time_base_ns=base,
                         per_op=tuple((c, n, k) for (c, n), k in per_op.most_common()))


def _probe_values(reader: TraceReader, id_col: str) -> tuple[dict[int, list[str]], str]:
    """Field names per probe id, and the SELECT expression giving a probe event's recorded values as JSON.

    ingero's dynamic probes keep every recorded field in ``probe_values`` (``v0..v7``, then a JSON array in
    ``more``) keyed by the event's id, with the names in ``probes.fields``; files without them give ``NULL``.
    """
    slots = [c for c in reader.tables.get("probe_values", ()) if len(c) > 1 and c[0] == "v" and c[1:].isdigit()]
    if not (reader.has_column("probe_values", "event_id") and reader.has_column("probe_values", "probe_id")
            and reader.has_column("probes", "fields") and reader.has_column("probes", "id")):
        return {}, "NULL"
    names: dict[int, list[str]] = {}
    for pid_, fields in reader.query("SELECT id, fields FROM probes"):
        try:
            got = json.loads(fields or "[]")
        except ValueError:
            got = []
        names[int(pid_)] = [str(f.get("name", "")) if isinstance(f, dict) else str(f) for f in got] \
            if isinstance(got, list) else []
    slots.sort(key=lambda c: int(c[1:]))
    more = ", json(COALESCE(more, '[]'))" if reader.has_column("probe_values", "more") else ""
    values = "".join(f", {c}" for c in slots)
    upstream = ",".join(str(i) for i in range(1, 10))       # upstream's sources have no probe_values
    return names, (f"(CASE WHEN e.source NOT IN ({upstream}) THEN (SELECT json_array(probe_id, {len(slots)}"
                   f"{values}{more}) FROM probe_values WHERE event_id = e.{id_col}) END)")


def _fields(pvals: str, names: dict[int, list[str]]) -> dict[str, object]:
    """``[probe_id, n_slots, v0.., [more..]]`` -> {field name: value} in the probe's field order."""
    try:
        v = json.loads(pvals)
        probe_id, n = int(v[0]), int(v[1])
        values = v[2:2 + n] + (v[2 + n] if len(v) > 2 + n and isinstance(v[2 + n], list) else [])
    except (ValueError, TypeError, IndexError):
        return {}
    fields = names.get(probe_id, [])
    n = min(len(fields), len(values)) if fields else len(values)
    return {(fields[i] if i < len(fields) and fields[i] else f"v{i}"): values[i] for i in range(n)}


class _TrackIds:
    """Perfetto tids, unique across the whole trace (Perfetto keys threads by tid alone: a tid seen under a
    second pid would be taken for a reused tid and start a new thread).

    ``slot * ID_STRIDE + tid``: a thread's own track takes slot 0 (slot = node index in a multi-node file);
    its extra tracks (companion, overflow lanes) take the next free slots after the node slots. A slot
    already taken by another track moves the track to the next free one.
    """

    def __init__(self, reserved: int) -> None:
        self.reserved = reserved
        self.ids: dict[tuple[int, int, int, int], int] = {}
        self.taken: set[int] = set()
        self.next_extra: dict[int, int] = {}

    def tid(self, ppid: int, tid: int, group: int, lane: int, node_slot: int = 0) -> int:
        key = (ppid, tid, group, lane)
        got = self.ids.get(key)
        if got is None:
            extra = bool(group or lane)
            slot = self.next_extra.get(tid, self.reserved + 1) if extra else node_slot
            while slot * ID_STRIDE + tid in self.taken:
                slot += 1
            if extra:
                self.next_extra[tid] = slot + 1
            got = self.ids[key] = slot * ID_STRIDE + tid
            self.taken.add(got)
        return got


def _write_chains(reader: TraceReader, window: TimeWindow, base: int, emit: Callable[[str], None]) -> int:
    from ingero.analysis.chains import stored_chains

    n = 0
    for c in reversed(stored_chains(reader, window)):
        if not c.detected_at:
            continue
        args = {"id": c.id, "severity": c.severity, "root_cause": c.root_cause,
                "recommendations": "; ".join(c.recommendations),
                "timeline": " | ".join(f"[{t.layer}] {t.detail}" for t in c.timeline)}
        if c.node:
            args["node"] = c.node
        emit(f'{{"ph":"i","s":"g","name":{json.dumps(f"{c.severity}: {c.summary}")},"cat":"causal_chain",'
             f'"ts":{_us(max(c.detected_at - base, 0))},"pid":{SYSTEM_PID},"tid":0,'
             f'"args":{json.dumps(args, separators=(",", ":"))}}}')
        n += 1
    return n


def _write_snapshots(reader: TraceReader, window: TimeWindow, base: int, emit: Callable[[str], None]) -> int:
    cols = ("cpu_pct", "mem_pct", "load_avg")
    if not all(reader.has_column("system_snapshots", c) for c in ("timestamp", *cols)):
        return 0
    where, params = window.sql("timestamp")
    n = 0
    for ts, cpu, mem, load in reader.query(
            f"SELECT timestamp, cpu_pct, mem_pct, load_avg FROM system_snapshots "
            f"{'WHERE ' + where if where else ''} ORDER BY timestamp", params):
        emit(f'{{"ph":"C","name":"system","ts":{_us(max(int(ts) - base, 0))},"pid":{SYSTEM_PID},"tid":0,'
             f'"args":{json.dumps({"cpu %": cpu, "mem %": mem, "load": load}, separators=(",", ":"))}}}')
        n += 1
    return n


def _write_metadata(reader: TraceReader, procs: dict[int, tuple[str, int]],
                    tracks: dict[tuple[int, int, int], _Track], ids: _TrackIds, comms: dict[tuple[int, int], str],
                    multi_node: bool, emit: Callable[[str], None], system: bool) -> tuple[int, int]:
    pnames: dict[int, str] = {}
    if reader.has_column("process_names", "name"):
        pnames = {int(p): str(n) for p, n in reader.query("SELECT pid, name FROM process_names") if n}

    def meta(name: str, pid: int, tid: int, value: object, key: str = "name") -> None:
        emit(f'{{"ph":"M","name":"{name}","pid":{pid},"tid":{tid},'
             f'"args":{json.dumps({key: value}, separators=(",", ":"))}}}')

    if system:
        meta("process_name", SYSTEM_PID, 0, "system")
    for ppid, (node, pid) in sorted(procs.items()):
        label = pnames.get(pid) or comms.get((ppid, pid)) or f"pid {pid}"
        if multi_node:
            label = f"{label} [{pid}] @{node}"
        main = ids.tid(ppid, pid, 0, 0, ppid // ID_STRIDE)   # Perfetto files every event under a thread
        meta("process_name", ppid, main, label)
        meta("process_sort_index", ppid, main, ppid, "sort_index")

    n_threads = n_lanes = 0
    order = sorted(tracks.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))
    for sort_index, ((ppid, tid, group), track) in enumerate(order):
        _, pid = procs[ppid]
        base_name = comms.get((ppid, tid)) or pnames.get(tid) or f"tid {tid}"
        if group:
            base_name = f"{base_name} · {ASYNC_SOURCES[group]}"
        for lane in range(len(track.lanes)):
            label = base_name if lane == 0 else f"{base_name} (overlap {lane})"
            ltid = ids.tid(ppid, tid, group, lane)     # assigned while streaming: the node slot is not needed
            meta("thread_name", ppid, ltid, label)
            meta("thread_sort_index", ppid, ltid, sort_index * 1000 + lane, "sort_index")
            n_threads += 1
            n_lanes += lane > 0
    return n_threads, n_lanes


def write_perfetto(db: str | Path, output: str | Path, window_since: str = "", window_until: str = "",
                   pids: Iterable[int] = (), chains: bool = True, snapshots: bool = True) -> ExportSummary:
    """Export the database at ``db`` to ``output`` (written to a temporary file, then renamed into place).

    ``window_since``/``window_until`` take what :func:`ingero.analysis.window.make_window` takes, counted back
    from the end of the trace.
    """
    from ingero.analysis.window import make_window

    db, output = Path(db), Path(output)
    if output.exists() and output.resolve() == db.resolve():
        raise IngeroError(f"refusing to write the trace over its own database {db}", "give another -o path")
    if output.is_file():
        with output.open("rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                raise IngeroError(f"refusing to overwrite the SQLite database {output}", "give another -o path")
    if output.is_dir():
        raise IngeroError(f"{output} is a directory", "give a file name, e.g. -o trace.json")
    with TraceReader.open(db) as reader:
        b = reader.time_bounds
        window = make_window(window_since, window_until, b[1] if b else None)
        parent = output.resolve().parent
        if not parent.is_dir():
            raise IngeroError(f"no directory {parent} for {output}")
        # a new file beside the output, created with the umask's mode (mkstemp would make it 0600)
        tmp = parent / f".{output.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            raise IngeroError(f"cannot write in {parent}: {e.strerror}") from e
        try:
            with os.fdopen(fd, "w", encoding="utf-8", buffering=1 << 20) as f:
                summary = export_perfetto(reader, f, window, pids, chains=chains, snapshots=snapshots)
            os.replace(tmp, output)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError) and not isinstance(e, IngeroError):
                raise IngeroError(f"cannot write {output}: {e.strerror or e}") from e
            raise
    return summary
