"""A live tracing session: the standard probe set on a process tree, streamed into a trace database.

``TraceSession`` starts the target (``command``) or follows running ``pids``, attaches the standard probe
set (:class:`~ingero.tracer.standard.StandardTracer`), and on every tick (``batch_ms``) moves what the
kernel recorded into the database through :class:`~ingero.store.EventWriter` (one transaction per batch):
CUDA/driver calls with resolved stacks, host events, process names, lost-event counts. It scans for
libraries loaded late, recomputes causal chains every ``chains_every_s`` and stores them as upstream
does, and stops when the duration has passed, every traced process has exited, or :meth:`stop` is called
(from a signal handler: it only sets a flag). ``close()`` flushes everything, detaches every probe and
ends the session row; it is idempotent. The library never prints; :meth:`snapshot` feeds a live view.

Ingest rate (bench/bench_trace_ingest.py: 400k events/s sustained, no drop, on 2 vCPUs): a tick takes at most
a few thousand records per ring; without stacks the calls go from their raw records to the database with no
Python object per call (:mod:`ingero.tracer.calls`, ``EventWriter.add_records``: 64 to an INSERT), with
stacks they are decoded in bulk, numbered and written in one ``executemany``; upstream's
secondary ``events`` indexes are built at close rather than per row (a SIGKILLed trace leaves a complete
file without them; after Ctrl-C the build gets what is left of :data:`INTERRUPTED_CLOSE_S`); the causal
chain analysis, which reads the whole database meanwhile nothing drains the rings, waits while the event
rate would overflow the CUDA ring during it (it runs at the end of the trace in any case).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import TYPE_CHECKING

from ingero.errors import IngeroError, NoSuchProcess
from ingero.host import session_facts
from ingero.runtime.spawn import spawn_gated

if TYPE_CHECKING:
    from ingero.store.records import RowLayout
    from ingero.tracer.calls import CallRecords

log = logging.getLogger(__name__)


#: after Ctrl-C, how long closing may spend draining and building the deferred indexes before giving up on
#: the indexes (the file is complete without them; a writer appending to it later builds them)
INTERRUPTED_CLOSE_S = 1.2


@dataclass(frozen=True)
class TraceOptions:
    db: Path
    duration_s: float | None = None
    stacks: bool = True
    python_frames: bool = True  # with stacks: the calling thread's Python frames too (ingero.pyframes)
    batch_ms: int = 100
    scan_every_s: float = 0.1
    chains_every_s: float = 5.0
    max_db_size: int = 0
    ringbuf_pages: int = 4096  # 16 MiB: a 400 MiB allocation burst (102,400 page allocations) fits whole
    selective: bool = False  # upstream's selective storage (see ingero.tracer.selective)
    preattach: bool = True  # attach to every libcudart/libcuda on the search paths at start
    probe_specs: tuple[tuple[str, str], ...] = ()  # (name, DSL text) attached at start
    probe_limits: object = None  # ingero.tracer.policy.ProbeLimits; None = the defaults
    cuda_ringbuf_pages: int = 4096  # 16 MiB: ~0.5 s of calls at 400k/s, a stall of the writer absorbed


@dataclass
class Snapshot:
    """What the live view shows: totals so far and the rate over the last tick."""

    elapsed_s: float
    events: int
    stored: int
    rate: float
    by_op: Counter
    lost: dict
    libraries: list[str]
    processes: set[int]
    chains: int
    stopped_because: str = ""
    #: CUDA/driver calls per innermost Python frame ("file:line in function"), with Python frames on
    python_lines: Counter = field(default_factory=Counter)
    held: int = 0  # new processes of the tree held at their first return from fork until probed
    held_max_ms: float = 0.0
    lib_held: int = 0  # processes of a command held at the open of a CUDA library until probed
    lib_held_max_ms: float = 0.0
    unlinked: dict = field(default_factory=dict)  # pid -> why it ran on without its probes


@dataclass
class _Totals:
    events: int = 0
    stored: int = 0
    by_op: Counter = field(default_factory=Counter)
    chains: int = 0
    python_lines: Counter = field(default_factory=Counter)


class TraceSession:
    def __init__(self, options: TraceOptions, *, pids: Sequence[int] = (), command: Sequence[str] = (),
                 command_stdout=None, metrics=None, command_detached: bool = False) -> None:
        if pids and command:
            raise IngeroError("trace either running processes (--pid) or a command (-- CMD ARGS), not both")
        if not pids and not command:
            raise IngeroError("nothing to trace: give --pid N or a command after --",
                              hint="e.g. ingero trace -- python train.py")
        for pid in pids:
            if not Path(f"/proc/{pid}").exists():
                raise NoSuchProcess(f"no process with pid {pid}", hint="list processes with `ps -e`")
        self.options = options
        self.pids = [int(p) for p in pids]
        self.command = list(command)
        self.command_stdout = command_stdout
        self.command_detached = command_detached
        self.metrics = metrics  # ingero.fleet.metrics.FleetMetrics fed once per batch, or None
        self.child: subprocess.Popen | None = None
        self.tracer = None
        self.writer = None
        self._symbolizer = None
        self._stack_hashes: dict[tuple[int, int, int], int] = {}
        self._py_lines: dict[int, str] = {}  # stack hash -> its innermost Python frame
        self._names: dict[int, str] = {}
        self._lost_written: dict[str, int] = {}
        self._totals = _Totals()
        self._chains_cost_s = 1e-6  # seconds per stored event of one chain analysis (measured as it runs)
        self._selective = None
        self.dynamic = None
        self._watcher = None
        self._stop = threading.Event()
        self.stopped_because = ""
        self._t0 = 0.0
        self._closed = False

    # -- start / stop ----------------------------------------------------------------------------------
    def start(self) -> TraceSession:
        from ingero.runtime.kernel import bpf_problem
        from ingero.store import EventWriter, SessionInfo
        from ingero.tracer.standard import StandardTracer
        from ingero.tracer.symbolize import StackSymbolizer

        problem = bpf_problem()
        if problem:
            from ingero.errors import BpfUnavailable

            raise BpfUnavailable(f"cannot trace here: {problem}")
        held = None
        if self.command:
            held = spawn_gated(self.command, stdout=self.command_stdout, detached=self.command_detached)
            self.child = held.proc
            self.pids = [self.child.pid]
        try:
            info = SessionInfo(
                **session_facts(),
                command=" ".join(self.command) if self.command else "",
                pid_filter=",".join(map(str, self.pids)),
                flags="stacks" if self.options.stacks else "",
            )
            self.writer = EventWriter(self.options.db, session=info, max_db_size=self.options.max_db_size,
                                      defer_indexes=True)
            if self.metrics is not None:
                self.metrics.to_epoch = self.writer.clock.to_epoch
            self._symbolizer = StackSymbolizer()
            if self.options.selective:
                from ingero.tracer.selective import SelectiveStorage

                self._selective = SelectiveStorage()
            self.tracer = StandardTracer(self.pids, stacks=self.options.stacks,
                                         python_frames=self.options.python_frames,
                                         ringbuf_pages=self.options.ringbuf_pages,
                                         cuda_ringbuf_pages=self.options.cuda_ringbuf_pages).start()
            from ingero.runtime.libwatch import LibraryWatcher, WatchName, not_holdable
            from ingero.tracer.dynamic import DynamicProbes

            # each process of the tree is held at each open of a watched library until the probes are on
            # that file: the standard set and the DSL probes bind to the copies it really loads, from its
            # first call -- a --pid root that is the foreground job of a terminal excepted (never stopped:
            # its shell would take the stop for a Ctrl-Z; calls right after such a late load may be missed)
            self._watcher = LibraryWatcher(hold=True).start()
            for pid in self.pids:
                self._watcher.follow(pid, hold=bool(self.command) or not_holdable(pid) is None)
            self._watcher.watch([WatchName("libcudart", True), WatchName("libcuda", True)])
            if not self.command and self.options.preattach:
                self.tracer.attach_known()
            self.dynamic = DynamicProbes(self.writer, pid=self.pids[0] if len(self.pids) == 1 else None,
                                         limits=self.options.probe_limits, tree_filter=True,
                                         tree=self.tracer, metrics=self.metrics, watcher=self._watcher)
            for name, text in self.options.probe_specs:
                # a command has not loaded anything yet: checked on the search paths, bound when it maps it;
                # a library found nowhere is waited for, the probe checked against the copy the tree loads
                result = self.check_spec(text, name, in_process=not self.command, may_wait=True)
                self.dynamic.add(result, owner="command line")
            if self._watcher is not None:
                # held processes are bound and let go on a thread of their own: a stalled main loop (the
                # writer, the live view) never leaves one stopped
                self._watcher.serve(self._bind_load)
        except BaseException:
            if held is not None:
                held.cancel()
                self.child.wait()
            self.close()
            raise
        self._t0 = time.monotonic()
        if held is not None:
            held.release()
        return self

    def stop(self, why: str = "stopped") -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        if not self.stopped_because:
            self.stopped_because = why
        self._stop.set()

    def run(self, on_tick: Callable[[Snapshot], None] | None = None) -> Snapshot:
        """Trace until the duration passes, every traced process exits, or :meth:`stop`; then close."""
        opts = self.options
        last_scan = last_chains = time.monotonic()
        last_events, last_t = 0, time.monotonic()
        chains_events = 0
        try:
            while not self._stop.is_set():
                self._tick(opts.batch_ms)
                now = time.monotonic()
                if now - last_scan >= opts.scan_every_s:
                    self.tracer.scan()
                    for pid in self.tracer.followed():
                        self._symbolizer.refresh(pid)
                    last_scan = now
                    if not self._alive():
                        self._tick(0)
                        self.stop("the traced processes exited")
                if now - last_chains >= opts.chains_every_s:
                    if self._chains_fit((self._totals.events - chains_events) / max(now - last_chains, 1e-6)):
                        self._chains()
                    last_chains, chains_events = now, self._totals.events
                if opts.duration_s is not None and now - self._t0 >= opts.duration_s:
                    self.stop(f"duration {opts.duration_s:g} s reached")
                if on_tick:
                    rate = (self._totals.events - last_events) / max(now - last_t, 1e-6)
                    last_events, last_t = self._totals.events, now
                    on_tick(self.snapshot(rate))
        finally:
            self.close()
        return self.snapshot(0.0)

    def _alive(self) -> bool:
        if self.child is not None and self.child.poll() is None:
            return True
        return bool(self.tracer.followed())

    def _lost_so_far(self) -> dict[str, int]:
        """Lost events per ring: the standard set's, and every DSL probe's together ("probes")."""
        lost = dict(self._lost_written)
        probes = self.dynamic.lost if self.dynamic is not None else 0
        if probes:
            lost["probes"] = probes
        return lost

    def snapshot(self, rate: float = 0.0) -> Snapshot:
        t = self._totals
        follower = self.tracer.follower if self.tracer is not None else None
        watcher = self._watcher
        return Snapshot(
            elapsed_s=time.monotonic() - self._t0 if self._t0 else 0.0,
            events=t.events,
            stored=t.stored,
            rate=rate,
            by_op=Counter(t.by_op),
            lost=self._lost_so_far(),
            libraries=[lib.path for lib in list(self.tracer.libraries.values())] if self.tracer else [],
            processes=self.tracer.followed() if self.tracer and self.tracer.loaded else set(),
            chains=t.chains,
            stopped_because=self.stopped_because,
            python_lines=Counter(t.python_lines),
            held=follower.held if follower else 0,
            held_max_ms=follower.held_max_ns / 1e6 if follower else 0.0,
            lib_held=watcher.holds if watcher else 0,
            lib_held_max_ms=watcher.hold_max_ns / 1e6 if watcher else 0.0,
            unlinked={**(follower.unlinked if follower else {}), **(watcher.early if watcher else {})},
        )

    # -- the tick --------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has begun (the trace stops taking probes)."""
        return self._closed

    def check_spec(self, text: str, name: str = "<spec>", *, in_process: bool = True, may_wait: bool = False):
        """Check a DSL spec against the libraries the traced process mapped (``in_process``, when there is
        one traced process) or this machine's search paths (``may_wait``: a library found nowhere is waited
        for, see :meth:`DynamicProbes.wait_for`). Returns the :class:`~ingero.dsl.CheckResult`."""
        from ingero.dsl import check

        pid = self.pids[0] if in_process and len(self.pids) == 1 else None
        return check(text, name, pid=pid, lookups=self.lookups, may_wait=may_wait and self._watcher is not None)

    @property
    def lookups(self):
        """Where a DSL spec's libraries are looked up: what the traced process mapped, else the search path
        (the library watcher binds the probe to the copy the tree maps, when it maps it)."""
        from ingero.dsl.lookup import MACHINE, TreeLookups

        return TreeLookups() if self._watcher is not None else MACHINE

    def attach_spec(self, spec, *, owner: str = "") -> list:
        """Widen the trace: attach the probes of a checked spec now (see :class:`DynamicProbes`)."""
        if self.dynamic is None or self._closed:
            raise IngeroError("the trace is not running")
        return self.dynamic.attach(spec, owner=owner)

    def add_checked(self, result, *, owner: str = "", policy=None) -> list:
        """Widen the trace with a spec checked with ``may_wait``: its resolved probes attached now, those
        whose library was found nowhere waiting for it in the traced tree (see :meth:`DynamicProbes.add`;
        ``policy``: a :class:`~ingero.tracer.policy.BindPolicy` judging them on the file the tree loads)."""
        if self.dynamic is None or self._closed:
            raise IngeroError("the trace is not running")
        return self.dynamic.add(result, owner=owner, policy=policy)

    def _bind_load(self, load) -> None:
        """A traced process opened a watched library (called on the watcher's thread, the process held):
        put the standard set and the waiting DSL probes on that file; the watcher then lets it go."""
        from ingero.runtime.libwatch import loaded_library

        try:
            lib = loaded_library(load)
            if lib is not None:
                self.tracer.consider(lib)
                self.dynamic.offer(lib)
        except IngeroError as e:
            log.info("cannot probe %s opened by %d: %s", load.path, load.pid, e)
        finally:
            # held before its first CUDA call: its libpython is mapped by now, so its Python frames
            # are walked from that call on (the exec event came before the loader mapped it)
            self.tracer.look_for_python(load.pid)

    def _tick(self, timeout_ms: int) -> int:
        """Move one batch from the kernel to the database; returns how many events it held."""
        cuda, host = self.tracer.poll(timeout_ms)
        if self.dynamic is not None:
            probed = self.dynamic.tick()
            self._totals.events += probed
            self._totals.stored += probed
        if not cuda and not host:
            self._record_lost()
            return 0
        for h in host:
            if h.op_name == "process_fork":
                self._symbolizer.inherit(h.pid, h.arg1)
        if self.metrics is not None:  # per batch: the calls as numpy columns, host events by op
            self.metrics.observe_calls(cuda, cuda.raw)
            if host:
                from ingero.store.schema import op_name

                by_code = Counter(map(attrgetter("source", "op"), host))  # named once per op, not per event
                self.metrics.observe_counts({(src, op_name(src, op)): k for (src, op), k in by_code.items()})

        def host_rows(seq: int) -> list[tuple]:  # numbered rows: (seq, *Event fields)
            rows = []
            for h in host:
                rows.append((seq, h.ts_ns, h.pid, h.tid, h.source, h.op, h.duration_ns, 0, h.arg0, h.arg1, 0, 0,
                             h.comm, 0))
                seq += 1
                self._totals.by_op[h.op_name] += 1
                if h.op_name != "sched_wakeup":
                    self._note_name(h.pid, h.comm)
            return rows

        def build(first: int) -> list[tuple]:
            rows = self._cuda_rows(cuda, first) if cuda else []
            return rows + host_rows(first + len(rows))

        n = len(cuda) + len(host)
        if self._selective is not None:
            to_epoch, sel = self.writer.clock.to_epoch, self._selective
            rows = [r[1:] for r in build(0)
                    if sel.decide(to_epoch(r[1]), r[4], r[5], r[2], r[6], r[8], r[11], r[10])]
            self.writer.add_aggregates(sel.take_aggregates())
            self.writer.add_events(rows)
            self._totals.stored += len(rows)
        else:
            layout = self._call_layout(cuda) if cuda else None
            if layout is not None:  # the calls bound straight from their records, then the host events
                self.writer.add_records(layout, cuda.raw)
                if host:
                    self.writer.add_numbered(host_rows)
            else:
                self.writer.add_numbered(build)  # built under the writer's lock, numbered as it goes
            self._totals.stored += n
        self._totals.events += n
        self._record_lost()
        return n

    def _call_layout(self, cuda: CallRecords) -> RowLayout | None:
        """Note the calls' process names, resolve their stacks and count them by op; the layout that stores them
        straight from their records, or None when they carry too many thread names or stacks for it."""
        from ingero.tracer.calls import MAX_LAID_NAMES, MAX_LAID_STACKS, call_layout

        comms = self._names_of(cuda)
        if len(comms) > MAX_LAID_NAMES:
            return None  # (counted as its rows are made)
        stacks = None
        if self.options.stacks:
            found = cuda.stacks()
            if len(found) > MAX_LAID_STACKS:
                return None
            sh, lines = self._stack_hash, self._totals.python_lines
            stacks = {}
            for pid, sid, py, k in found:
                h = stacks[(pid, sid, py)] = sh(pid, sid, py) if sid >= 0 or py else 0
                line = self._py_lines.get(h)
                if line:
                    lines[line] += k
        # counted once the stacks are resolved: a watcher of the counts may then let the processes exit
        self._count_ops(cuda)
        return call_layout(comms, stacks)

    def _names_of(self, cuda: CallRecords) -> dict[bytes, str]:
        """Note the process names of a batch of calls, once per batch, not per event; raw comm -> name."""
        comms: dict[bytes, str] = {}
        for pid, raw in cuda.names():  # in order: the latest name wins
            comm = comms.get(raw)
            if comm is None:
                comm = comms[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
            self._note_name(pid, comm)
        return comms

    def _count_ops(self, cuda: CallRecords) -> None:
        from ingero.store.schema import op_name

        by_op = self._totals.by_op
        for source, op, k in cuda.op_counts():
            by_op[op_name(source, op)] += k

    def _cuda_rows(self, cuda: CallRecords, first: int) -> list[tuple]:
        """The ``events`` rows ``(seq, *Event fields)``, seq from ``first``, of a batch of calls, counting ops
        and noting process names once per batch, not per event."""
        comms = self._names_of(cuda) if cuda else {}
        if self.options.stacks:
            sh = self._stack_hash
            rows = [(seq, ts, pid, tid, src, op, dur, 0, a0, a1, ret,
                     sh(pid, sid, py) if sid >= 0 or py else 0, comms[c], 0)
                    for seq, (ts, dur, pid, tid, src, op, ret, a0, a1, sid, py, c) in enumerate(cuda, first)]
        else:
            rows = [(seq, ts, pid, tid, src, op, dur, 0, a0, a1, ret, 0, comms[c], 0)
                    for seq, (ts, dur, pid, tid, src, op, ret, a0, a1, _, _, c) in enumerate(cuda, first)]
        if self._py_lines:
            lines = self._totals.python_lines
            for h, k in Counter(map(itemgetter(11), rows)).items():
                line = self._py_lines.get(h)
                if line:
                    lines[line] += k
        # counted once the stacks are resolved: a watcher of the counts may then let the processes exit
        self._count_ops(cuda)
        return rows

    def _note_name(self, pid: int, comm: str) -> None:
        if comm and self._names.get(pid) != comm:
            self._names[pid] = comm
            self.writer.add_process_names({pid: comm})

    def _stack_hash(self, pid: int, stack_id: int, py_stack: int = 0) -> int:
        """The stored stack of a call: its native frames (``stack_id``) with its Python frames (``py_stack``)
        merged in (resolved once per distinct pair and process)."""
        key = (pid, stack_id, py_stack)
        h = self._stack_hashes.get(key)
        if h is None:
            from ingero.pyframes import merge
            from ingero.store import Frame

            ips = self.tracer.stack_ips(stack_id) if stack_id >= 0 else []
            frames = [Frame(ip=f.ip, symbol=f.symbol, file=f.file) for f in self._symbolizer.resolve(pid, ips)]
            py = self.tracer.python_stack(pid, py_stack)
            if py is not None:
                frames = merge(frames, py, Frame)
            h = self.writer.add_stack(frames=frames, ips=ips) if frames or ips else 0
            if py is not None and py.frames:
                f = py.frames[0]
                where = f"{f.filename}:{f.line}" if f.line else f.filename
                self._py_lines[h] = f"{where} in {f.qualname}"
            if py is None or not py.missing:  # a stack whose Python part could not be read is tried again
                self._stack_hashes[key] = h
        return h

    def _record_lost(self) -> None:
        lost = self.tracer.lost()
        if self.metrics is not None:
            self.metrics.set_lost(lost)
        for ring, n in lost.items():
            delta = n - self._lost_written.get(ring, 0)
            if delta > 0:
                self.writer.add_lost(delta, f"{ring} ring buffer full")
                self._lost_written[ring] = n

    def _chains_fit(self, rate: float) -> bool:
        """Can the chain analysis run now without the CUDA ring overflowing meanwhile? It reads the whole
        database (~1 µs an event here) while nothing drains the rings: at a high event rate it waits for a
        quieter moment (or the end of the trace) rather than cost events."""
        import mmap

        from ingero.tracer.calls import CUDA_RECORD

        ring_events = self.options.cuda_ringbuf_pages * mmap.PAGESIZE // CUDA_RECORD.size
        return self._chains_cost_s * self._totals.stored * rate < ring_events / 2

    def _chains(self) -> None:
        t0 = time.monotonic()
        try:
            self._chains_run()
        finally:
            self._chains_cost_s = max(1e-7, (time.monotonic() - t0) / max(self._totals.stored, 1))

    def _chains_run(self) -> None:
        from ingero.analysis.chains import replay_chains
        from ingero.store import TraceReader

        self.writer.flush()
        try:
            reader = TraceReader.open(self.options.db, live=True)
            try:
                chains, _ = replay_chains(reader)
            finally:
                reader.close()
        except Exception:  # noqa: BLE001 - a failed analysis must not stop the recording
            log.exception("causal chain analysis failed")
            return
        if self.metrics is not None:
            self.metrics.set_chains(chains)
        if chains:
            self.writer.record_chains(chains)
        else:
            self.writer.expire_chains(120 * 1_000_000_000)
        self._totals.chains = len(chains)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        t_close = time.monotonic()
        try:
            if self._watcher is not None:
                self._watcher.close()  # continues any process still held at an open
            if self.tracer is not None and self.tracer.loaded and self.writer is not None:
                try:
                    # detach first, so the rest is bounded by what the ring buffers hold, then drain them
                    if self.dynamic is not None:
                        self.dynamic.end_all(self.stopped_because or "the trace ended")
                    self.tracer.detach()
                    while self._tick(0):
                        pass
                    if self.stopped_because != "interrupted":  # Ctrl-C wants out now: periodic chains stand
                        self._chains()
                finally:
                    self.tracer.close()
        finally:
            if self.dynamic is not None:
                try:
                    self.dynamic.close(self.stopped_because or "the trace ended")
                except Exception:  # noqa: BLE001 - the database must still be closed
                    log.exception("closing the dynamic probes failed")
            if self.tracer is not None:
                self.tracer.close()
            if self.writer is not None and not self.writer.closed:
                # the secondary indexes are built now (deferred while tracing, for the insert rate); Ctrl-C
                # wants out within 2 s: past that, the file is left complete but without them
                budget = None
                if self.stopped_because == "interrupted":
                    budget = max(0.0, INTERRUPTED_CLOSE_S - (time.monotonic() - t_close))
                self.writer.close(index_budget_s=budget)
            if self.child is not None and self.child.poll() is None and self.stopped_because.startswith("dur"):
                pass  # a command outlives a --duration trace unless the user stops it
