"""Probes added to a live trace from DSL specs (``ingero trace --probe``, and ``attach_probe`` over MCP).

Each attached spec is checked, compiled and loaded as its own :class:`~ingero.runtime.probes.ProbeSession`
(one BPF object), and each of its probes is registered with the trace database
(:meth:`~ingero.store.EventWriter.register_probe`): a ``probes`` row with the spec text and fields, an op
of its own, a view. Every recorded event becomes an ``events`` row (source ``probe``, latency as
duration, retval as ret_code, the first two numeric fields as arg0/arg1) with all recorded fields in
``probe_values``, so the standard tools see probe events next to the standard ops.

All methods are safe to call from several threads (the tracing loop ticks while an MCP call attaches or
detaches). Budgets end probes (events, ttl); so do the end of the traced processes and :meth:`detach`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

from ingero.dsl.resolved import Budgets, ResolvedProbe, ResolvedSpec
from ingero.errors import IngeroError, NotFound
from ingero.limits import MAX_PROBES, MAX_SYMBOLS, PROBE_EVENTS, PROBE_TTL_S

log = logging.getLogger(__name__)

#: ring buffer of each spec attached to a live trace (pages): 8 MiB, ~100k records of a burst while the
#: tracer is busy elsewhere (what it cannot hold is counted: LiveProbe.lost, lost_events)
LIVE_PROBE_RINGBUF_PAGES = 2048


@dataclass(frozen=True)
class Excess:
    """One budget of a probe over a limit: ``asked`` (as the spec put it) over ``limit``."""

    asked: str  # "ttl 600s", "events 5000", "1200 symbols"
    limit: str
    fix: str

    @property
    def short(self) -> str:
        return f"{self.asked} > limit {self.limit}"

    @property
    def refusal(self) -> str:
        return f"{self.asked} is over this server's limit of {self.limit}: {self.fix}"


@dataclass(frozen=True)
class ProbeLimits:
    """The policy every dynamic probe is judged by: upper bounds a spec may lower but not raise (the
    server's or the CLI's settings). :meth:`excess` says what is over, :meth:`in_force` what a probe
    runs with; the MCP guards, ``validate_probe`` and :class:`DynamicProbes` all ask this one object."""

    ttl_s: float = PROBE_TTL_S
    events: int = PROBE_EVENTS
    max_probes: int = MAX_PROBES
    #: a server may lower it (``ingero mcp --probe-symbols``), never raise it past the checker's hard limit
    max_symbols: int = MAX_SYMBOLS

    def __post_init__(self) -> None:
        if min(self.ttl_s, self.events, self.max_probes, self.max_symbols) <= 0:
            raise IngeroError("probe limits must be positive (ttl, events, live probes, symbols)")
        if self.max_symbols > MAX_SYMBOLS:
            raise IngeroError(f"a probe may attach to {MAX_SYMBOLS} symbols at most, not {self.max_symbols}",
                              f"give a limit of at most {MAX_SYMBOLS}")

    def excess(self, rp: ResolvedProbe) -> tuple[Excess, ...]:
        """Every budget of ``rp`` over these limits (none: it may run as written)."""
        b = rp.budgets
        out = []
        if b.ttl_s is not None and b.ttl_s > self.ttl_s:
            out.append(Excess(f"ttl {b.ttl_s:g}s", f"{self.ttl_s:g}s", "lower it or omit it"))
        if b.events is not None and b.events > self.events:
            out.append(Excess(f"events {b.events}", f"{self.events}", "lower it or omit it"))
        if len(rp.symbols) > self.max_symbols:
            out.append(Excess(f"{len(rp.symbols)} symbols", f"{self.max_symbols}", "narrow the glob"))
        return tuple(out)

    def in_force(self, b: Budgets) -> Budgets:
        """The budgets a probe runs with: its own, capped by the limits, the limits where it set none."""
        return replace(
            b,
            ttl_s=self.ttl_s if b.ttl_s is None else min(b.ttl_s, self.ttl_s),
            events=self.events if b.events is None else min(b.events, self.events),
        )

    def describe(self, rp: ResolvedProbe) -> str:
        """The budgets in force for ``rp``, these limits, and what is over them."""
        b = self.in_force(rp.budgets)
        over = self.excess(rp)
        text = (f"budgets in force: ttl {b.ttl_s:g}s, events {b.events}" + (f", rate {b.rate}/s" if b.rate else "")
                + f" (server limits: ttl {self.ttl_s:g}s, events {self.events}, {self.max_symbols} symbols, "
                f"{self.max_probes} live probes)")
        return text + (f"; OVER THE LIMIT: {'; '.join(e.short for e in over)}" if over else "")


@dataclass
class LiveProbe:
    id: int  # the probes.id in the trace database (also its op code under source "probe")
    name: str
    spec: str
    library: str
    symbols: tuple[str, ...]
    fields: tuple[str, ...]
    direction: str
    budgets: Budgets  # in force (capped by the limits)
    owner: str
    attached_at: float
    status: str = "active"  # active | ended
    end_reason: str = ""
    events: int = 0
    lost: int = 0  # events its ring buffer could not hold (recorded in lost_events as they happen)
    recent: deque = field(default_factory=lambda: deque(maxlen=200))
    ended_at: float = 0.0
    final_stats: object = None  # ProbeStats read when the BPF object was closed
    final_aggregates: list | None = None
    _session: object = field(default=None, repr=False)
    _handle: object = field(default=None, repr=False)

    @property
    def waiting_for(self) -> str | None:
        """What an active probe still waits for (``waiting for LIB in the traced tree``), or None."""
        if self.status != "active" or self._session is None:
            return None
        return self._session.waiting().get(self.name)


class DynamicProbes:
    def __init__(self, writer, *, pid: int | None, limits: ProbeLimits | None = None,
                 tree_filter: bool = False, tree=None, metrics=None, watcher=None) -> None:
        """``pid``: the traced process (resolving libraries, and the attach filter without a tree);
        ``tree_filter``: follow the live trace's process tree instead (the standard probe set must be loaded
        in this process, and be ``tree``): each process of the tree gets its own links, forked workers
        included, and the programs also check the tree in the kernel; ``metrics``: an
        :class:`ingero.fleet.metrics.FleetMetrics` counting each probe's events (once per tick).
        ``watcher``: a :class:`~ingero.runtime.libwatch.LibraryWatcher` on the tree: a probe naming its
        library by a stem, soname or glob then binds to the copies the tree maps, as it maps them
        (:meth:`offer`)."""
        self.writer = writer
        self.watcher = watcher
        self.metrics = metrics
        self.pid = pid
        self.tree_filter = tree_filter
        self.tree = tree
        self.limits = limits or ProbeLimits()
        self.probes: dict[int, LiveProbe] = {}
        self._sessions: list = []
        #: probes whose library was found nowhere: checked against the copy the tree loads (:meth:`wait_for`)
        self._unresolved: list[_Unresolved] = []
        self._lock = threading.RLock()

    # -- attach / detach -------------------------------------------------------------------------------
    def attach(self, spec: ResolvedSpec, *, owner: str = "") -> list[LiveProbe]:
        """Compile, load and attach every probe of a checked spec; register them with the database. The
        budgets in force are the spec's capped by the limits; a probe over the symbol limit is refused
        (IngeroError), as is one probe too many."""
        from ingero.compiler import compile_spec
        from ingero.runtime.probes import ProbeSession
        from ingero.store import ProbeField, ProbeInfo

        probes = []
        for rp in spec.probes:
            over = [e for e in self.limits.excess(rp) if e.asked.endswith("symbols")]
            if over:
                raise IngeroError(f"probe {rp.name}: {over[0].refusal}")
            # with the tree filter the traced pid only chose which files to probe: the kernel filters on
            # the whole tree, unless a target names its own pid
            pid = rp.target_pid if self.tree_filter else rp.pid
            probes.append(replace(rp, budgets=self.limits.in_force(rp.budgets), pid=pid))
        spec = replace(spec, probes=tuple(probes))
        with self._lock:
            active = sum(1 for p in self.probes.values() if p.status == "active")
            if active + len(spec.probes) > self.limits.max_probes:
                raise IngeroError(
                    f"at most {self.limits.max_probes} probes may be active at once ({active} are)",
                    hint="detach one first",
                )
            compiled = compile_spec(spec, tree_filter=self.tree_filter, ringbuf_pages=LIVE_PROBE_RINGBUF_PAGES,
                                    python_extern=self.tree_filter and getattr(self.tree, "python", None) is not None)
            bind = self.watcher is not None
            if bind:
                from ingero.runtime.libwatch import watch_names

                self.watcher.watch(watch_names(rp.library.name for rp in spec.probes))
            session = ProbeSession(compiled, pid=None if self.tree_filter else self.pid,
                                   tree=self.tree if self.tree_filter else None, bind_mapped=bind).start()
            self._sessions.append(session)
            if bind:
                for lib in self._mapped_now(spec):
                    session.offer(lib)
            out = []
            for rp in spec.probes:
                kinds = {v.key: v for v in rp.values}
                fields = tuple(ProbeField(k, _field_type(kinds.get(k))) for k in rp.record)
                text = rp.text or spec.text
                # bound later to the copies the tree maps: the name, until then (see :meth:`offer`)
                library = rp.library.name if bind and "/" not in rp.library.name else rp.library.path or ""
                handle = self.writer.register_probe(ProbeInfo(
                    name=rp.name, spec=text, fields=fields,
                    library=library or rp.library.name, symbols=tuple(s.name for s in rp.symbols),
                    at_return=rp.needs_return,
                ))
                lp = LiveProbe(
                    id=handle.probe_id, name=rp.name, spec=text, library=library,
                    symbols=tuple(s.name for s in rp.symbols), fields=tuple(rp.record), direction=rp.direction,
                    budgets=rp.budgets, owner=owner, attached_at=time.time(), _session=session, _handle=handle,
                )
                self.probes[lp.id] = lp
                out.append(lp)
            return out

    def _mapped_now(self, spec) -> list:
        """The files the traced processes map already that the probes of ``spec`` name."""
        from ingero.symbols import find_libraries

        pids = self.tree.followed() if self.tree is not None else ({self.pid} if self.pid else set())
        out = []
        for pid in sorted(pids):
            for rp in spec.probes:
                if "/" in rp.library.name:
                    continue
                try:
                    out += find_libraries(pid=pid, name=rp.library.name)
                except IngeroError:
                    continue  # exited meanwhile
        return out

    def offer(self, lib) -> list:
        """A traced process maps ``lib``: attach the probes waiting for it (see ProbeSession.offer); check a
        probe whose library was found nowhere against this very file, then attach it (:meth:`wait_for`)."""
        with self._lock:
            out = []
            for session in self._sessions:
                for b in session.offer(lib):
                    out.append(b)
                    for lp in self.probes.values():
                        if lp._session is session and lp.name == b.probe and b.symbols:
                            lp.library = ", ".join(dict.fromkeys([*filter(None, lp.library.split(", ")), b.path])
                                                   ) if "/" in lp.library else b.path
            for u in self._unresolved:
                if not u.bound and not u.ended and u.names(lib):
                    self._resolve(u, lib)
                    if u.bound:
                        out += self.offer(lib)  # the new probe's session takes this very file
            return out

    def wait_for(self, result, owner: str = "") -> None:
        """The probes of a checked spec whose library was found nowhere (``result.waiting``, checked with
        ``may_wait``): each waits for a file of that name in the traced tree, is checked against it when a
        process opens it, and attached then; one that cannot be, or whose library never shows, ends with
        the reason (a ``probes`` row of its own)."""
        from ingero.runtime.libwatch import watch_names

        if not result.waiting:
            return
        if self.watcher is None:
            raise IngeroError(f"no library {result.waiting[0].library!r} found, and this trace binds no library "
                              "loaded later", hint="give the library's path")
        with self._lock:
            self.watcher.watch(watch_names(w.library for w in result.waiting))
            self._unresolved += [_Unresolved(result.source.text, result.source.name, w, owner)
                                 for w in result.waiting]

    def _resolve(self, u: _Unresolved, lib) -> None:
        from ingero.dsl import check
        from ingero.dsl.lookup import TreeLookups

        res = check(u.text, u.source, lookups=TreeLookups(bound=lib), only=frozenset({u.waiting.probe}))
        try:
            if not res.ok:
                e = res.errors[0]
                raise IngeroError(f"line {e.span.line}: {e.message}" + (f" ({e.hint})" if e.hint else ""))
            self.attach(res.resolved(), owner=u.owner)
            u.bound = True
        except IngeroError as e:
            u.ended = f"cannot be checked against {lib.path}, the {u.waiting.library} pid {lib.pid} loaded: {e.message}"
            log.warning("probe %s %s", u.waiting.probe, u.ended)
            self._record_unresolved(u, u.ended)

    def _record_unresolved(self, u: _Unresolved, reason: str) -> None:
        """A probe that never got to attach: a ``probes`` row saying why, so the stored trace tells it."""
        from ingero.store import ProbeInfo

        handle = self.writer.register_probe(ProbeInfo(name=u.waiting.probe, spec=u.text, library=u.waiting.library,
                                                      at_return=False))
        self.writer.end_probe(handle, reason, status="detached")

    def not_attached(self) -> dict[str, str]:
        """The probes that never got a file to attach to, with why (their library never appeared, or the
        copy that did could not be checked)."""
        with self._lock:
            out = {lp.name: lp.end_reason for lp in self.probes.values()
                   if " never appeared in the traced tree" in lp.end_reason}
            out.update({u.waiting.probe: u.ended for u in self._unresolved if u.ended and not u.bound})
            return out

    def waiting(self) -> dict[str, str]:
        with self._lock:
            out = {}
            for session in self._sessions:
                out.update(session.waiting())
            for u in self._unresolved:
                if not u.bound and not u.ended:
                    out[u.waiting.probe] = (f"waiting for {u.waiting.library} in the traced tree "
                                            f"({u.waiting.searched}: checked against the copy the tree loads)")
            return out

    def detach(self, probe_id: int, reason: str = "detached by request") -> LiveProbe:
        with self._lock:
            lp = self.probes.get(probe_id)
            if lp is None:
                known = ", ".join(str(i) for i in sorted(self.probes)) or "none"
                raise NotFound(f"no probe with id {probe_id}", hint=f"probe ids: {known}")
            if lp.status == "active":
                lp._session.detach(lp.name, reason)
                self._end(lp, lp._session.ended.get(lp.name, reason))
            return lp

    def _end(self, lp: LiveProbe, reason: str) -> None:
        lp.status = "ended"
        lp.end_reason = reason
        lp.ended_at = time.time()
        self._store_aggregates(lp)
        self.writer.end_probe(lp._handle, reason, status="detached")

    def _store_aggregates(self, lp: LiveProbe) -> None:
        """Keep an aggregating probe's final in-kernel results in the database (``probe_aggregates``)."""
        session = lp._session
        if session is None or not session.loaded:
            return
        try:
            rows = session.aggregates(lp.name)
        except Exception:  # noqa: BLE001 - the probe still ends; the events already stored stand
            log.exception("reading the aggregates of probe %s failed", lp.name)
            return
        if rows:
            self.writer.set_probe_aggregates(lp._handle, [(r.key, r.count, r.values, r.hists) for r in rows])

    def end_all(self, reason: str) -> None:
        with self._lock:
            for lp in self.probes.values():
                if lp.status == "active":
                    lp._session.detach(lp.name, reason)
                    self._end(lp, lp._session.ended.get(lp.name, reason))
            for u in self._unresolved:
                if not u.bound and not u.ended:
                    u.ended = f"{u.waiting.library} never appeared in the traced tree ({reason})"
                    self._record_unresolved(u, u.ended)

    def end_owned(self, owner: str, reason: str) -> list[LiveProbe]:
        """End every active probe attached by ``owner`` (a client session that went away)."""
        with self._lock:
            ended = []
            for lp in self.probes.values():
                if lp.status == "active" and lp.owner == owner:
                    lp._session.detach(lp.name, reason)
                    self._end(lp, lp._session.ended.get(lp.name, reason))
                    ended.append(lp)
            return ended

    def owners(self) -> set[str]:
        """The owners of the active probes."""
        with self._lock:
            return {lp.owner for lp in self.probes.values() if lp.status == "active"}

    # -- the tick --------------------------------------------------------------------------------------
    def tick(self) -> int:
        """Store what the probes recorded since the last tick; end probes whose budget is spent."""
        from ingero.store import Event
        from ingero.store.schema import SOURCE_PROBE

        with self._lock:
            n = 0
            for session in self._sessions:
                if not session.loaded:
                    continue
                events = session.poll(0)
                by_name = {lp.name: lp for lp in self.probes.values() if lp._session is session}
                rows = []
                for ev in events:
                    lp = by_name.get(ev.probe)
                    if lp is None:
                        continue
                    values = tuple(_stored(ev.fields.get(f)) for f in lp.fields)
                    nums = [v for f, v in zip(lp.fields, values, strict=True)
                            if isinstance(v, int) and f not in ("latency", "retval", "ts", "pid", "tid")]
                    rows.append(Event(ev.ts_ns, ev.pid, ev.tid, SOURCE_PROBE, lp._handle.op, ev.latency_ns or 0, 0,
                                      nums[0] if nums else 0, nums[1] if len(nums) > 1 else 0,
                                      _int(ev.fields.get("retval")), 0, "", 0, values))
                    lp.events += 1
                    lp.recent.append(ev)
                if rows:
                    self.writer.add_events(rows)
                    n += len(rows)
                    if self.metrics is not None:
                        self._count(rows, by_name)
                self._record_lost(session, by_name.values())
                for name, why in session.ended.items():
                    lp = by_name.get(name)
                    if lp is not None and lp.status == "active":
                        self._end(lp, why)
            return n

    def _record_lost(self, session, probes) -> None:
        """Events a probe's ring could not hold, into lost_events as they happen: never silent."""
        from ingero.store.schema import SOURCE_PROBE

        for lp in probes:
            try:
                lost = session.stats(lp.name).lost
            except Exception:  # noqa: BLE001 - the session may be closing; the final count is read at close
                continue
            if lost > lp.lost:
                self.writer.add_lost(lost - lp.lost, f"probe {lp.name}: ring buffer full", probe_id=lp.id,
                                     source=SOURCE_PROBE)
                lp.lost = lost

    @property
    def lost(self) -> int:
        """Events lost by every probe so far."""
        with self._lock:
            return sum(lp.lost for lp in self.probes.values())

    def _count(self, rows: list, by_name: dict[str, LiveProbe]) -> None:
        """Each probe's events of this tick into the metrics, with latencies when the probe measures them."""
        for lp in by_name.values():
            lat = [r.duration for r in rows if r.op == lp._handle.op]
            if lat:
                self.metrics.observe_probe(lp.name, len(lat), lat if "return" in lp.direction else None)

    # -- reading ---------------------------------------------------------------------------------------
    def get(self, probe_id: int) -> LiveProbe:
        with self._lock:
            lp = self.probes.get(probe_id)
            if lp is None:
                raise NotFound(f"no probe with id {probe_id}",
                               hint=f"probe ids: {', '.join(map(str, sorted(self.probes))) or 'none'}")
            return lp

    def stats(self, probe_id: int):
        lp = self.get(probe_id)
        with self._lock:
            return lp._session.stats(lp.name) if lp._session.loaded else lp.final_stats

    def aggregates(self, probe_id: int) -> list:
        lp = self.get(probe_id)
        with self._lock:
            if not lp._session.loaded:
                return list(lp.final_aggregates or [])
            return lp._session.aggregates(lp.name)

    def close(self, reason: str = "the trace ended") -> None:
        with self._lock:
            self.tick()
            self.end_all(reason)
            for lp in self.probes.values():  # keep the final counts readable after the BPF objects go
                if lp._session.loaded:
                    try:
                        lp.final_stats = lp._session.stats(lp.name)
                        lp.final_aggregates = lp._session.aggregates(lp.name)
                    except Exception:  # noqa: BLE001 - a failed read must not keep the probes loaded
                        log.exception("reading the final counts of probe %s failed", lp.name)
            for session in self._sessions:
                session.close()


@dataclass
class _Unresolved:
    """A probe of a spec (``text``, named ``source``) whose library was found nowhere when it was checked."""

    text: str
    source: str
    waiting: object  # ingero.dsl.check.Waiting
    owner: str
    bound: bool = False
    ended: str = ""

    def names(self, lib) -> bool:
        from ingero.symbols.discovery import names_library

        return names_library(self.waiting.library, lib.path, lib.soname)


def _field_type(v) -> str:
    if v is None:
        return "u64"
    return {"string": "str", "comm": "str", "symbol": "str", "stack": "stack", "pystack": "stack", "code": "ptr",
            "pointer": "ptr", "enum": "enum"}.get(v.kind, ("i" if v.signed else "u") + str(8 * (v.size or 8)))


def _int(v) -> int:
    return v if isinstance(v, int) else 0


def _stored(v):
    """A recorded value as the store keeps it: a failed read through a pointer as its text."""
    from ingero.runtime.probes import ReadMiss

    return str(v) if isinstance(v, ReadMiss) else v
