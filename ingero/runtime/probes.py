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

import ctypes as ct
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ingero.compiler import CompiledProbe, CompiledSpec
from ingero.compiler.record import EVENT_HEADER, STATS
from ingero.errors import BpfUnavailable, IngeroError
from ingero.runtime.links import BPF_TRACE_UPROBE_MULTI, UprobeMultiLink, attach_uprobe_multi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeEvent:
    """One recorded call. ``fields`` holds the recorded values by the spec's names (ints for numbers,
    enums and pointers; str for strings; a tuple of frame strings for ``stack``); ``names`` the
    demangled symbol of a host function pointer (cudaLaunchKernel's ``func``) when the process has one."""

    probe: str
    symbol: str
    pid: int
    tid: int
    ts_ns: int
    latency_ns: int
    fields: dict[str, object]
    names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregateRow:
    """One group of an in-kernel aggregation: its key values, the call count, sum/min/max by
    ``func(field)`` and log2 histograms (65 buckets: 0, then [2^(k-1), 2^k))."""

    key: dict[str, object]
    count: int
    values: dict[str, int]
    hists: dict[str, list[int]]
    names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeStats:
    hits: int
    filtered: int
    rate_dropped: int
    matched: int
    budget_dropped: int
    lost: int
    agg_overflow: int
    inflight_full: int


def _cstr(raw) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


class _Probe:
    def __init__(self, cp: CompiledProbe) -> None:
        self.cp = cp
        self.name = cp.probe.name
        self.links: list[UprobeMultiLink] = []
        self.deadline: float | None = None
        fields = [("h", EVENT_HEADER.ctype)]
        if cp.event is not None:
            fields += list(cp.event.ctype._fields_)
        self.event_type = type(f"p{cp.index}_event", (ct.Structure,), {"_fields_": fields})


class ProbeSession:
    """Load, attach, read and detach the probes of one compiled spec.

    ``pid``: attach every probe to this process only (a probe's own ``pid N`` wins); None = every process.
    ``on_event``: called with each :class:`ProbeEvent` as it is decoded (else they queue for ``poll``)."""

    def __init__(
        self, compiled: CompiledSpec, *, pid: int | None = None, on_event: Callable[[ProbeEvent], None] | None = None
    ) -> None:
        self.compiled = compiled
        self.pid = pid
        self.on_event = on_event
        self.probes = [_Probe(cp) for cp in compiled.probes]
        self.ended: dict[str, str] = {}
        self._bpf = None
        self._fns: dict[str, object] = {}
        self._pending: list[ProbeEvent] = []
        self._budget = 1 << 62
        self._enums: dict[str, dict[int, str]] = {}
        self.load_seconds = 0.0
        self.attach_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> ProbeSession:
        """Compile with bcc and load every program into the kernel (the verifier runs here)."""
        from ingero.runtime.kernel import uprobe_multi_problem

        problem = uprobe_multi_problem()
        if problem:
            raise BpfUnavailable(problem)
        t0 = time.perf_counter()
        try:
            from bcc import BPF
        except ImportError as e:
            raise BpfUnavailable("the bcc Python package is missing (Debian: python3-bpfcc)") from e
        try:
            self._bpf = BPF(text=self.compiled.c_text, cflags=self.compiled.cflags)
            for p in self.probes:
                for fn in (p.cp.entry_fn, p.cp.return_fn):
                    if fn:
                        self._fns[fn] = self._bpf.load_func(fn, BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
        except Exception as e:
            self.close()
            if isinstance(e, IngeroError):
                raise
            raise IngeroError(
                f"the kernel refused the generated BPF program: {e}",
                hint="this is a bug in ingero: report it with `ingero probe check --emit c`",
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
                if not lib.installed or not lib.attach_path:
                    raise IngeroError(
                        f"probe {rp.name}: {lib.name} is not installed on this machine",
                        hint="install the library, or attach by --pid to a process that loaded it",
                    )
                offsets = [s.file_offset for s in rp.symbols]
                cookies = list(range(len(offsets)))
                pid = rp.pid if rp.pid is not None else (self.pid or 0)
                p.links.append(
                    attach_uprobe_multi(self._fns[p.cp.entry_fn].fd, lib.attach_path, offsets, cookies, pid=pid)
                )
                if p.cp.return_fn:
                    p.links.append(
                        attach_uprobe_multi(
                            self._fns[p.cp.return_fn].fd, lib.attach_path, offsets, cookies, retprobe=True, pid=pid
                        )
                    )
                if rp.budgets.ttl_s is not None:
                    p.deadline = time.monotonic() + rp.budgets.ttl_s
            if any(p.cp.event is not None for p in self.probes):
                self._bpf["events"].open_ring_buffer(self._on_event)
        except BaseException:
            self.close()
            raise
        self.attach_seconds = time.perf_counter() - t0
        return self

    def start(self) -> ProbeSession:
        return self.load().attach()

    def detach(self, name: str, reason: str = "detached") -> None:
        """Close one probe's links (its counts and aggregates stay readable)."""
        for p in self.probes:
            if p.name == name:
                for link in p.links:
                    link.close()
                if name not in self.ended:
                    self.ended[name] = reason

    def detach_all(self, reason: str = "detached") -> float:
        """Close every link; returns the seconds it took."""
        t0 = time.perf_counter()
        for p in self.probes:
            self.detach(p.name, reason)
        return time.perf_counter() - t0

    def close(self) -> None:
        for p in self.probes:
            for link in p.links:
                link.close()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> ProbeSession:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def active(self) -> list[str]:
        return [p.name for p in self.probes if p.name not in self.ended and p.links]

    # -- reading ---------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 100, max_events: int = 20_000) -> list[ProbeEvent]:
        """Events decoded since the last poll (waits up to ``timeout_ms`` when there are none yet; about
        ``max_events`` at most), after enforcing the events and ttl budgets."""
        if self._bpf is None:
            raise IngeroError("the probe session is not loaded")
        self._budget = max_events
        if any(p.cp.event is not None for p in self.probes) and any(p.links for p in self.probes):
            self._bpf.ring_buffer_poll(timeout_ms)
        elif timeout_ms > 0:
            time.sleep(timeout_ms / 1000)
        self.enforce_budgets()
        out, self._pending = self._pending, []
        return out

    def enforce_budgets(self) -> list[tuple[str, str]]:
        """Detach probes whose events budget is spent or whose ttl has passed; returns (probe, why)."""
        done = []
        now = time.monotonic()
        for p in self.probes:
            if p.name in self.ended or not p.links:
                continue
            b = p.cp.probe.budgets
            if b.events is not None and self.stats(p.name).matched >= b.events:
                why = f"events budget reached ({b.events} events)"
            elif p.deadline is not None and now >= p.deadline:
                why = f"ttl {b.ttl_s:g}s elapsed"
            else:
                continue
            # drain what the kernel already wrote before closing
            if p.cp.event is not None:
                self._bpf.ring_buffer_consume()
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
            for f in cp.agg_key.fields:  # type: ignore[union-attr]
                if not f.key:
                    continue
                raw = getattr(k, f.name)
                key[f.key] = self._decode(rp, f.key, raw, pid, names)
            values, hists = {}, {}
            for j, a in enumerate(rp.aggregates):
                if a.func == "count":
                    continue
                raw = getattr(v, f"{a.func}{j}")
                if a.func == "hist":
                    hists[f"hist({a.value})"] = [int(x) for x in raw]
                else:
                    values[f"{a.func}({a.value})"] = int(raw)
            rows.append(AggregateRow(key, int(v.count), values, hists, names))
        rows.sort(key=lambda r: (r.count, str(r.key)))
        return rows

    def _probe(self, name: str) -> _Probe:
        for p in self.probes:
            if p.name == name:
                return p
        raise IngeroError(f"no probe named {name!r} in this session")

    # -- decoding --------------------------------------------------------------------------------
    def _on_event(self, ctx, data, size) -> int:
        try:
            hdr = ct.cast(data, ct.POINTER(EVENT_HEADER.ctype)).contents
            p = self.probes[hdr.probe]
            e = ct.cast(data, ct.POINTER(p.event_type)).contents
            rp = p.cp.probe
            fields: dict[str, object] = {}
            names: dict[str, str] = {}
            for key in rp.record:
                if key == "ts":
                    fields[key] = int(e.h.ts_ns)
                elif key == "latency":
                    fields[key] = int(e.h.latency_ns)
                elif key in ("pid", "tid"):
                    fields[key] = int(getattr(e.h, key))
                elif key == "symbol":
                    fields[key] = rp.symbols[e.h.cookie].name
            for f in p.cp.event.fields if p.cp.event else ():
                fields[f.key] = self._decode(rp, f.key, getattr(e, f.name), int(e.h.pid), names)
            ev = ProbeEvent(
                rp.name,
                rp.symbols[e.h.cookie].name,
                int(e.h.pid),
                int(e.h.tid),
                int(e.h.ts_ns),
                int(e.h.latency_ns),
                {k: fields[k] for k in rp.record},
                names,
            )
        except Exception:  # never let a decoding bug kill the poll loop silently
            log.exception("could not decode a probe event")
            return 0
        if self.on_event is not None:
            self.on_event(ev)
        else:
            self._pending.append(ev)
        # libbpf keeps consuming while the producer keeps writing: a negative return ends this poll (the
        # record given is consumed), so a busy probe cannot keep poll() from returning
        self._budget -= 1
        return -1 if self._budget <= 0 else 0

    def _decode(self, rp, key: str, raw, pid: int | None, names: dict | None = None):
        v = rp.value(key)
        if v.kind in ("string", "comm"):
            return _cstr(raw)
        if v.kind == "symbol":
            return rp.symbols[int(raw)].name if 0 <= int(raw) < len(rp.symbols) else int(raw)
        if v.kind == "stack":
            return self._stack(int(raw), pid)
        val = int(raw)
        if v.kind == "code" and names is not None and pid is not None and val:
            sym = self._bpf.sym(val, pid, show_module=False, show_offset=False, demangle=True)
            text = sym.decode("utf-8", "replace") if isinstance(sym, bytes) else str(sym)
            if text and text != "[unknown]":
                names[key] = text
        return val

    def _stack(self, stack_id: int, pid: int | None) -> tuple[str, ...]:
        if stack_id < 0 or not self.compiled.has_stacks:
            return ()
        frames = []
        try:
            for addr in self._bpf["stacks"].walk(stack_id):
                s = self._bpf.sym(addr, pid if pid is not None else -1, show_module=True, show_offset=True)
                frames.append(s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s))
        except KeyError:
            return ()
        return tuple(frames)

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
