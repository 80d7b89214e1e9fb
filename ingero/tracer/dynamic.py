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

from ingero.dsl.resolved import Budgets, ResolvedSpec
from ingero.errors import IngeroError, NotFound
from ingero.tracer.policy import BindPolicy, Excess, ProbeLimits  # noqa: F401 - ProbeLimits, Excess: re-exported

log = logging.getLogger(__name__)

#: ring buffer of each spec attached to a live trace (pages): 8 MiB, ~100k records of a burst while the
#: tracer is busy elsewhere (what it cannot hold is counted: LiveProbe.lost, lost_events)
LIVE_PROBE_RINGBUF_PAGES = 2048


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
    deadline: float | None = None  # (monotonic) when the ttl of a probe still waiting for its library ends
    _session: object = field(default=None, repr=False)
    _handle: object = field(default=None, repr=False)
    #: a probe whose library was found nowhere: not checked yet, no session (see DynamicProbes.wait_for)
    _pending: _Unresolved | None = field(default=None, repr=False)
    _policy: BindPolicy | None = field(default=None, repr=False)

    @property
    def waiting_for(self) -> str | None:
        """What an active probe still waits for (``waiting for LIB in the traced tree``), or None."""
        if self.status != "active":
            return None
        if self._pending is not None:
            return self._pending.text_waiting
        return self._session.waiting().get(self.name) if self._session is not None else None


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
        self._lock = threading.RLock()

    # -- attach / detach -------------------------------------------------------------------------------
    def add(self, result, *, owner: str = "", policy: BindPolicy | None = None) -> list[LiveProbe]:
        """Every probe of a spec checked with ``may_wait`` (a :class:`~ingero.dsl.CheckResult`): those
        resolved attached now (:meth:`attach`), those whose library was found nowhere waiting for it
        (:meth:`wait_for`); all of them counted against ``max_probes`` together, before any attaches."""
        with self._lock:
            self._room(len(result.resolved().probes) + len(result.waiting))
            out = self.attach(result.spec, owner=owner, policy=policy) if result.spec.probes else []
            return out + self.wait_for(result, owner=owner, policy=policy)

    def _room(self, n: int, taking: LiveProbe | None = None) -> None:
        """Refuse ``n`` more probes past ``max_probes`` (``taking``: a waiting probe they replace)."""
        active = sum(1 for p in self.probes.values() if p.status == "active" and p is not taking)
        if active + n > self.limits.max_probes:
            raise IngeroError(f"at most {self.limits.max_probes} probes may be active at once ({active} are)",
                              hint="detach one first")

    def attach(self, spec: ResolvedSpec, *, owner: str = "", policy: BindPolicy | None = None,
               waiting: LiveProbe | None = None) -> list[LiveProbe]:
        """Compile, load and attach every probe of a checked spec; register them with the database. The
        budgets in force are the spec's capped by the limits; a probe over the symbol limit is refused
        (IngeroError), as is one probe too many. ``policy`` judges each further copy of a library named
        by a name (:meth:`offer`); ``waiting``: the probe waiting for this file that this one becomes (its
        id, ``probes`` row and owner kept)."""
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
            self._room(len(spec.probes), waiting)
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
                ), waiting=waiting._handle if waiting is not None else None)
                lp = LiveProbe(
                    id=handle.probe_id, name=rp.name, spec=text, library=library,
                    symbols=tuple(s.name for s in rp.symbols), fields=tuple(rp.record), direction=rp.direction,
                    budgets=rp.budgets, owner=owner, attached_at=waiting.attached_at if waiting else time.time(),
                    _session=session, _handle=handle, _policy=policy,
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
        """A traced process maps ``lib``: attach the probes waiting for it (see ProbeSession.offer), each
        judged first by its :class:`BindPolicy` on this very file; check a probe whose library was found
        nowhere against this file, then attach it (:meth:`wait_for`)."""
        with self._lock:
            out = []
            for session in list(self._sessions):
                out += self._offer_to(session, lib)
            for lp in [p for p in self.probes.values() if p._pending is not None and p.status == "active"]:
                if not lp._pending.bound and lp._pending.names(lib) and self._resolve(lp, lib):
                    # the new probe's session takes this very file (judged on it already)
                    out += self._offer_to(self._sessions[-1], lib, judged=True)
            return out

    def _offer_to(self, session, lib, judged: bool = False) -> list:
        if not judged:
            self._judge(session, lib)
        out = session.offer(lib)
        for b in out:
            for lp in self.probes.values():
                if lp._session is session and lp.name == b.probe and b.symbols:
                    lp.library = ", ".join(dict.fromkeys([*filter(None, lp.library.split(", ")), b.path])
                                           ) if "/" in lp.library else b.path
        return out

    def _judge(self, session, lib) -> None:
        """End the probes of ``session`` that would bind ``lib`` and whose policy refuses that file."""
        for name in session.takes(lib):
            lp = next((p for p in self.probes.values() if p._session is session and p.name == name), None)
            if lp is None or lp._policy is None or lp.status != "active":
                continue
            why = lp._policy.judge(lp.id, session.probe(name), lib)
            if why:
                reason = f"refused on the copy pid {lib.pid} loaded ({lib.path}): {why}"
                session.ended[name] = reason
                self._stop(lp, reason)

    def wait_for(self, result, owner: str = "", policy: BindPolicy | None = None) -> list[LiveProbe]:
        """The probes of a checked spec whose library was found nowhere (``result.waiting``, checked with
        ``may_wait``): each is registered now (a ``probes`` row, an id) and waits for a file of that name
        in the traced tree, is checked against it when a process opens it, judged by ``policy``, and
        attached then under the same id; one that cannot be, or whose library never shows, ends with the
        reason. Its ttl runs from now."""
        from ingero.runtime.libwatch import watch_names
        from ingero.store import ProbeInfo

        if not result.waiting:
            return []
        if self.watcher is None:
            raise IngeroError(f"no library {result.waiting[0].library!r} found, and this trace binds no library "
                              "loaded later", hint="give the library's path")
        with self._lock:
            self._room(len(result.waiting))
            self.watcher.watch(watch_names(w.library for w in result.waiting))
            out = []
            for w in result.waiting:
                text = _probe_text(result, w.probe)
                handle = self.writer.register_probe(ProbeInfo(name=w.probe, spec=text, library=w.library,
                                                              at_return=False))
                budgets = self.limits.in_force(w.budgets)
                lp = LiveProbe(id=handle.probe_id, name=w.probe, spec=text, library=w.library, symbols=(), fields=(),
                               direction="", budgets=budgets, owner=owner, attached_at=time.time(),
                               deadline=time.monotonic() + budgets.ttl_s, _handle=handle, _policy=policy,
                               _pending=_Unresolved(result.source.text, result.source.name, w, owner))
                self.probes[lp.id] = lp
                out.append(lp)
            return out

    def _resolve(self, lp: LiveProbe, lib) -> bool:
        """Check the waiting probe ``lp`` against ``lib``, judge it, attach it; else end it with why."""
        from ingero.dsl import check
        from ingero.dsl.lookup import TreeLookups

        u = lp._pending
        res = check(u.text, u.source, lookups=TreeLookups(bound=lib), only=frozenset({u.waiting.probe}))
        try:
            if not res.ok:
                e = res.errors[0]
                raise IngeroError(f"line {e.span.line}: {e.message}" + (f" ({e.hint})" if e.hint else ""))
            spec = res.resolved()
            rp = spec.probes[0]
            b = self.limits.in_force(rp.budgets)  # the ttl ran from when it began to wait
            rp = replace(rp, budgets=replace(b, ttl_s=max(min(b.ttl_s, lp.deadline - time.monotonic()), 1e-3)))
            why = lp._policy.judge(lp.id, rp, lib) if lp._policy is not None else ""
            if not why:
                self.attach(replace(spec, probes=(rp,)), owner=u.owner, policy=lp._policy, waiting=lp)
                u.bound = True
                return True
            reason = f"refused when pid {lib.pid} loaded {lib.path}: {why}"
        except IngeroError as e:
            reason = f"cannot be checked against {lib.path}, the {u.waiting.library} pid {lib.pid} loaded: {e.message}"
            if lp._policy is not None:
                lp._policy.tell(lp.id, lp.name, lib, reason)
        log.warning("probe %s %s", lp.name, reason)
        self._stop(lp, reason)
        return False

    def not_attached(self) -> dict[str, str]:
        """The probes that never got a file to attach to, with why (their library never appeared, the
        copy that did could not be checked, or was refused)."""
        with self._lock:
            return {lp.name: lp.end_reason for lp in self.probes.values() if lp.status == "ended" and (
                lp._pending is not None or " never appeared in the traced tree" in lp.end_reason)}

    def waiting(self) -> dict[str, str]:
        with self._lock:
            out = {}
            for session in self._sessions:
                out.update(session.waiting())
            for lp in self.probes.values():
                if lp._pending is not None and lp.status == "active":
                    out[lp.name] = lp._pending.text_waiting
            return out

    def detach(self, probe_id: int, reason: str = "detached by request") -> LiveProbe:
        with self._lock:
            lp = self.probes.get(probe_id)
            if lp is None:
                known = ", ".join(str(i) for i in sorted(self.probes)) or "none"
                raise NotFound(f"no probe with id {probe_id}", hint=f"probe ids: {known}")
            if lp.status == "active":
                self._stop(lp, reason)
            return lp

    def _stop(self, lp: LiveProbe, reason: str) -> None:
        """End an active probe: its links closed (or its wait given up), why in the database."""
        if lp._pending is not None:
            lp._pending.ended = reason
            self._end(lp, reason)
        else:
            lp._session.detach(lp.name, reason)
            self._end(lp, lp._session.ended.get(lp.name, reason))

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
                    self._stop(lp, f"{lp._pending.waiting.library} never appeared in the traced tree ({reason})"
                               if lp._pending is not None else reason)

    def end_owned(self, owner: str, reason: str) -> list[LiveProbe]:
        """End every active probe attached by ``owner`` (a client session that went away)."""
        with self._lock:
            ended = []
            for lp in self.probes.values():
                if lp.status == "active" and lp.owner == owner:
                    self._stop(lp, reason)
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
            now = time.monotonic()
            for lp in list(self.probes.values()):
                if lp._pending is not None and lp.status == "active" and now >= lp.deadline:
                    self._stop(lp, f"ttl {lp.budgets.ttl_s:g}s elapsed while waiting for {lp._pending.waiting.library} "
                                   "in the traced tree")
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
            if lp._session is None:
                return None  # still waiting for its library (or never found it): nothing ran
            return lp._session.stats(lp.name) if lp._session.loaded else lp.final_stats

    def aggregates(self, probe_id: int) -> list:
        lp = self.get(probe_id)
        with self._lock:
            if lp._session is None:
                return []
            if not lp._session.loaded:
                return list(lp.final_aggregates or [])
            return lp._session.aggregates(lp.name)

    def close(self, reason: str = "the trace ended") -> None:
        with self._lock:
            self.tick()
            self.end_all(reason)
            for lp in self.probes.values():  # keep the final counts readable after the BPF objects go
                if lp._session is not None and lp._session.loaded:
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

    @property
    def text_waiting(self) -> str:
        return (f"waiting for {self.waiting.library} in the traced tree ({self.waiting.searched}: checked against "
                "the copy the tree loads)")

    def names(self, lib) -> bool:
        from ingero.symbols.discovery import names_library

        return names_library(self.waiting.library, lib.path, lib.soname)


def _probe_text(result, name: str) -> str:
    """The lines of probe ``name`` in a checked spec's text (the whole text if the parse tree is missing)."""
    for p in result.tree.probes if result.tree is not None else ():
        if p.name == name:
            return "\n".join(result.source.text.splitlines()[p.span.line - 1 : p.span.end_line])
    return result.source.text


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
