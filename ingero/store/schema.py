"""Upstream Ingero's SQLite schema: table definitions, source and op codes.

These are the tables and meanings of upstream Ingero (v0.8 to v0.17, see docs/compat.md). The reader
adapts to the columns a given file really has; the writer (a later stage) creates them with ``DDL``.
"""

from __future__ import annotations

from ingero.errors import IngeroError, suggestion

#: Upstream HEAD schema (v0.10+ columns included). A writer creates these; the reader never does.
DDL = """
CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY,
  timestamp INTEGER NOT NULL, pid INTEGER NOT NULL, tid INTEGER NOT NULL, source INTEGER NOT NULL,
  op INTEGER NOT NULL, duration INTEGER NOT NULL, gpu_id INTEGER NOT NULL DEFAULT 0,
  arg0 INTEGER NOT NULL DEFAULT 0, arg1 INTEGER NOT NULL DEFAULT 0, ret_code INTEGER NOT NULL DEFAULT 0,
  stack_hash INTEGER NOT NULL DEFAULT 0, node TEXT NOT NULL DEFAULT '', rank INTEGER, local_rank INTEGER,
  world_size INTEGER, comm TEXT NOT NULL DEFAULT '', stack_ips TEXT NOT NULL DEFAULT '',
  cgroup_id INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS idx_events_timestamp ON events(timestamp);
CREATE INDEX IF NOT EXISTS idx_events_pid ON events(pid);
CREATE INDEX IF NOT EXISTS idx_events_source_op_stack ON events(source, op, stack_hash);
CREATE INDEX IF NOT EXISTS idx_events_cgroup ON events(cgroup_id) WHERE cgroup_id != 0;
CREATE TABLE IF NOT EXISTS stack_traces (hash INTEGER PRIMARY KEY, ips TEXT NOT NULL,
  frames TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS causal_chains (id TEXT PRIMARY KEY, detected_at INTEGER NOT NULL,
  severity TEXT NOT NULL, summary TEXT NOT NULL, root_cause TEXT NOT NULL, explanation TEXT NOT NULL,
  recommendations TEXT NOT NULL DEFAULT '', cuda_op TEXT NOT NULL DEFAULT '',
  cuda_p99_us INTEGER NOT NULL DEFAULT 0, cuda_p50_us INTEGER NOT NULL DEFAULT 0,
  tail_ratio REAL NOT NULL DEFAULT 0, timeline TEXT NOT NULL DEFAULT '', node TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS idx_chains_detected_at ON causal_chains(detected_at);
CREATE INDEX IF NOT EXISTS idx_chains_severity ON causal_chains(severity);
CREATE TABLE IF NOT EXISTS system_snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT,
  timestamp INTEGER NOT NULL UNIQUE, cpu_pct REAL NOT NULL, mem_pct REAL NOT NULL,
  mem_avail INTEGER NOT NULL, swap_mb INTEGER NOT NULL, load_avg REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at INTEGER NOT NULL,
  stopped_at INTEGER NOT NULL DEFAULT 0, gpu_model TEXT NOT NULL DEFAULT '',
  gpu_driver TEXT NOT NULL DEFAULT '', cpu_model TEXT NOT NULL DEFAULT '',
  cpu_cores INTEGER NOT NULL DEFAULT 0, mem_total INTEGER NOT NULL DEFAULT 0,
  kernel TEXT NOT NULL DEFAULT '', os_release TEXT NOT NULL DEFAULT '', cuda_ver TEXT NOT NULL DEFAULT '',
  python_ver TEXT NOT NULL DEFAULT '', ingero_ver TEXT NOT NULL DEFAULT '',
  pid_filter TEXT NOT NULL DEFAULT '', flags TEXT NOT NULL DEFAULT '', node TEXT NOT NULL DEFAULT '',
  rank INTEGER, local_rank INTEGER, world_size INTEGER);
CREATE TABLE IF NOT EXISTS process_names (pid INTEGER NOT NULL, name TEXT NOT NULL,
  seen_at INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (pid));
CREATE TABLE IF NOT EXISTS event_aggregates (bucket INTEGER NOT NULL, source INTEGER NOT NULL,
  op INTEGER NOT NULL, pid INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL DEFAULT 0,
  stored INTEGER NOT NULL DEFAULT 0, sum_dur INTEGER NOT NULL DEFAULT 0, min_dur INTEGER NOT NULL DEFAULT 0,
  max_dur INTEGER NOT NULL DEFAULT 0, sum_arg0 INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (bucket, source, op, pid));
CREATE INDEX IF NOT EXISTS idx_aggregates_bucket ON event_aggregates(bucket);
CREATE TABLE IF NOT EXISTS cgroup_metadata (cgroup_id INTEGER PRIMARY KEY,
  container_id TEXT NOT NULL DEFAULT '', cgroup_path TEXT NOT NULL DEFAULT '',
  pod_name TEXT NOT NULL DEFAULT '', namespace TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS cgroup_schedstat (cgroup_id INTEGER NOT NULL, p99_off_cpu INTEGER NOT NULL,
  total_off_cpu INTEGER NOT NULL, event_count INTEGER NOT NULL, window_start INTEGER NOT NULL DEFAULT 0,
  window_end INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (cgroup_id, window_end));
CREATE TABLE IF NOT EXISTS sources (id INTEGER PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (source_id INTEGER NOT NULL, op_id INTEGER NOT NULL, name TEXT NOT NULL,
  description TEXT NOT NULL, PRIMARY KEY (source_id, op_id));
CREATE TABLE IF NOT EXISTS schema_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

SOURCE_CUDA, SOURCE_HOST, SOURCE_DRIVER, SOURCE_IO, SOURCE_TCP, SOURCE_NET, SOURCE_GRAPH = 1, 3, 4, 5, 6, 7, 8

#: ingero's own source code for events of dynamic (DSL) probes. Upstream uses 1-9 (2 reserved, 9 NCCL in
#: BPF only) and its fields are uint8: 100 leaves room for upstream's growth. The op of a probe event is
#: the probe's id in the ``probes`` table, registered in ``ops`` under the probe's name (see writer.py).
SOURCE_PROBE = 100

#: source code -> upstream's lower-case name (``events.Source.String()``)
SOURCE_NAMES: dict[int, str] = {
    1: "cuda", 3: "host", 4: "driver", 5: "io", 6: "tcp", 7: "net", 8: "cuda_graph", SOURCE_PROBE: "probe",
}



def source_choices() -> str:
    """Every source a filter takes, as its code or its name: ``1/cuda, 3/host, ...`` (the text of
    get_stacks' and ``ingero stacks --source``'s descriptions, made from :data:`SOURCE_NAMES`)."""
    return ", ".join(f"{code}/{name}" for code, name in SOURCE_NAMES.items())


#: (source, op) -> op name, as upstream's ``pkg/events/types.go``
OP_NAMES: dict[tuple[int, int], str] = {
    (1, 1): "cudaMalloc", (1, 2): "cudaFree", (1, 3): "cudaLaunchKernel", (1, 4): "cudaMemcpy",
    (1, 5): "cudaStreamSync", (1, 6): "cudaDeviceSync", (1, 7): "cudaMemcpyAsync",
    (1, 8): "cudaMallocManaged", (1, 9): "cudaMemcpy2D", (1, 10): "cudaMemcpy2DAsync",
    (1, 11): "cudaMemcpyPeer", (1, 12): "cudaMemcpyPeerAsync",
    (3, 1): "sched_switch", (3, 2): "sched_wakeup", (3, 3): "mm_page_alloc", (3, 4): "oom_kill",
    (3, 5): "process_exec", (3, 6): "process_exit", (3, 7): "process_fork", (3, 10): "pod_restart",
    (3, 11): "pod_eviction", (3, 12): "pod_oom_kill", (3, 20): "mm_page_alloc_summary",
    (3, 21): "sched_switch_summary",
    (4, 1): "cuLaunchKernel", (4, 2): "cuMemcpy", (4, 3): "cuMemcpyAsync", (4, 4): "cuCtxSynchronize",
    (4, 5): "cuMemAlloc", (4, 6): "cuMemAllocManaged",
    (5, 1): "block_read", (5, 2): "block_write", (5, 3): "block_discard",
    (6, 1): "tcp_retransmit",
    (7, 1): "net_send", (7, 2): "net_recv",
    (8, 1): "graphBeginCapture", (8, 2): "graphEndCapture", (8, 3): "graphInstantiate", (8, 4): "graphLaunch",
}

#: ingero's own ops, above upstream's codes (upstream's op fields are uint8 and its codes stop at 21): the
#: runtime and driver calls frameworks make at start and around errors, and thread lifecycle (upstream
#: records a new thread as process_fork and a thread's exit as process_exit; ingero tells them apart, see
#: docs/compat.md). (source, op) -> (name, description, what arg0/arg1 hold); the tracer's symbol tables
#: (ingero/tracer/standard.py) and the ``ops`` table are made from this one.
INGERO_OPS: dict[tuple[int, int], tuple[str, str]] = {
    (1, 40): ("cudaGetDeviceCount", "Number of CUDA devices (arg1 = the count, when it succeeds)"),
    (1, 41): ("cudaGetDevice", "Current device of the calling thread (arg1 = the device, when it succeeds)"),
    (1, 42): ("cudaSetDevice", "Select the device of the calling thread (arg0 = device)"),
    (1, 43): ("cudaDriverGetVersion", "Installed driver's CUDA version (arg1 = version, 0 = no driver)"),
    (1, 44): ("cudaRuntimeGetVersion", "CUDA runtime version (arg1 = version)"),
    (1, 45): ("cudaGetLastError", "Return and clear the last runtime error (ret_code = that error)"),
    (1, 46): ("cudaPeekAtLastError", "Return the last runtime error without clearing it (ret_code = it)"),
    (1, 47): ("cudaStreamCreate", "Create a stream (arg1 = the stream, when it succeeds)"),
    (1, 48): ("cudaStreamCreateWithFlags", "Create a stream (arg0 = flags, arg1 = the stream)"),
    (1, 49): ("cudaStreamCreateWithPriority", "Create a stream (arg0 = flags, arg1 = the stream)"),
    (1, 50): ("cudaEventRecord", "Record an event in a stream (arg0 = event, arg1 = stream)"),
    (1, 51): ("cudaEventSynchronize", "Wait for an event to complete (arg0 = event)"),
    (1, 52): ("cudaHostAlloc", "Pinned host memory allocation (arg0 = size, arg1 = the pointer)"),
    (1, 53): ("cudaMallocHost", "Pinned host memory allocation (arg0 = size, arg1 = the pointer)"),
    (1, 54): ("cudaFreeHost", "Pinned host memory free (arg0 = pointer, arg1 = its size if seen)"),
    (3, 40): ("thread_create", "New thread in a traced process (arg1 = its tid); not a process_fork"),
    (3, 41): ("thread_exit", "A thread exited while its process lives on (the last one is process_exit)"),
    (4, 40): ("cuInit", "Initialise the driver API (arg0 = flags)"),
    (4, 41): ("cuDriverGetVersion", "Installed driver's CUDA version (arg1 = version)"),
    (4, 42): ("cuDeviceGetCount", "Number of CUDA devices (arg1 = the count, when it succeeds)"),
    (4, 43): ("cuDeviceGet", "Device handle of an ordinal (arg0 = ordinal, arg1 = device)"),
    (4, 44): ("cuStreamCreate", "Create a stream via driver API (arg0 = flags, arg1 = the stream)"),
    (4, 45): ("cuEventRecord", "Record an event via driver API (arg0 = event, arg1 = stream)"),
    (4, 46): ("cuEventSynchronize", "Wait for an event via driver API (arg0 = event)"),
    (4, 47): ("cuMemAllocHost", "Pinned host memory via driver API (arg0 = size, arg1 = the pointer)"),
    (4, 48): ("cuMemHostAlloc", "Pinned host memory via driver API (arg0 = size, arg1 = the pointer)"),
    (4, 49): ("cuMemFreeHost", "Pinned host memory free via driver API (arg0 = pointer, arg1 = its size)"),
}
OP_NAMES.update({code: name for code, (name, _) in INGERO_OPS.items()})


def op_code(name: str) -> tuple[int, int]:
    """The (source, op) of an exact op name of :data:`OP_NAMES` (KeyError otherwise)."""
    return _BY_NAME[name]


_BY_NAME = {name: code for code, name in OP_NAMES.items()}

UNKNOWN_OP_FORMATS = {1: "unknown({})", 3: "host_op({})", 4: "driver_op({})", 5: "io_op({})", 6: "tcp_op({})",
                7: "net_op({})", 8: "graph_op({})", SOURCE_PROBE: "probe_op({})"}

#: aliases accepted by :func:`resolve_op` (upstream ``events.ResolveOp``)
OP_ALIASES = {"cumemalloc_v2": (4, 5), "cumemallocmanaged_v2": (4, 6),
              "cudastreamsynchronize": (1, 5), "cudadevicesynchronize": (1, 6)}


def op_name(source: int, op: int) -> str:
    """Upstream's ``Event.OpName()``: the name, or ``unknown(n)``/``host_op(n)``... for unknown codes."""
    name = OP_NAMES.get((source, op))
    if name:
        return name
    return UNKNOWN_OP_FORMATS.get(source, "op({})").format(op)


#: labels of verbose stats lines: upstream's Host, Driver and CUDA, and the other sources by their own
#: names (upstream labels every other source CUDA, so block_read read "[CUDA] block_read")
SOURCE_LABELS: dict[int, str] = {
    SOURCE_CUDA: "CUDA", SOURCE_HOST: "Host", SOURCE_DRIVER: "Driver", SOURCE_IO: "IO", SOURCE_TCP: "TCP",
    SOURCE_NET: "Net", SOURCE_GRAPH: "CUDA Graph", SOURCE_PROBE: "Probe",
}


def source_label(source: int) -> str:
    """The label of a verbose stats line: the source's own name (``source N`` for an unknown one)."""
    return SOURCE_LABELS.get(source, f"source {source}")


def resolve_op(name: str) -> tuple[int, int]:
    """An op name (case-insensitive, with upstream's aliases) -> (source, op)."""
    key = name.strip().lower()
    for code, n in OP_NAMES.items():
        if n.lower() == key:
            return code
    if key in OP_ALIASES:
        return OP_ALIASES[key]
    raise IngeroError(
        f'Unknown operation "{name}". Use CUDA ops (cudaMalloc, cudaLaunchKernel, ...) or driver ops '
        "(cuLaunchKernel, cuMemAlloc, ...).",
        suggestion(name, OP_NAMES.values()),
    )


#: ops whose arg0 is a pointer (upstream skips sum_arg0 for them)
POINTER_ARG0_OPS = {(1, 2), (1, 3), (4, 1), (1, 50), (1, 51), (1, 54), (4, 45), (4, 46), (4, 49)}


#: a probe view's ``comm``: a probe event's own comm is empty, so the process's name comes from
#: ``process_names`` (as the tracer saw it)
PROBE_VIEW_COMM = ("COALESCE(NULLIF(e.comm, ''), (SELECT pn.name FROM process_names pn WHERE pn.pid = e.pid), '') "
                   "AS comm")
#: the same for a database without ``process_names``: the name another event of the process carries
_COMM_FROM_EVENTS = ("COALESCE(NULLIF(e.comm, ''), (SELECT x.comm FROM events x WHERE x.pid = e.pid AND "
                     "x.comm != '' LIMIT 1), '') AS comm")
#: how a probe view written before ingero filled ``comm`` selects it (always empty for probe events)
_OLD_VIEW_COMM = ", e.comm, "


def shadow_old_probe_views(conn) -> list[str]:
    """Probe views written before ingero filled ``comm`` select the probe events' own, always empty, comm.
    On this connection only (nothing is written to the file), a TEMP view of the same name, which SQLite
    resolves first, fills it from what the database knows: ``process_names``, else another event of the
    same process. Call before ``PRAGMA query_only``. Returns the names of the views shadowed."""
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view' AND name LIKE 'probe\\_%' "
                        "ESCAPE '\\'").fetchall()
    has_names = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'process_names'"
                             ).fetchone() is not None
    comm = PROBE_VIEW_COMM if has_names else _COMM_FROM_EVENTS
    out = []
    for name, sql in rows:
        head = 'CREATE VIEW "'
        if not sql or not sql.startswith(head) or _OLD_VIEW_COMM not in sql:
            continue
        conn.execute("CREATE TEMP VIEW " + sql[len("CREATE VIEW "):].replace(_OLD_VIEW_COMM, f", {comm}, ", 1))
        out.append(name)
    return out
