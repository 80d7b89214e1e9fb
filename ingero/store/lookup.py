"""What the writer puts in a new database besides events: upstream's lookup rows and ingero's own tables.

Upstream (v0.10, ``user_version`` 10) fills ``sources`` (7 rows), ``ops`` (30 rows) and ``schema_info``
so that any SQL client can join names onto codes; the texts below are upstream's. ingero adds:

* ops above upstream's codes (``schema.INGERO_OPS``): start-up and error-path CUDA runtime/driver calls,
  thread_create/thread_exit;
* source ``100`` (``PROBE``): events of dynamic probes; their op is the probe id, each registered in ``ops``
  under the probe's name when the probe is registered;
* ``probes``: one row per dynamic probe (spec text, recorded fields, library, symbols, status, when and why
  it ended, event and loss counts, the name of its view);
* ``probe_values``: the recorded fields of each probe event, keyed by the event: ``event_id`` is
  ``events.id`` (``{node}:{seq}``) and ``seq`` (the table's integer key) its number, which keeps inserts
  append-only (a second text index would cost as much as the values). Slots ``v0..v7`` hold the fields in
  the order of ``probes.fields``, the rest are a JSON array in ``more``; a view ``probe_<name>`` per probe
  joins them to ``events`` and names them;
* ``lost_events``: every loss the tracer counted (ring buffer full, rate limit, budget), with a total per
  session in ``sessions.lost_events``;
* ``sessions.command``: the traced command line.
"""

from __future__ import annotations

from ingero.store.schema import INGERO_OPS, OP_NAMES, SOURCE_PROBE

SCHEMA_VERSION = "0.10"
USER_VERSION = 10
#: value slots of probe_values before the JSON overflow column
VALUE_SLOTS = 8

SOURCES: tuple[tuple[int, str, str], ...] = (
    (1, "CUDA", "CUDA Runtime API (libcudart.so) — uprobes"),
    (2, "NVIDIA", "NVIDIA kernel driver (nvidia.ko) — reserved, not currently traced"),
    (3, "HOST", "Host kernel events — tracepoints (scheduler, memory, process lifecycle)"),
    (4, "DRIVER", "CUDA Driver API (libcuda.so) — uprobes"),
    (5, "IO", "Block I/O events — tracepoints (block_rq_issue/block_rq_complete)"),
    (6, "TCP", "TCP events — tracepoints (tcp_retransmit_skb)"),
    (7, "NET", "Network socket events — syscall tracepoints (sendto/recvfrom)"),
    (SOURCE_PROBE, "PROBE", "Dynamic probes (ingero DSL) — uprobes; op = probes.id, fields in probe_values"),
)

#: upstream's ``ops`` rows in upstream's order: (source, op) -> description (the names are
#: :data:`ingero.store.schema.OP_NAMES`, the one table of them)
OP_DESCRIPTIONS: dict[tuple[int, int], str] = {
    (1, 1): "GPU memory allocation",
    (1, 2): "GPU memory free",
    (1, 3): "Launch GPU kernel via runtime API",
    (1, 4): "Synchronous host<->device memory copy",
    (1, 5): "Wait for all ops in a CUDA stream to complete",
    (1, 6): "Wait for all GPU work on device to complete",
    (1, 7): "Asynchronous host<->device memory copy",
    (3, 1): "CPU context switch — thread was descheduled",
    (3, 2): "Thread woken up and enqueued to run queue",
    (3, 3): "Kernel page allocation (arg0 = bytes)",
    (3, 4): "Out-of-memory killer invoked",
    (3, 5): "New process executed (execve)",
    (3, 6): "Process exited",
    (3, 7): "Process forked (child auto-enrolled for tracing)",
    (4, 1): "Launch GPU kernel via driver API (cuBLAS/cuDNN path)",
    (4, 2): "Synchronous memory copy via driver API",
    (4, 3): "Asynchronous memory copy via driver API",
    (4, 4): "Wait for all GPU work in context to complete",
    (4, 5): "GPU memory allocation via driver API",
    (4, 6): "Unified Memory allocation via driver API",
    (1, 8): "Unified Memory allocation via runtime API",
    (5, 1): "Block device read request",
    (5, 2): "Block device write request",
    (5, 3): "Block device discard/trim request",
    (6, 1): "TCP segment retransmission",
    (7, 1): "Socket send/sendto syscall",
    (7, 2): "Socket recv/recvfrom syscall",
    (3, 10): "K8s pod container restart detected",
    (3, 11): "K8s pod eviction detected",
    (3, 12): "K8s pod OOM kill detected",
}

OPS: tuple[tuple[int, int, str, str], ...] = (
    *((s, o, OP_NAMES[(s, o)], desc) for (s, o), desc in OP_DESCRIPTIONS.items()),
    # ingero's own ops (codes above upstream's)
    *((s, o, name, desc) for (s, o), (name, desc) in INGERO_OPS.items()),
)

SCHEMA_INFO: tuple[tuple[str, str], ...] = (
    ("version", SCHEMA_VERSION),
    ("timestamp_unit", "nanoseconds (Unix epoch)"),
    ("duration_unit", "nanoseconds"),
    ("arg0_note", "Operation-specific: byte size for alloc/memcpy, kernel function pointer for launch"),
    ("arg1_note", "Operation-specific: memcpy direction for cudaMemcpy/cudaMemcpyAsync, unused for most ops"),
    ("ret_code_note", "CUDA return code (0 = cudaSuccess). Host events always 0."),
    ("stack_traces_note", "Deduplicated stacks: events.stack_hash → stack_traces.hash. frames column has "
                          "resolved symbols. Use get_stacks MCP tool for call stack analysis."),
    ("example_query", "SELECT e.id, s.name AS source, o.name AS op, e.duration/1000 AS dur_us, e.pid FROM events e "
                      "JOIN sources s ON e.source = s.id JOIN ops o ON e.source = o.source_id AND e.op = o.op_id "
                      "ORDER BY e.timestamp DESC LIMIT 20"),
    ("system_snapshots_note", "System metrics sampled every 1s during recording. Replay with correlator for "
                              "post-hoc causal chain analysis."),
    ("sessions_note", "One row per 'ingero trace' invocation. Correlate with events via time range."),
    ("process_names_note", "PID-to-name mapping populated during trace. JOIN with events.pid for query "
                           "enrichment."),
    ("event_aggregates_note", "Per-minute aggregates. sum_arg0 tracks mm_page_alloc total bytes (chain engine "
                              "threshold: >1GB). count-stored = discarded count."),
    ("cgroup_metadata_note", "cgroup_id → container_id mapping. Populated during K8s tracing. JOIN with "
                             "events.cgroup_id for container context."),
    ("node_note", "Node identity for multi-node correlation. events.id format: {node}:{seq}. causal_chains.id "
                  "format: {node}:{descriptor}."),
    ("comm_note", "events.comm captured kernel-side at event time. Empty for pre-v0.10 rows (fall back to "
                  "process_names LEFT JOIN for legacy display)."),
    ("probes_note", "Dynamic probes (ingero): one row per probe. Their events are events rows with source=100 "
                    "and op=probes.id (latency in duration, retval in ret_code); all recorded fields are in "
                    "probe_values (event_id = events.id, seq = its number; slots v0..v7 in the order of "
                    "probes.fields, the rest as JSON in more) and named by the view probes.view."),
    ("lost_events_note", "Events the tracer lost (ring buffer full, rate limits, budgets), counted per reason; "
                         "sessions.lost_events holds the total per session. Never silent."),
    ("writer", "ingero"),
)

#: upstream tables that schema.DDL leaves out (v0.10 5s aggregates, v0.17 annotations) and ingero's tables
WRITER_DDL = f"""
CREATE TABLE IF NOT EXISTS event_aggregates_5s (bucket INTEGER NOT NULL, source INTEGER NOT NULL,
  op INTEGER NOT NULL, pid INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL DEFAULT 0,
  stored INTEGER NOT NULL DEFAULT 0, sum_dur INTEGER NOT NULL DEFAULT 0, min_dur INTEGER NOT NULL DEFAULT 0,
  max_dur INTEGER NOT NULL DEFAULT 0, sum_arg0 INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (bucket, source, op, pid));
CREATE INDEX IF NOT EXISTS idx_aggregates_5s_bucket ON event_aggregates_5s(bucket);
CREATE INDEX IF NOT EXISTS idx_sessions_started ON sessions(started_at);
CREATE INDEX IF NOT EXISTS idx_cgroup_metadata_container_id ON cgroup_metadata(container_id)
  WHERE container_id != '';
CREATE INDEX IF NOT EXISTS idx_cgroup_schedstat_cgroup ON cgroup_schedstat(cgroup_id);
CREATE TABLE IF NOT EXISTS annotations (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER NOT NULL,
  labels TEXT NOT NULL, pid INTEGER NOT NULL DEFAULT 0, start_time INTEGER NOT NULL DEFAULT 0,
  span_start INTEGER NOT NULL DEFAULT 0, span_end INTEGER NOT NULL DEFAULT 0, peer_uid INTEGER NOT NULL DEFAULT 0,
  peer_gid INTEGER NOT NULL DEFAULT 0, peer_pid INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS idx_annotations_timestamp ON annotations(timestamp);
CREATE INDEX IF NOT EXISTS idx_annotations_pid ON annotations(pid) WHERE pid != 0;
CREATE TABLE IF NOT EXISTS probes (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
  session_id INTEGER NOT NULL DEFAULT 0, source INTEGER NOT NULL DEFAULT {SOURCE_PROBE}, op INTEGER NOT NULL,
  spec TEXT NOT NULL DEFAULT '', fields TEXT NOT NULL DEFAULT '[]', library TEXT NOT NULL DEFAULT '',
  symbols TEXT NOT NULL DEFAULT '[]', status TEXT NOT NULL DEFAULT 'active', started_at INTEGER NOT NULL,
  ended_at INTEGER NOT NULL DEFAULT 0, end_reason TEXT NOT NULL DEFAULT '', events INTEGER NOT NULL DEFAULT 0,
  lost INTEGER NOT NULL DEFAULT 0, view TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS probe_values (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL,
  probe_id INTEGER NOT NULL, {", ".join(f"v{i}" for i in range(VALUE_SLOTS))}, more TEXT);
CREATE TABLE IF NOT EXISTS probe_aggregates (probe_id INTEGER NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL,
  aggs TEXT NOT NULL DEFAULT '{{}}', hists TEXT NOT NULL DEFAULT '{{}}', read_at INTEGER NOT NULL,
  PRIMARY KEY (probe_id, key));
CREATE TABLE IF NOT EXISTS lost_events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER NOT NULL,
  session_id INTEGER NOT NULL DEFAULT 0, probe_id INTEGER NOT NULL DEFAULT 0, source INTEGER NOT NULL DEFAULT 0,
  reason TEXT NOT NULL, count INTEGER NOT NULL);
"""

#: columns ingero adds to upstream tables (ALTER TABLE ... ADD COLUMN, idempotent)
WRITER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("sessions", "command", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "lost_events", "INTEGER NOT NULL DEFAULT 0"),
)

#: upstream's secondary indexes of events; ``EventWriter(defer_indexes=True)`` builds them at close instead
#: of per row (together they cost more than the row itself)
DEFERRABLE_INDEXES: tuple[tuple[str, str], ...] = (
    ("idx_events_timestamp", "CREATE INDEX IF NOT EXISTS idx_events_timestamp ON events(timestamp)"),
    ("idx_events_pid", "CREATE INDEX IF NOT EXISTS idx_events_pid ON events(pid)"),
    ("idx_events_source_op_stack",
     "CREATE INDEX IF NOT EXISTS idx_events_source_op_stack ON events(source, op, stack_hash)"),
)
