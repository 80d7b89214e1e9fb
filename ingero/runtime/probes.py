"""Run compiled probe specs: load with bcc, attach with uprobe_multi links, read events and aggregates,
enforce budgets, detach.

One :class:`ProbeSession` holds one compiled spec (one BPF object). Each probe gets one entry link and,
if it needs return values or latency, one return link on its library file; the attach cookie of each
offset is the symbol's index in the probe. Detaching a probe closes its links; its counters and
aggregation maps stay readable until the session closes.

Budgets: ``rate`` is enforced in the kernel (dropped calls are counted); ``events`` is counted in the
kernel (calls past it are dropped) and :meth:`ProbeSession.poll` detaches the probe once it is spent;
``ttl`` is wall time from attach. Each ended probe says why in :attr:`ProbeSession.ended`.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import mmap
import struct
import time
from collections.abc import Callable

from ingero.compiler import CompiledProbe, CompiledSpec
from ingero.compiler.record import EVENT_HEADER, STATS
from ingero.errors import BpfUnavailable, IngeroError, InternalError
from ingero.runtime.bpfobj import BpfObject
from ingero.runtime.kfuncs import patch_kfunc_calls, session_problem
from ingero.runtime.links import (
    BPF_TRACE_UPROBE_MULTI,
    BPF_TRACE_UPROBE_SESSION,
    LinkSpec,
    ProcessLinks,
    UprobeMultiLink,
)
from ingero.runtime.memory import release_compiler_memory
from ingero.runtime.ring import RingReader
from ingero.runtime.shared import SharedNames
from ingero.runtime.values import (  # noqa: F401 - part of this module's interface
    AggregateRow,
    Binding,
    ProbeEvent,
    ProbeStats,
    ReadMiss,
    avg_int,
    cstr,
    read_value,
    string_value,
)

log = logging.getLogger(__name__)

#: how often a waiting read looks at the rings, which are filled without wakeups
POLL_MS = 5


def wait_read(read: Callable[[], list], timeout_ms: int) -> list:
    """``read()``, again every :data:`POLL_MS` until it gives something or ``timeout_ms`` has passed (probe
    rings are filled without wakeups)."""
    batches = read()
    deadline = time.monotonic() + timeout_ms / 1000
    while not batches:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, POLL_MS / 1000))
        batches = read()
    return batches


def _file_key(path: str) -> tuple[int, int]:
    import os

    st = os.stat(path)
    return st.st_dev, st.st_ino


#: the ring record of an event: the ring's 8-byte header, then the event header
_HEADER_FORMAT = "<8x" + EVENT_HEADER.struct_format()
HEADER_COLUMNS = len(EVENT_HEADER.fields)  # ts, latency, pid, tid, probe, cookie


class _Probe:
    def __init__(self, cp: CompiledProbe) -> None:
        self.cp = cp
        self.name = cp.probe.name
        self.per_process: ProcessLinks | None = None
        self.attached = False
        self.deadline: float | None = None
        #: the files this probe is on, by (st_dev, st_ino) -> the path as the process names it
        self.bound: dict[tuple[int, int], str] = {}
        #: bound when the traced processes map its library (named by a stem, soname or glob), not yet
        self.waiting = False
        self.ring: RingReader | None = None
        self.record = struct.Struct(_HEADER_FORMAT + (cp.event.struct_format() if cp.event else ""))
        #: the spec's name of each recorded value -> its column in a record tuple (and its status column)
        self.columns: dict[str, int] = {}
        self.status_columns: dict[str, int] = {}
        self.py_columns: dict[str, int] = {}  # a recorded `stack`'s Python stack
        for j, f in enumerate(cp.event.fields if cp.event else ()):
            {"len": self.status_columns, "py": self.py_columns}.get(f.role, self.columns)[f.key] = HEADER_COLUMNS + j
        for j, f in enumerate(EVENT_HEADER.fields):
            if f.key and f.key in cp.probe.record:
                self.columns[f.key] = j

    @property
    def links(self) -> list[UprobeMultiLink]:
        return self.per_process.links if self.per_process is not None else []

    def unlink(self) -> None:
        if self.per_process is not None:
            self.per_process.close()
        self.attached = False


class ProbeSession(BpfObject):
    """Load, attach, read and detach the probes of one compiled spec.

    ``pid``: attach every probe to this process only (a probe's own ``pid N`` wins); None = every process,
    unless ``tree`` is given: a process tree that a live trace follows (its ``on_process(added, dropped)``
    returns the processes now and reports those that join and leave; ``off_process(added)`` ends that),
    each of which gets its own links, so no process outside it ever traps.
    ``on_event``: called with each :class:`ProbeEvent` as it is decoded (else they queue for ``poll``).
    ``bind_mapped``: a probe whose library is named by a stem, soname or glob attaches to nothing at
    :meth:`attach`; it waits until :meth:`offer` gives it a file a traced process maps (see
    :mod:`ingero.runtime.libwatch`), and attaches to every such file. A library named by its path is
    attached at once in any case."""

    def __init__(
        self, compiled: CompiledSpec, *, pid: int | None = None, on_event: Callable[[ProbeEvent], None] | None = None,
        tree=None, bind_mapped: bool = False,
    ) -> None:
        self.compiled = compiled
        self.pid = pid
        self.tree = tree
        self.bind_mapped = bind_mapped
        self._tree_pids: set[int] = set()
        self.on_event = on_event
        self.probes = [_Probe(cp) for cp in compiled.probes]
        self.ended: dict[str, str] = {}
        self._bpf = None
        self._fns: dict[str, object] = {}
        self._enums: dict[str, dict[int, str]] = {}
        self.python = None  # ingero.pyframes.PyStacks, when a probe records `stack` or `pystack`
        self.load_seconds = 0.0
        self.attach_seconds = 0.0


    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> ProbeSession:
        """Compile with bcc and load every program into the kernel (the verifier runs here)."""
        from ingero.runtime.kernel import uprobe_multi_problem

        problem = uprobe_multi_problem()
        if not problem and any(p.cp.session for p in self.probes):
            problem = session_problem()
        if problem:
            raise BpfUnavailable(problem)
        t0 = time.perf_counter()
        try:
            from bcc import BPF
        except ImportError as e:
            raise BpfUnavailable("the bcc Python package is missing (Debian: python3-bpfcc)") from e
        try:
            # a probe in a live trace refers to the maps of the trace's standard set by that load's names
            names = getattr(self.tree, "shared", None) or SharedNames.fresh()
            self._bpf = BPF(text=names.apply(self.compiled.c_text), cflags=self.compiled.cflags)
            release_compiler_memory()
            if self.compiled.has_python:
                from ingero.pyframes import PyStacks

                shared = getattr(self.tree, "python", None) if self.compiled.python_extern else None
                self.python = PyStacks(self._bpf, names,
                                       runtimes=shared.runtimes if shared is not None else None)
            for p in self.probes:
                fn = p.cp.program
                if p.cp.session:
                    patch_kfunc_calls(self._bpf.module, fn.encode())
                kind = BPF_TRACE_UPROBE_SESSION if p.cp.session else BPF_TRACE_UPROBE_MULTI
                self._fns[fn] = self._bpf.load_func(fn, BPF.KPROBE, attach_type=kind)
        except Exception as e:
            self.close()
            if isinstance(e, IngeroError):
                raise
            raise InternalError(
                f"the kernel refused the generated BPF program: {e}",
                hint="this is a bug in ingero: report it with the output of `ingero probe check --emit c`",
            ) from e
        self.load_seconds = time.perf_counter() - t0
        return self

    def attach(self) -> ProbeSession:
        """Attach every probe (entry link, and return link where needed)."""
        if self._bpf is None:
            self.load()
        t0 = time.perf_counter()
        try:
            for p in self.probes:
                rp = p.cp.probe
                lib = rp.library
                if self.bind_mapped and "/" not in lib.name:
                    p.waiting = True
                    if rp.budgets.ttl_s is not None:
                        p.deadline = time.monotonic() + rp.budgets.ttl_s
                    continue
                if not lib.installed or not lib.attach_path:
                    raise IngeroError(
                        f"probe {rp.name}: {lib.name} is not installed on this machine",
                        hint="install the library, or attach by --pid to a process that loaded it",
                    )
                # every address of each function, with its index as the cookie (a name defined at several
                # addresses fires as the one symbol it is)
                offsets = tuple(o for s in rp.symbols for o in s.offsets)
                cookies = tuple(i for i, s in enumerate(rp.symbols) for _ in s.offsets)
                fd = self._fns[p.cp.program].fd
                p.per_process = ProcessLinks([LinkSpec(fd, str(lib.attach_path), offsets, cookies,
                                                       session=p.cp.session)])
                p.attached = True
                p.bound[_file_key(str(lib.attach_path))] = lib.path or str(lib.attach_path)
                if rp.pid is not None or self.tree is None:
                    pid = rp.pid if rp.pid is not None else (self.pid or 0)
                    if not p.per_process.add(pid):
                        from ingero.errors import NoSuchProcess

                        raise NoSuchProcess(f"cannot attach probe {rp.name}: no process with pid {pid}")
                    self._python_process(pid)
                if rp.budgets.ttl_s is not None:
                    p.deadline = time.monotonic() + rp.budgets.ttl_s
            if self.tree is not None:
                for pid in sorted(self.tree.on_process(self._process_added, self._process_dropped)):
                    self._process_added(pid)
            for p in self.probes:
                if p.cp.event is not None:
                    size = self.compiled.ringbuf_pages * mmap.PAGESIZE
                    p.ring = RingReader(self._bpf[f"p{p.cp.index}_events"].map_fd, size, p.record)
        except BaseException:
            self.close()
            raise
        self.attach_seconds = time.perf_counter() - t0
        return self

    def start(self) -> ProbeSession:
        return self.load().attach()

    def offer(self, lib) -> list[Binding]:
        """A traced process maps ``lib`` (a :class:`~ingero.symbols.Library`): attach every probe that
        waits for a library of that name and is not on that file yet. Returns what was attached (a
        probe whose functions that copy lacks says so in ``Binding.missing``)."""
        from ingero.symbols import read_symbols

        takers = self._takers(lib)
        if not takers:
            return []
        key = _file_key(str(lib.attach_path))
        table = read_symbols(lib)
        out = []
        for p in takers:
            rp = p.cp.probe
            offsets, cookies, missing = [], [], []
            for i, sym in enumerate(rp.symbols):
                # every address of the name in this copy (aliases at an address taken already left out)
                fresh = [a for a in table.addresses(sym.name) if a not in offsets]
                if fresh:
                    offsets += fresh
                    cookies += [i] * len(fresh)
                elif sym.name not in table:
                    missing.append(sym.name)
            p.bound[key] = lib.path
            if offsets:
                spec = LinkSpec(self._fns[p.cp.program].fd, str(lib.attach_path), tuple(offsets), tuple(cookies),
                                session=p.cp.session)
                # no process joins the tree between linking its processes and marking the probe attached
                with getattr(self.tree, "lock", None) or contextlib.nullcontext():
                    if p.per_process is None:
                        p.per_process = ProcessLinks([spec])
                        if rp.pid is not None or self.tree is None:
                            p.per_process.add(rp.pid if rp.pid is not None else (self.pid or 0))
                        else:
                            for pid in sorted(self._tree_pids):
                                p.per_process.add(pid)
                    else:
                        p.per_process.extend(spec)
                    p.attached = True
                    p.waiting = False
            out.append(Binding(p.name, lib.path, lib.pid, len(rp.symbols) - len(missing), tuple(missing),
                               len(offsets)))
        return out

    def takes(self, lib) -> list[str]:
        """The probes :meth:`offer` would put on ``lib``: running, named by a name that names it, not on
        that file yet."""
        return [p.name for p in self._takers(lib)]

    def _takers(self, lib) -> list[_Probe]:
        from ingero.symbols.discovery import names_library

        if self._bpf is None or not self.bind_mapped:
            return []
        try:
            key = _file_key(str(lib.attach_path))
        except OSError:
            return []
        return [p for p in self.probes if p.name not in self.ended and key not in p.bound
                and "/" not in p.cp.probe.library.name and names_library(p.cp.probe.library.name, lib.path, lib.soname)]

    def probe(self, name: str):
        """The checked probe (:class:`~ingero.dsl.resolved.ResolvedProbe`) named ``name``."""
        return self._probe(name).cp.probe

    def waiting(self) -> dict[str, str]:
        """The probes still waiting for their library, each with what it waits for."""
        return {p.name: f"waiting for {p.cp.probe.library.name} in the traced tree"
                for p in self.probes if p.waiting and p.name not in self.ended}

    def _process_added(self, pid: int) -> None:
        """A process joined the followed tree: attach its links (probes that name their own pid excepted)."""
        self._tree_pids.add(pid)
        for p in self.probes:
            if p.attached and p.cp.probe.pid is None and p.per_process is not None:
                p.per_process.add(pid)
        self._python_process(pid)

    def _python_process(self, pid: int) -> None:
        """Let the kernel walk the Python frames of process ``pid`` (0: of every Python process running
        now), unless a live trace's standard probe set does it for this program already."""
        if self.python is None or self.compiled.python_extern:
            return
        if pid:
            if pid not in self.python.runtimes:
                self.python.configure(pid)
            return
        import os

        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != os.getpid() and int(name) not in self.python.runtimes:
                self.python.configure(int(name))

    def _process_dropped(self, pid: int) -> None:
        self._tree_pids.discard(pid)
        for p in self.probes:
            if p.per_process is not None:
                p.per_process.drop(pid)

    def detach(self, name: str, reason: str = "detached") -> None:
        """Close one probe's links (its counts and aggregates stay readable). A probe that never found its
        library ends with that reason (``LIB never appeared in the traced tree (REASON)``)."""
        for p in self.probes:
            if p.name == name:
                p.unlink()
                if name not in self.ended:
                    self.ended[name] = (f"{p.cp.probe.library.name} never appeared in the traced tree ({reason})"
                                        if p.waiting else reason)

    def detach_all(self, reason: str = "detached") -> float:
        """Close every link; returns the seconds it took."""
        t0 = time.perf_counter()
        for p in self.probes:
            self.detach(p.name, reason)
        return time.perf_counter() - t0

    def close(self) -> None:
        if self.tree is not None:
            self.tree.off_process(self._process_added)
        for p in self.probes:
            p.unlink()
            if p.ring is not None:
                p.ring.close()
                p.ring = None
        self._unload()


    @property
    def active(self) -> list[str]:
        return [p.name for p in self.probes if p.name not in self.ended and (p.attached or p.waiting)]

    # -- reading ---------------------------------------------------------------------------------
    def read(self, max_events: int = 4096) -> list[tuple[_Probe, list[tuple]]]:
        """The records each probe's ring holds now, in bulk (at most ``max_events`` per probe): one batch
        of tuples per probe, in the probe's record layout (:attr:`_Probe.columns` says which column is
        which). No waiting, no per-event object: the fast path of ``ingero probe run``."""
        out = []
        for p in self.probes:
            if p.ring is not None:
                rows = p.ring.read(max_events)
                if rows:
                    out.append((p, rows))
        return out

    def wait(self, timeout_ms: int) -> list[tuple[_Probe, list[tuple]]]:
        """:meth:`read`, waiting up to ``timeout_ms`` for a first record (the rings are filled without
        wakeups, so they are looked at every :data:`POLL_MS`)."""
        return wait_read(self.read, timeout_ms)

    def poll(self, timeout_ms: int = 100, max_events: int = 20_000) -> list[ProbeEvent]:
        """Events decoded since the last poll (waits up to ``timeout_ms`` when there are none yet; about
        ``max_events`` at most), after enforcing the events and ttl budgets. Given ``on_event``, each is
        passed to it instead."""
        if self._bpf is None:
            raise IngeroError("the probe session is not loaded")
        out = []
        for p, rows in self.wait(timeout_ms) if any(p.attached for p in self.probes) else self.read(max_events):
            out += [self.event(p, r) for r in rows]
        if timeout_ms > 0 and not any(p.ring for p in self.probes):
            time.sleep(timeout_ms / 1000)
        self.enforce_budgets()
        if self.on_event is not None:
            for ev in out:
                self.on_event(ev)
            return []
        return out

    def enforce_budgets(self) -> list[tuple[str, str]]:
        """Detach probes whose events budget is spent or whose ttl has passed; returns (probe, why)."""
        done = []
        now = time.monotonic()
        for p in self.probes:
            if p.name in self.ended or not (p.attached or p.waiting):
                continue
            b = p.cp.probe.budgets
            if b.events is not None and self.stats(p.name).matched >= b.events:
                why = f"events budget reached ({b.events} events)"
            elif p.deadline is not None and now >= p.deadline:
                why = f"ttl {b.ttl_s:g}s elapsed" + (
                    f" while waiting for {p.cp.probe.library.name} in the traced tree" if p.waiting else "")
            else:
                continue
            self.detach(p.name, why)
            done.append((p.name, why))
        return done

    def stats(self, name: str) -> ProbeStats:
        p = self._probe(name)
        table = self._bpf[p.cp.stats_map]
        vals = [int(table[ct.c_int(i)].value) for i in range(len(STATS))]
        return ProbeStats(*vals)

    def aggregates(self, name: str) -> list[AggregateRow]:
        """The in-kernel aggregation of one probe, read now, sorted by count (largest last, as bpftrace)."""
        p = self._probe(name)
        cp = p.cp
        if cp.aggs_map is None:
            return []
        rows = []
        rp = cp.probe
        for k, v in self._bpf[cp.aggs_map].items():
            key: dict[str, object] = {}
            names: dict[str, str] = {}
            pid = rp.pid if rp.pid is not None else self.pid
            status = {f.key for f in cp.agg_key.fields if f.role == "len"}  # type: ignore[union-attr]
            for f in cp.agg_key.fields:  # type: ignore[union-attr]
                if not f.key or f.role in ("len", "py"):
                    continue
                raw = getattr(k, f.name)
                if rp.value(f.key).kind == "stack":
                    key[f.key] = self._stack(int(raw), pid, int(getattr(k, f.name + "_py", 0)))
                elif f.key in status:
                    key[f.key] = read_value(rp.value(f.key), raw, getattr(k, f.name + "_len"), self, pid, names)
                else:
                    key[f.key] = self._decode(rp, f.key, raw, pid, names)
            values, hists = {}, {}
            for j, a in enumerate(rp.aggregates):
                name = f"{a.func}{j}"
                if a.func == "count":
                    continue
                if a.func in ("hist", "lhist"):
                    hists[a.label] = [int(x) for x in getattr(v, name)]
                elif a.func == "avg":
                    total, n = int(getattr(v, name + "_sum")), int(getattr(v, name + "_n"))
                    values[a.label] = avg_int(total, n)
                elif hasattr(v, name + "_n") and not getattr(v, name + "_n"):
                    values[a.label] = None  # min/max of values none of which could be read
                else:
                    values[a.label] = int(getattr(v, name))
            rows.append(AggregateRow(key, int(v.count), values, hists, names))
        rows.sort(key=lambda r: (r.count, str(r.key)))
        return rows

    def _probe(self, name: str) -> _Probe:
        for p in self.probes:
            if p.name == name:
                return p
        raise IngeroError(f"no probe named {name!r} in this session")

    # -- decoding --------------------------------------------------------------------------------
    def event(self, p: _Probe, row: tuple) -> ProbeEvent:
        """One record tuple of probe ``p`` as a :class:`ProbeEvent`."""
        rp = p.cp.probe
        ts, latency, pid, tid, _probe, cookie = row[:HEADER_COLUMNS]
        fields: dict[str, object] = {}
        names: dict[str, str] = {}
        for key in rp.record:
            raw = row[p.columns[key]]
            if key in ("ts", "latency", "pid", "tid"):
                fields[key] = raw
            elif key == "symbol":
                fields[key] = rp.symbols[raw].shown if 0 <= raw < len(rp.symbols) else raw
            elif key in p.status_columns:
                fields[key] = read_value(rp.value(key), raw, row[p.status_columns[key]])
            elif key in p.py_columns:  # a stack with its Python frames
                fields[key] = self._stack(int(raw), pid, row[p.py_columns[key]])
            else:
                fields[key] = self._decode(rp, key, raw, pid, names)
        symbol = rp.symbols[cookie].shown if 0 <= cookie < len(rp.symbols) else str(cookie)
        return ProbeEvent(rp.name, symbol, pid, tid, ts, latency if rp.needs_return else None, fields, names)

    def _decode(self, rp, key: str, raw, pid: int | None, names: dict | None = None):
        v = rp.value(key)
        if v.kind in ("string", "comm"):
            return cstr(raw)
        if v.kind == "symbol":
            return rp.symbols[int(raw)].shown if 0 <= int(raw) < len(rp.symbols) else int(raw)
        if v.kind == "stack":
            return self._stack(int(raw), pid)
        if v.kind == "pystack":
            return self._pystack(int(raw), pid)
        val = int(raw)
        if v.kind == "code" and names is not None and pid is not None and val:
            sym = self._bpf.sym(val, pid, show_module=False, show_offset=False, demangle=True)
            text = sym.decode("utf-8", "replace") if isinstance(sym, bytes) else str(sym)
            if text and text != "[unknown]":
                names[key] = text
        return val

    def _stack(self, stack_id: int, pid: int | None, py_stack: int = 0) -> tuple[str, ...]:
        """Native frames (``symbol+0xoff [module]``) with the Python ones merged in (see
        :func:`ingero.pyframes.merge`), innermost first."""
        frames: list[str] = []
        if stack_id >= 0 and self.compiled.has_stacks:
            try:
                for addr in self._bpf["stacks"].walk(stack_id):
                    s = self._bpf.sym(addr, pid if pid is not None else -1, show_module=True, show_offset=True)
                    frames.append(s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s))
            except KeyError:
                frames = []
        py = self._pystack(py_stack, pid)
        if not py:
            return tuple(frames)
        from ingero.pyframes import is_interpreter_file

        for i, f in enumerate(frames):
            module = f.rsplit("[", 1)[-1].rstrip("]") if f.endswith("]") else ""
            if module and is_interpreter_file(module):
                return (*frames[:i], *py, *frames[i:])
        return (*frames, *py)

    def _pystack(self, py_stack: int, pid: int | None) -> tuple[str, ...]:
        """The Python frames of a capture as ``qualname (file:line)``, innermost first."""
        if not py_stack or self.python is None:
            return ()
        from ingero.pyframes import render_python

        return render_python(self.python.stack(pid, py_stack))

    def enum_name(self, enum: str, value: int) -> str | None:
        names = self._enums.get(enum)
        if names is None:
            from ingero.catalogue import load_catalogue

            try:
                vals = load_catalogue().enum(enum)
            except IngeroError:
                vals = {}
            names = {}
            for n, x in vals.items():
                names.setdefault(x, n)
            self._enums[enum] = names
        return names.get(value)
