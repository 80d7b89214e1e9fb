"""Write a trace database in upstream Ingero's schema (v0.10), plus ingero's dynamic-probe tables.

One :class:`EventWriter` owns one SQLite connection: WAL, ``synchronous=NORMAL``, one transaction per
batch, ``executemany`` of plain tuples (no ORM on the hot path). A committed batch survives a SIGKILL of
the writing process: it sits in the ``-wal`` file, which :class:`~ingero.store.reader.TraceReader` reads.

Threads: the ring-buffer thread calls :meth:`EventWriter.add_events`; any other thread may register
probes, add snapshots, stacks, lost counts, chains, or flush and close. Every public method takes the
writer's lock, so calls never interleave inside a transaction.

Timestamps: event timestamps arrive as the kernel's ``CLOCK_MONOTONIC`` nanoseconds
(``bpf_ktime_get_ns``) and are stored as Unix epoch nanoseconds, converted inside the INSERT by the offset
of an :class:`~ingero.store.clock.EpochClock` measured when the writer opens (``epoch=True`` on a batch
whose timestamps already are epoch ns). Everything else (snapshots, sessions, chains) is epoch ns.

Dynamic probes (see :mod:`ingero.store.lookup`): :meth:`EventWriter.register_probe` adds a ``probes`` row,
an ``ops`` row (source 100, op = probe id, the probe's name) and a view ``probe_<name>``. A probe event is
an ordinary :class:`Event` with ``source=SOURCE_PROBE``, ``op=handle.op``, latency as ``duration``, retval
as ``ret_code`` and every recorded field, in the probe's field order, in ``values``; the writer stores the
values in ``probe_values`` keyed by the event's id, in the same transaction.

Size cap: with ``max_db_size`` (bytes, database plus ``-wal``), every ``check_every`` batches the writer
has the file pruned (:func:`ingero.store.dbfile.prune`: the oldest rows go). The file itself (creating or
opening one, its size, pruning, deferred indexes) is :mod:`ingero.store.dbfile`'s; this module writes rows.
"""

from __future__ import annotations

import logging
import re
import socket
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import count
from pathlib import Path
from typing import Any

from ingero.store import dbfile
from ingero.store.clock import EpochClock
from ingero.store.lookup import VALUE_SLOTS
from ingero.store.records import (
    EVENT_COLUMNS,
    I64_MAX,
    U64,
    Aggregate,
    ChainLike,
    Frame,
    ProbeHandle,
    ProbeInfo,
    RowLayout,
    SessionInfo,
    StoreError,
    SystemSnapshot,
    WriterStats,
    frames_json,
    go_json,
    stack_hash_frames,
    stack_hash_ips,
    view_columns,
)
from ingero.store.schema import PROBE_VIEW_COMM, SOURCE_PROBE

log = logging.getLogger(__name__)



# --- the writer ----------------------------------------------------------------------------------------
#: records bound to one INSERT by add_records (its rows number themselves from one parameter): fewer calls
#: into SQLite per event (bench: 64 -> ~1.2 µs an event, decoding included, against ~1.8 one at a time);
#: 64 x a dozen items stays below SQLite's oldest limit of 999 parameters
ROWS_PER_INSERT = 64
# the event id is built by SQLite from the sequence number (the node prefix is a literal of the statement)
_INSERT_EVENTS = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}, node) VALUES "
                  "({prefix} || ?, ? + {offset}, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {node})")


class EventWriter:
    """Append-only writer of one trace database. Use as a context manager, or call :meth:`close`.

    ``node`` (default: the host name) prefixes event ids (``{node}:{seq}``) and fills ``events.node`` and
    ``sessions.node``; ``clock`` converts kernel monotonic timestamps (default: measured now);
    ``max_db_size`` caps database + ``-wal`` bytes (0: no cap), checked every ``check_every`` batches;
    ``defer_indexes`` builds upstream's secondary ``events`` indexes at :meth:`close` instead of per row
    (about 1.5x the insert rate; a file left by a killed tracer then has no such indexes -- it reads the
    same, only slower to filter by time, pid or op -- and close takes ~1 s per million events; ``close``
    can be given a time budget, beyond which the build is abandoned and the file left without them. A
    writer that later appends to such a file builds them when it opens it). Opening an existing v0.10 file
    appends a new session to it; older or foreign files are refused, never migrated.
    """

    def __init__(self, path: str | Path, *, session: SessionInfo | None = None, node: str | None = None,
                 clock: EpochClock | None = None, max_db_size: int = 0, check_every: int = 16,
                 defer_indexes: bool = False) -> None:
        self.path = Path(path)
        self.node = node if node is not None else socket.gethostname()
        self.clock = clock if clock is not None else EpochClock.measure()
        self.max_db_size = max(0, int(max_db_size))
        self.check_every = max(1, int(check_every))
        self._lock = threading.RLock()
        self._pending: list[tuple[str, list[tuple]]] = []
        self._known_stacks: set[int] = set()
        self._stack_memo: dict[tuple, int] = {}
        self._probes: dict[int, ProbeHandle] = {}
        self._probe_counts: dict[int, int] = {}
        self._events = self._probe_events = self._batches = self._lost = 0
        self._pruned = self._prunes = 0
        self._closed = False
        self._deferred: list[str] = []
        self._side_sql: dict[int, str] = {}
        self._laid: dict[RowLayout, tuple] = {}
        self.conn = dbfile.open_database(self.path, self.max_db_size)
        self._prefix = f"{self.node}:"
        literal = _sql_literal(self._prefix)
        node = _sql_literal(self.node)
        self._ins_mono = _INSERT_EVENTS.format(prefix=literal, offset=int(self.clock.offset_ns), node=node)
        self._ins_epoch = _INSERT_EVENTS.format(prefix=literal, offset=0, node=node)
        self._seq = self._max_seq()
        self._known_stacks = {h for (h,) in self.conn.execute("SELECT hash FROM stack_traces")}
        if defer_indexes:
            self._deferred = dbfile.defer_indexes(self.conn)
        self.session_id = self._start_session(session or SessionInfo())
        self.indexes_missing: tuple[str, ...] = ()  # deferred indexes a bounded close did not build

    # -- opening ---------------------------------------------------------------------------------------
    def _max_seq(self) -> int:
        n = len(self._prefix)
        row = self.conn.execute(
            "SELECT MAX(CAST(substr(id, ?) AS INTEGER)) FROM events WHERE substr(id, 1, ?) = ?",
            (n + 1, n, self._prefix)).fetchone()
        side = self.conn.execute("SELECT MAX(seq) FROM probe_values").fetchone()
        return max(int(row[0] or 0), int(side[0] or 0))

    def _start_session(self, s: SessionInfo) -> int:
        cur = self.conn.execute(
            "INSERT INTO sessions (started_at, gpu_model, gpu_driver, cpu_model, cpu_cores, mem_total, kernel, "
            "os_release, cuda_ver, python_ver, ingero_ver, pid_filter, flags, node, rank, local_rank, world_size, "
            "command) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time_ns(), s.gpu_model, s.gpu_driver, s.cpu_model, s.cpu_cores, s.mem_total_mb, s.kernel,
             s.os_release, s.cuda_ver, s.python_ver, s.ingero_ver, s.pid_filter, s.flags, self.node, s.rank,
             s.local_rank, s.world_size, s.command))
        return int(cur.lastrowid or 0)

    # -- context manager ------------------------------------------------------------------------------
    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the hot path ---------------------------------------------------------------------------------
    def add_numbered(self, build: Callable[[int], list[tuple]], *, epoch: bool = False) -> int:
        """Write standard events numbered by the caller, the fastest way in: ``build(first)`` returns rows
        ``(seq, *Event fields 0..12)`` whose seq runs first, first + 1, ... (no probe values). Called under
        the writer's lock, so the numbers cannot be taken by anyone else meanwhile. Returns as
        :meth:`add_events`."""
        with self._lock:
            self._check_open()
            rows = build(self._seq + 1)
            self._write(rows, {}, epoch)
            self._seq += len(rows)
            return self._after_batch(len(rows), 0)

    def add_records(self, layout: RowLayout, raw: bytes) -> int:
        """Write the standard events held in ``raw`` (records of ``layout.record`` one after the other) in one
        transaction, numbered in order. No Python object per event: :data:`ROWS_PER_INSERT` records at a time
        are decoded into one flat tuple (one ``struct`` call) and bound to one multi-row INSERT whose rows
        number themselves from one parameter. Returns as :meth:`add_events`."""
        with self._lock:
            self._check_open()
            (many, rec_many), (one, rec_one) = self._laid.get(layout) or self._plan(layout)
            n, rest = divmod(len(raw), rec_one.size)
            if rest:
                raise StoreError(f"{len(raw)} bytes are not whole records of {layout.record}")
            full, cut, first = n - n % ROWS_PER_INSERT, (n - n % ROWS_PER_INSERT) * rec_one.size, self._seq + 1
            add = tuple.__add__
            parts = [(many, map(add, zip(count(first, ROWS_PER_INSERT)), rec_many.iter_unpack(raw[:cut])), full),
                     (one, map(add, zip(count(first + full)), rec_one.iter_unpack(raw[cut:])), n - full)]
            self._transaction([], {}, "", [p for p in parts if p[2]])
            self._seq += n
            return self._after_batch(n, 0)

    def _plan(self, layout: RowLayout) -> tuple[tuple[str, struct.Struct], tuple[str, struct.Struct]]:
        if len(self._laid) >= 64:  # layouts come and go with the thread names of the batches
            self._laid.clear()
        many, one = (layout.insert(k, _sql_literal(self._prefix), _sql_literal(self.node), self.clock.offset_ns)
                     for k in (ROWS_PER_INSERT, 1))
        self._laid[layout] = (many, one)
        return many, one

    def add_events(self, batch: Sequence[Sequence[Any]], *, epoch: bool = False) -> int:
        """Write one batch in one transaction (with anything queued by the other ``add_*`` calls).

        Returns the number of events this writer has committed so far; once it returns, the batch
        survives a crash of this process.
        """
        with self._lock:
            self._check_open()
            seq = self._seq
            rows: list[tuple] = []
            append = rows.append
            side: dict[int, list[tuple]] = {}
            counts = self._probe_counts
            probes = self._probes
            plain: list[tuple] = []         # probe events with 1..VALUE_SLOTS values, by arity
            if set(map(len, batch)) == {13}:  # standard events only: one C-speed pass
                rows = [(s, *r) for s, r in enumerate(batch, seq + 1)]
                seq += len(rows)
                batch = ()
            for r in batch:
                seq += 1
                if len(r) == 13:
                    append((seq, *r))
                    continue
                append((seq, *r[:13]))
                vals = r[13]
                if vals is None:
                    continue
                if r[3] != SOURCE_PROBE:
                    raise StoreError(f"event with values for source {r[3]}: only probe events (source "
                                     f"{SOURCE_PROBE}) carry values")
                plain.append((seq, r[4], *vals))
            if plain:
                ops = Counter(t[1] for t in plain)
                unknown = set(ops) - probes.keys()
                if unknown:
                    raise StoreError(f"probe events for op {min(unknown)}: not a registered probe",
                                     "register the probe with register_probe() and use its handle's op")
                for op, n in ops.items():
                    counts[op] = counts.get(op, 0) + n
                widths = {len(t) for t in plain}
                if len(widths) == 1 and next(iter(widths)) <= VALUE_SLOTS + 2:
                    side[next(iter(widths)) - 2] = plain
                else:
                    for t in plain:
                        k = len(t) - 2
                        if k > VALUE_SLOTS:
                            t = (*t[:VALUE_SLOTS + 2], go_json(list(t[VALUE_SLOTS + 2:])))
                            k = -1
                        side.setdefault(k, []).append(t)
            self._write(rows, side, epoch)
            self._seq = seq
            return self._after_batch(len(rows), sum(len(v) for v in side.values()))

    def _after_batch(self, events: int, probe_events: int) -> int:
        self._events += events
        self._probe_events += probe_events
        self._batches += 1
        if self.max_db_size and self._batches % self.check_every == 0:
            self._maybe_prune()
        return self._events

    def _write(self, rows: list[tuple], side: dict[int, list[tuple]], epoch: bool) -> None:
        ins = self._ins_epoch if epoch else self._ins_mono
        try:
            self._transaction(rows, side, ins)
        except _Unbindable:
            # an unsigned 64-bit value (a pointer, a stream handle) is stored as upstream does, reinterpreted
            # as a signed int64; a tuple/list/dict value (a recorded stack, an array) as compact JSON. Only
            # a batch that needs it pays for the second pass.
            self._transaction([_fix_row(r) for r in rows],
                              {k: [_fix_row(r) for r in v] for k, v in side.items()}, ins)

    def _transaction(self, rows: list[tuple], side: dict[int, list[tuple]], ins: str,
                     laid: Sequence[tuple[str, Iterable[tuple], int]] = ()) -> None:
        """One batch: ``rows`` in ``ins``; each of ``laid`` (INSERT, its parameter tuples, the rows they make:
        exactly as many, or nothing of the batch is written)."""
        c = self.conn
        try:
            c.execute("BEGIN")
            try:
                self._run_pending()
                if rows:
                    c.executemany(ins, rows)
                for sql, params, n in laid:
                    done = c.executemany(sql, params).rowcount
                    if done != n:
                        raise StoreError(f"a batch of {n} events gave {done} rows: not written")
                for k, srows in side.items():
                    c.executemany(self._side_insert(k), srows)
                if self._probe_counts:
                    c.executemany("UPDATE probes SET events = events + ? WHERE id = ?",
                                  [(n, pid) for pid, n in self._probe_counts.items()])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        except OverflowError as e:
            raise _Unbindable() from e
        except sqlite3.ProgrammingError as e:
            if "binding parameter" in str(e):
                raise _Unbindable() from e
            self._probe_counts.clear()
            raise StoreError(f"cannot write to {self.path}: {e}") from e
        except sqlite3.Error as e:
            self._probe_counts.clear()
            raise StoreError(f"cannot write to {self.path}: {e}") from e
        self._pending.clear()
        self._probe_counts.clear()

    def _side_insert(self, k: int) -> str:
        """The probe_values INSERT for rows (seq, probe_id, k values); k = -1: 8 values and the JSON rest."""
        sql = self._side_sql.get(k)
        if sql is None:
            cols = [f"v{i}" for i in range(VALUE_SLOTS)] + ["more"] if k < 0 else [f"v{i}" for i in range(k)]
            params = "".join(f", ?{i + 2}" for i in range(len(cols) + 1))     # probe_id, then the values
            sql = (f"INSERT INTO probe_values (seq, event_id, probe_id{''.join(', ' + c for c in cols)}) "
                   f"VALUES (?1, {_sql_literal(self._prefix)} || ?1{params})")
            self._side_sql[k] = sql
        return sql

    def _run_pending(self) -> None:
        for sql, prow in self._pending:
            self.conn.executemany(sql, prow)

    def flush(self) -> None:
        """Commit everything queued (stacks, snapshots, names, lost counts, aggregates) now."""
        with self._lock:
            self._check_open()
            if self._pending or self._probe_counts:
                self._write([], {}, False)

    # -- other rows (queued, committed with the next batch or flush) -------------------------------------
    def _queue(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            self._pending.append((sql, rows))

    def add_stack(self, frames: Sequence[Frame] = (), ips: Sequence[int] = ()) -> int:
        """Intern a stack; returns its ``stack_hash`` (0 for an empty stack).

        With any resolved frame the hash is upstream's symbol hash and ``frames`` is stored; otherwise
        the IP hash with ``ips``. Each stack is stored once (deduplicated by hash, memoised by content).
        """
        key = (tuple(frames), tuple(ips))
        with self._lock:
            self._check_open()
            h = self._stack_memo.get(key)
            if h is not None:
                return h
            fr = frames_json(frames) if frames else ""
            if fr:
                h = stack_hash_frames(frames)
                row = (h, "", fr)
            else:
                addrs = list(ips) or [f.ip for f in frames if f.ip]
                if not addrs:
                    return 0
                h = stack_hash_ips(addrs)
                row = (h, go_json([f"0x{a:x}" for a in addrs]), "")
            if len(self._stack_memo) > 100_000:
                self._stack_memo.clear()
            self._stack_memo[key] = h
            if h not in self._known_stacks:
                self._known_stacks.add(h)
                # a resolved stack replaces an IP-only row of the same hash (upstream's upgrade path)
                self._queue("INSERT OR REPLACE INTO stack_traces (hash, ips, frames) VALUES (?, ?, ?)", [row])
            return h

    def add_snapshot(self, snap: SystemSnapshot) -> None:
        with self._lock:
            self._check_open()
            self._queue("INSERT OR IGNORE INTO system_snapshots (timestamp, cpu_pct, mem_pct, mem_avail, swap_mb, "
                        "load_avg) VALUES (?, ?, ?, ?, ?, ?)",
                        [(snap.timestamp, snap.cpu_pct, snap.mem_pct, snap.mem_avail_mb, snap.swap_mb,
                          snap.load_avg)])

    def add_process_names(self, names: Mapping[int, str], seen_at: int | None = None) -> None:
        with self._lock:
            self._check_open()
            t = seen_at if seen_at is not None else time.time_ns()
            self._queue("INSERT OR REPLACE INTO process_names (pid, name, seen_at) VALUES (?, ?, ?)",
                        [(int(p), str(n), t) for p, n in names.items()])

    def add_aggregates(self, aggs: Iterable[Aggregate], *, five_second: bool = False) -> None:
        table = "event_aggregates_5s" if five_second else "event_aggregates"
        with self._lock:
            self._check_open()
            self._queue(
                f"INSERT INTO {table} (bucket, source, op, pid, count, stored, sum_dur, min_dur, max_dur, "
                "sum_arg0) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, source, op, pid) DO UPDATE "
                "SET count = count + excluded.count, stored = stored + excluded.stored, "
                "sum_dur = sum_dur + excluded.sum_dur, min_dur = MIN(min_dur, excluded.min_dur), "
                "max_dur = MAX(max_dur, excluded.max_dur), sum_arg0 = sum_arg0 + excluded.sum_arg0",
                [(a.bucket, a.source, a.op, a.pid, a.count, a.stored, a.sum_dur, a.min_dur, a.max_dur,
                  a.sum_arg0) for a in aggs])

    def add_lost(self, count: int, reason: str, *, probe_id: int = 0, source: int = 0,
                 timestamp: int | None = None) -> None:
        """Record ``count`` events lost (ring buffer full, rate limit, budget...): never silent."""
        if count <= 0:
            return
        with self._lock:
            self._check_open()
            self._lost += count
            t = timestamp if timestamp is not None else time.time_ns()
            self._queue("INSERT INTO lost_events (timestamp, session_id, probe_id, source, reason, count) "
                        "VALUES (?, ?, ?, ?, ?, ?)", [(t, self.session_id, probe_id, source, reason, count)])
            self._queue("UPDATE sessions SET lost_events = lost_events + ? WHERE id = ?",
                        [(count, self.session_id)])
            if probe_id:
                self._queue("UPDATE probes SET lost = lost + ? WHERE id = ?", [(count, probe_id)])

    # -- probes ---------------------------------------------------------------------------------------
    def register_probe(self, info: ProbeInfo, *, waiting: ProbeHandle | None = None) -> ProbeHandle:
        """Add a dynamic probe (committed at once): its ``probes`` row, ``ops`` row and view. ``waiting``: a
        probe registered while it waited for its library (no fields or symbols yet), completed now under
        the same id (row, op and view)."""
        names = tuple(f.name for f in info.fields)
        if len(set(names)) != len(names):
            raise StoreError(f"probe {info.name}: a field is recorded twice ({', '.join(names)})")
        with self._lock:
            self._check_open()
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                fields = [{"name": f.name, "type": f.type,
                           "column": f"v{i}" if i < VALUE_SLOTS else f"more[{i - VALUE_SLOTS}]"}
                          for i, f in enumerate(info.fields)]
                if waiting is not None:
                    pid_, view = waiting.probe_id, waiting.view
                    c.execute("UPDATE probes SET spec = ?, fields = ?, library = ?, symbols = ? WHERE id = ?",
                              (info.spec, go_json(fields), info.library, go_json(list(info.symbols)), pid_))
                    c.execute(f'DROP VIEW IF EXISTS "{view}"')
                else:
                    pid_ = int(c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM probes").fetchone()[0])
                    view = self._view_name(info.name, pid_)
                    c.execute("INSERT INTO probes (id, name, session_id, source, op, spec, fields, library, symbols, "
                              "status, started_at, view) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)",
                              (pid_, info.name, self.session_id, SOURCE_PROBE, pid_, info.spec, go_json(fields),
                               info.library, go_json(list(info.symbols)), time.time_ns(), view))
                desc = info.description or _probe_description(info)
                c.execute("INSERT OR REPLACE INTO ops (source_id, op_id, name, description) VALUES (?, ?, ?, ?)",
                          (SOURCE_PROBE, pid_, info.name, desc))
                c.execute(_view_sql(view, pid_, names, info.at_return))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            h = ProbeHandle(pid_, info.name, SOURCE_PROBE, pid_, names, view)
            self._probes[pid_] = h
            return h

    def _view_name(self, name: str, probe_id: int) -> str:
        base = "probe_" + re.sub(r"\W", "_", name, flags=re.ASCII)
        taken = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master")}
        return base if base not in taken else f"{base}_{probe_id}"

    def set_probe_aggregates(self, probe: ProbeHandle | int, rows: Iterable[tuple[Mapping, int, Mapping, Mapping]]
                             ) -> None:
        """Store a probe's in-kernel aggregation as last read: (key by field, count, sum/min/max by name,
        log2 histograms by name) per group; a later call replaces the groups it names."""
        pid_ = probe.probe_id if isinstance(probe, ProbeHandle) else int(probe)
        now = time.time_ns()
        with self._lock:
            self._check_open()
            self._queue("INSERT OR REPLACE INTO probe_aggregates (probe_id, key, count, aggs, hists, read_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [(pid_, go_json(dict(key)), int(count), go_json(dict(aggs)), go_json(dict(hists)), now)
                         for key, count, aggs, hists in rows])
            self._write([], {}, False)

    def end_probe(self, probe: ProbeHandle | int, reason: str, status: str = "detached") -> None:
        """Mark a probe ended (``status`` detached/expired/failed...) and why (TTL, event budget, user)."""
        pid_ = probe.probe_id if isinstance(probe, ProbeHandle) else int(probe)
        with self._lock:
            self._check_open()
            self._queue("UPDATE probes SET status = ?, ended_at = ?, end_reason = ? WHERE id = ? AND ended_at = 0",
                        [(status, time.time_ns(), reason, pid_)])
            self._write([], {}, False)
            # still known: events already in the ring buffer when it was detached are stored as they drain

    # -- causal chains ---------------------------------------------------------------------------------
    def record_chains(self, chains: Iterable[ChainLike], detected_at: int | None = None) -> None:
        """Store chains as upstream does (``INSERT OR REPLACE`` by id, derived columns filled)."""
        t = detected_at if detected_at is not None else time.time_ns()
        rows = []
        for ch in chains:
            cid = ch.id if ":" in ch.id else f"{self.node}:{ch.id}"
            last = ch.timeline[-1] if ch.timeline else None
            op = str(getattr(last, "op", "")) if last is not None else ""
            p99 = int(getattr(last, "dur_us", 0) or 0) if last is not None else 0
            ratio = float(ch.tail_ratio or 0.0)
            p50 = int(p99 / ratio) if ratio > 0 else 0
            tl = [{k: v for k, v in (("layer", e.layer), ("op", e.op), ("detail", e.detail),
                                     ("dur_us", getattr(e, "dur_us", 0))) if k != "dur_us" or v}
                  for e in ch.timeline]
            rows.append((cid, t, ch.severity, ch.summary, ch.root_cause, ch.explanation,
                         go_json(list(ch.recommendations)), op, p99, p50, ratio, go_json(tl),
                         cid.split(":", 1)[0]))
        with self._lock:
            self._check_open()
            self._queue("INSERT OR REPLACE INTO causal_chains (id, detected_at, severity, summary, root_cause, "
                        "explanation, recommendations, cuda_op, cuda_p99_us, cuda_p50_us, tail_ratio, timeline, "
                        "node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._write([], {}, False)

    def expire_chains(self, max_age_ns: int, now: int | None = None) -> None:
        """Delete chains detected more than ``max_age_ns`` ago (upstream: 2 minutes, on a tick without chains)."""
        t = (now if now is not None else time.time_ns()) - max_age_ns
        with self._lock:
            self._check_open()
            self._queue("DELETE FROM causal_chains WHERE detected_at < ?", [(t,)])
            self._write([], {}, False)

    # -- size cap -------------------------------------------------------------------------------------
    def db_bytes(self) -> int:
        return dbfile.db_bytes(self.path)

    def _maybe_prune(self) -> None:
        deleted, passes = dbfile.prune(self.conn, self.path, self.max_db_size)
        if passes:
            self._known_stacks = {h for (h,) in self.conn.execute("SELECT hash FROM stack_traces")}
            self._stack_memo.clear()
            self._pruned += deleted
            self._prunes += passes

    # -- status and closing -----------------------------------------------------------------------------
    @property
    def stats(self) -> WriterStats:
        return WriterStats(self._events, self._probe_events, self._batches, self._lost, self._pruned,
                           self._prunes, self.db_bytes())

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the writer of {self.path} is closed")

    def close(self, index_budget_s: float | None = None) -> None:
        """Flush, end the session and still-active probes, build deferred indexes, empty the -wal.

        ``index_budget_s``: give up building deferred indexes after this long (the file is complete and
        readable without them; :attr:`indexes_missing` names them, and a warning is logged)."""
        with self._lock:
            if self._closed:
                return
            try:
                now = time.time_ns()
                self._queue("UPDATE probes SET status = 'ended', ended_at = ?, end_reason = 'session ended' "
                            "WHERE session_id = ? AND ended_at = 0", [(now, self.session_id)])
                self._queue("UPDATE sessions SET stopped_at = ? WHERE id = ?", [(now, self.session_id)])
                self._write([], {}, False)
                self.indexes_missing = dbfile.build_indexes(self.conn, self.path, self._deferred, index_budget_s)
                self._deferred = []
                if not self.indexes_missing:
                    self.conn.execute("PRAGMA optimize")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._closed = True
                self.conn.close()


# --- helpers -------------------------------------------------------------------------------------------
def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _view_sql(view: str, probe_id: int, fields: tuple[str, ...], at_return: bool) -> str:
    # an entry-only probe never saw the return: its events' duration and ret_code are upstream's 0 filler
    ret = ("e.duration AS latency", "e.ret_code AS retval") if at_return else ("NULL AS latency", "NULL AS retval")
    cols = ["e.id AS event_id", "e.timestamp", "e.pid", "e.tid", PROBE_VIEW_COMM, *ret, "e.stack_hash"]
    for i, col in enumerate(view_columns(fields)):
        expr = f"pv.v{i}" if i < VALUE_SLOTS else f"json_extract(pv.more, '$[{i - VALUE_SLOTS}]')"
        cols.append(f'{expr} AS "{col.replace(chr(34), chr(34) * 2)}"')
    return (f'CREATE VIEW IF NOT EXISTS "{view}" AS SELECT {", ".join(cols)} FROM probe_values pv '
            f"JOIN events e ON e.id = pv.event_id WHERE pv.probe_id = {int(probe_id)}")


def _probe_description(info: ProbeInfo) -> str:
    syms = ", ".join(info.symbols[:3]) + (f" (+{len(info.symbols) - 3})" if len(info.symbols) > 3 else "")
    where = f"{info.library}:{syms}" if info.library else syms
    return f"Dynamic probe {info.name}" + (f" on {where}" if where else "") + " (ingero DSL)"


class _Unbindable(Exception):
    """A batch holds a value sqlite3 cannot bind as is (u64 above int64, a tuple...)."""


def _fix_value(v: Any) -> Any:
    if type(v) is int:
        return v - U64 if v > I64_MAX else v
    if isinstance(v, (tuple, list, dict)):
        return go_json(v if not isinstance(v, tuple) else list(v))
    if isinstance(v, (str, bytes, float, int)) or v is None:
        return v
    return str(v)


def _fix_row(row: tuple) -> tuple:
    return tuple(_fix_value(v) for v in row)


__all__ = ["EventWriter"]
