"""The probe tools of the MCP server: symbols, validation with an estimate, and (live) attach/detach/results.

:class:`ProbeTools` holds everything the eight tools need and formats compact text; the MCP layer
(:mod:`ingero.mcp.server`) only registers them. It serves two modes:

* **replay** (``ingero mcp --db``): the symbol tools and ``validate_probe`` work on this machine's library
  files; ``list_probes``/``get_probe_results`` read the probes stored in the database.
* **live** (``ingero mcp --live --pid N`` or ``-- CMD``): a :class:`~ingero.tracer.session.TraceSession`
  runs in a thread and writes the database the standard tools read; libraries resolve from what the
  traced process mapped; with ``allow_attach`` the agent adds and removes probes
  (:class:`~ingero.tracer.dynamic.DynamicProbes`), under the guards of :class:`LiveOptions`.

Guards of ``attach_probe``: the library must be on the allow-list (CUDA libraries by default), a probe may
name only a process of the traced tree, its budgets may lower the server's limits but not raise them,
at most ``max_probes`` are active, attaches are serialised, and a probe ends when its target exits or when
the client session that attached it goes away (``end_owner``). A probe whose library no traced process
has mapped and no search path finds waits for it in the traced tree: judged by name now, and by the same
guards on the very file a process loads, when it loads it (:meth:`ProbeTools.bind_policy`; a refusal
then ends it, and is in the audit log). Every result is capped at :data:`~ingero.mcp.livetext.MAX_OUTPUT`
bytes.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from ingero.errors import IngeroError
from ingero.mcp.livesymbols import SymbolTools
from ingero.mcp.livetext import (
    _aggregates_text,
    _cell,
    _csv,
    _hms,
    _names,
    _page,
    _StoredAgg,
    _wrap,
    cap,
)
from ingero.runtime.format import ABSENT
from ingero.store.records import view_columns
from ingero.store.schema import SOURCE_PROBE
from ingero.tracer.dynamic import ProbeLimits

log = logging.getLogger(__name__)

#: longest window validate_probe's estimate looks back over, in seconds
MAX_ESTIMATE_WINDOW_S = 3600.0
#: why a probe ended when its tracer died without closing it (shown on the next open, replay included)
TRACER_DIED = ("the tracer stopped without closing the probe (killed or crashed); in-kernel aggregates "
               "not yet read were lost")
#: Rough per-call cost of a uprobe on this kind of machine (bench/bench_overhead.py measures it):
#: entry only, entry + return, and the extra cost of sending a recorded event to user space.
COST_ENTRY_NS = 700
COST_RETURN_NS = 800
COST_RECORD_NS = 500
ESTIMATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class LiveOptions:
    """The server's guards for probes (``ingero mcp --live`` flags)."""

    allow_attach: bool = False
    allow_libs: tuple[str, ...] = ()  # globs on a library's stem, soname, file name or path; () = CUDA libraries
    limits: ProbeLimits = field(default_factory=ProbeLimits)


class ToolRefused(IngeroError):
    """A guard refused a request; the message says which and what to do."""


class ProbeTools(SymbolTools):
    """The state and logic behind the probe tools (thread-safe; called from worker threads)."""

    def __init__(self, reader, *, session=None, options: LiveOptions | None = None,
                 conn_factory=None, runner=None, audit=None) -> None:
        self.reader = reader
        self.audit = audit  # ingero.audit.AuditLog: where a probe bound (or refused) after its attach is told
        self.session = session  # TraceSession or None (replay)
        self.runner = runner  # the thread running session.run(): the trace has ended once it is done
        self.options = options or LiveOptions()
        self._attach_lock = threading.Lock()
        self._conn = conn_factory() if conn_factory else (reader.connect() if reader is not None else None)
        self._db_lock = threading.Lock()

    # -- modes and the traced tree ---------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.session is not None

    def _lookups(self):
        """A live trace's (libraries not mapped yet are checked on the search path and bound when the tree
        maps them), else this machine's."""
        from ingero.dsl.lookup import MACHINE

        return self.session.lookups if self.live else MACHINE

    @property
    def root_pid(self) -> int | None:
        return self.session.pids[0] if self.live and self.session.pids else None

    def tree(self) -> set[int]:
        if not self.live:
            return set()
        pids = set(self.session.pids)
        tracer = self.session.tracer
        if tracer is not None and tracer.loaded:
            try:
                pids |= set(tracer.followed())
            except Exception:  # noqa: BLE001 - the tracer may be closing
                pass
        return pids

    def trace_state(self) -> str:
        if not self.live:
            return "replay"
        done = not self.runner.is_alive() if self.runner is not None else self.session.closed
        if done:
            return f"ended ({self.session.stopped_because or 'stopped'})"
        return "stopping" if self.session.closed else "running"

    def _pid_for(self, pid: int) -> int | None:
        """The pid a symbol tool looks at: the given one (live: must be in the traced tree), else the
        traced process (live) or None (replay: this machine's library files)."""
        if pid and pid > 0:
            if not self.live:
                raise ToolRefused(f"pid {pid}: a replay server works on library files, not processes",
                                  hint="omit pid, or serve a live trace: ingero mcp --live --pid N")
            if pid not in self.tree():
                raise ToolRefused(f"process {pid} is not in the traced process tree "
                                  f"({', '.join(map(str, sorted(self.tree()))) or 'none left'})",
                                  hint="this server only looks at the processes it traces")
            return pid
        return self.root_pid

    # -- allow-list --------------------------------------------------------------------------------
    def allowed(self, stem: str, soname: str | None, path: str | None) -> bool:
        from ingero.symbols.discovery import is_cuda_stem

        globs = self.options.allow_libs
        if not globs:
            return is_cuda_stem(stem)
        names = [stem, soname or "", os.path.basename(path or ""), path or ""]
        return any(fnmatch.fnmatchcase(n, g) for g in globs for n in names if n)

    def allow_list_text(self) -> str:
        return ", ".join(self.options.allow_libs) if self.options.allow_libs else "the CUDA libraries"

    # -- validate_probe ------------------------------------------------------------------------------------
    def validate(self, spec: str, window_s: float = ESTIMATE_WINDOW_S) -> tuple[str, dict]:
        """The validation text, and facts for the audit log (resolved symbols)."""
        from ingero.dsl import render
        from ingero.dsl.resolved import describe

        res = self._check(spec)
        if not res.ok:
            n = len(res.errors)
            return (f"INVALID: {n} error{'s' if n != 1 else ''} (line:column, message, hint)\n"
                    + render(res.errors, res.source)), {"valid": False}
        rs = res.spec
        n = len(rs.probes) + len(res.waiting)
        lines = [f"VALID: {n} probe{'s' if n != 1 else ''}"]
        facts = {"valid": True, "resolved": {p.name: [s.name for s in p.symbols] for p in rs.probes}}
        for w in res.waiting:
            refusal = self._waiting_refusal(w)
            facts.setdefault("waiting", {})[w.probe] = w.library
            lines.append(f"probe {w.probe}: waits for {w.library} in the traced tree ({w.searched}): checked, and "
                         "judged by the guards again, against the copy a traced process loads, when it loads it")
            lines.append("  " + self.options.limits.describe_budgets(w.budgets))
            lines.append("  attach: " + (f"refused: {refusal}" if refusal else
                                         ("allowed (to wait)" if self.options.allow_attach else
                                          "not possible: this server was started without --allow-attach")))
        for p in rs.probes:
            lines.append(describe(p, full=False))
            lines.append("  " + self.options.limits.describe(p))
            refusal = self._refusal(p)
            if self.live:
                lines.append("  attach: " + (f"refused: {refusal}" if refusal else
                                             ("allowed" if self.options.allow_attach else
                                              "not possible: this server was started without --allow-attach")))
            elif refusal:
                lines.append(f"  attach: would be refused: {refusal}")
        lines.append(self.estimate(rs, window_s))
        return cap("\n".join(lines)), facts

    def _check(self, spec: str):
        """The spec checked against the traced tree (live: a library found nowhere waits for it, see
        :meth:`TraceSession.check_spec`), else this machine's libraries."""
        from ingero.dsl import check

        if self.live:
            return self.session.check_spec(spec, "<spec>", may_wait=True)
        return check(spec, "<spec>", lookups=self._lookups())

    def _waiting_refusal(self, w) -> str:
        """Why a guard refuses a probe waiting for its library, as far as its name and budgets tell ('' if
        not): a path glob on the allow-list is judged when the file is loaded."""
        from ingero.symbols.discovery import stem_of

        soname = w.library if ".so" in w.library else None
        if not self.allowed(stem_of(w.library), soname, None) and not any("/" in g for g in self.options.allow_libs):
            return (f"{w.library} is not on this server's library allow-list ({self.allow_list_text()}); the "
                    "operator can add it with --allow-lib")
        over = self.options.limits.budget_excess(w.budgets)
        return over[0].refusal if over else ""

    def bind_policy(self, owner: str):
        """What judges this owner's probes on the file a traced process loads later: the same guards as at
        attach (:meth:`_refusal`), each outcome written to the audit log."""
        from ingero.tracer.policy import BindPolicy

        def bound(probe_id: int, name: str, path: str, pid: int, refusal: str) -> None:
            if self.audit is None:
                return
            from ingero.audit import AuditRecord, dumps_args, now_ns

            args = {"_ingero": {"probe_id": probe_id, "name": name, "library": path, "pid": pid, "owner": owner}}
            try:
                self.audit.record(AuditRecord(
                    now_ns(), owner, "", "http" if owner.startswith("http:") else "stdio", "", "probe/bind",
                    "attach_probe", dumps_args(args), 0.0, "refused" if refusal else "ok", refusal, 0,
                    str(self.reader.path) if self.reader is not None else ""))
            except Exception:  # noqa: BLE001 - the probe's own row says it in any case
                log.exception("could not write the audit record of a probe's binding")

        return BindPolicy(self._refusal, bound)

    def _refusal(self, p) -> str:
        """Why a guard would refuse this resolved probe, or ''."""
        lib = p.library
        from ingero.symbols.discovery import stem_of

        stem = stem_of(lib.soname or lib.path or lib.name)
        if not self.allowed(stem, lib.soname, lib.path):
            return (f"{lib.soname or lib.path or lib.name} is not on this server's library allow-list "
                    f"({self.allow_list_text()}); the operator can add it with --allow-lib")
        if self.live and p.pid is not None and p.pid not in self.tree():
            return (f"process {p.pid} is not in the traced process tree "
                    f"({', '.join(map(str, sorted(self.tree()))) or 'none left'})")
        over = self.options.limits.excess(p)
        if over:
            return over[0].refusal
        return ""

    def _recorded_ops(self, source: int) -> set[int] | None:
        """The ops of ``source`` the database's ``ops`` table names (None without the table)."""
        with self._db_lock:
            if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ops'").fetchone():
                return None
            return {int(o) for (o,) in self._conn.execute("SELECT op_id FROM ops WHERE source_id = ?", (source,))}

    def estimate(self, rs, window_s: float = ESTIMATE_WINDOW_S) -> str:
        """Events/s and overhead from the calls of the probe's symbols the standard set already traced."""
        from ingero.tracer.ops import DRIVER_SYMBOLS, OP_MASK, RUNTIME_SYMBOLS

        if self._conn is None:
            return "estimate: no basis (no trace database is open)"
        window_s = float(window_s)
        if not 0 < window_s <= MAX_ESTIMATE_WINDOW_S:
            raise ToolRefused(f"window_s must be more than 0 and at most {MAX_ESTIMATE_WINDOW_S:g} seconds, got "
                              f"{window_s:g}", hint="the estimate counts calls over the last window_s seconds")
        with self._db_lock:
            row = self._conn.execute("SELECT MIN(timestamp), MAX(timestamp) FROM events").fetchone()
        if not row or row[0] is None:
            return "estimate: no basis yet (the trace holds no events)"
        newest, when = int(row[1]), "last (stored)"
        end = newest
        if self.live and self.trace_state() == "running":
            # the window ends where the stored trace does: the writer stores a batch at a time, so on a busy
            # machine the newest second may not be in the database yet, and counting it as silence would
            # make the rate low; unless nothing at all came for a whole window (then it is silence)
            now = time.time_ns()
            behind_s = (now - newest) / 1e9
            if behind_s >= window_s:
                end, when = now, "last"
            else:
                when = f"last stored (up to {max(behind_s, 0.0):.1f} s ago)"
        start = max(int(row[0]), end - int(window_s * 1e9))
        span_s = max((end - start) / 1e9, 1e-3)
        out = [f"estimate over the {when} {span_s:.1f} s of the trace (standard-set calls of these symbols, "
               "before the where filter):"]
        total_rate = 0.0
        total_cost = 0.0
        for p in rs.probes:
            fam = p.library.family
            table, source = ((RUNTIME_SYMBOLS, 1) if fam == "cudart" else (DRIVER_SYMBOLS, 4) if fam == "cuda"
                             else ({}, 0))
            ops = sorted({table[s.name] & OP_MASK for s in p.symbols if s.name in table})
            unknown = [s.name for s in p.symbols if s.name not in table]
            recorded = self._recorded_ops(source)
            if ops and recorded is not None and not set(ops) & recorded:  # a set older than these ops
                out.append(f"  {p.name}: no basis: this database was recorded by a standard set that did not "
                           f"trace {_names([s.name for s in p.symbols if s.name in table])}; attach with a small "
                           "events/ttl budget and read get_probe_results")
                continue
            if not ops:
                out.append(f"  {p.name}: no basis: the standard set does not trace "
                           f"{_names(unknown)}; attach with a small events/ttl budget and read get_probe_results")
                continue
            q = (f"SELECT COUNT(*) FROM events WHERE source = ? AND op IN ({','.join('?' * len(ops))}) "
                 "AND timestamp >= ? AND timestamp <= ?")
            with self._db_lock:
                n = int(self._conn.execute(q, [source, *ops, start, end]).fetchone()[0])
            rate = n / span_s
            sampled = self._aggregate_rate(source, ops, start, end, int(row[0]), int(row[1]))
            basis = f"{n} calls in {span_s:.1f} s"
            if sampled is not None and sampled[0] > n:
                # --selective stored a sample: the per-minute totals of event_aggregates count every call
                counted, covered_s = sampled
                rate = counted / covered_s
                basis = (f"{counted} calls counted in {covered_s:.1f} s by event_aggregates (per-minute totals: "
                         f"the stored events are sampled, {n} stored)")
            per_call = COST_ENTRY_NS + (COST_RETURN_NS if p.needs_return else 0) + (COST_RECORD_NS if p.record else 0)
            cost = rate * per_call / 1e9
            total_rate += rate
            total_cost += cost
            part = f"  {p.name}: {basis} -> ~{rate:.1f} events/s"
            if p.filter is not None:
                part += " at most (the where filter drops some)"
            part += f"; overhead ~{cost * 100:.3f}% of one CPU (~{per_call / 1000:.1f} us per call)"
            if unknown:
                part += f"; no basis for {_names(unknown)} (not in the standard set)"
            out.append(part)
        if len(rs.probes) > 1:
            out.append(f"  total: ~{total_rate:.1f} events/s, ~{total_cost * 100:.3f}% of one CPU")
        return "\n".join(out)

    def _aggregate_rate(self, source: int, ops: list[int], start: int, end: int, first: int,
                        last: int) -> tuple[int, float] | None:
        """(calls counted, seconds covered) by the minute buckets of event_aggregates overlapping
        [start, end], clipped to the trace; None without such buckets."""
        if not self._db("SELECT 1 FROM sqlite_master WHERE name = 'event_aggregates'"):
            return None
        minute = 60 * 10**9
        rows = self._db(f"SELECT MIN(bucket), MAX(bucket), SUM(count) FROM event_aggregates WHERE source = ? AND "
                        f"op IN ({','.join('?' * len(ops))}) AND bucket > ? AND bucket <= ?",
                        [source, *ops, start - minute, end])
        if not rows or rows[0][2] is None:
            return None
        lo, hi, counted = max(int(rows[0][0]), first), min(int(rows[0][1]) + minute, last), int(rows[0][2])
        return counted, max((hi - lo) / 1e9, 1e-3)

    # -- attach / detach -----------------------------------------------------------------------------------
    def attach(self, spec: str, owner: str, facts: dict | None = None) -> tuple[str, dict]:
        """Attach ``spec``; ``facts`` (for the audit log) gets the resolved symbols as soon as they are
        known, so a refusal is recorded with them too."""
        facts = facts if facts is not None else {}

        if not self.live:
            raise ToolRefused("attach_probe needs a live trace: this server replays a stored database",
                              hint="start one with: ingero mcp --live --allow-attach --pid N (or -- CMD ARGS)")
        if not self.options.allow_attach:
            raise ToolRefused("attaching probes is off on this server", hint="the operator enables it with "
                              "--allow-attach")
        if self.session.closed or self.session.dynamic is None:
            raise ToolRefused(f"the trace has ended ({self.session.stopped_because or 'stopped'}): nothing to "
                              "attach to", hint="the database stays readable with the standard tools")
        with self._attach_lock:  # concurrent attaches are serialised
            res = self._check(spec)
            rs = res.resolved()  # SpecError: every error, located
            facts["resolved"] = {p.name: [s.name for s in p.symbols] for p in rs.probes}
            if res.waiting:
                facts["waiting"] = {w.probe: w.library for w in res.waiting}
            for name, why in [(p.name, self._refusal(p)) for p in rs.probes] + [
                    (w.probe, self._waiting_refusal(w)) for w in res.waiting]:
                if why:
                    raise ToolRefused(f"probe {name}: {why}")
            probes = self.session.add_checked(res, owner=owner, policy=self.bind_policy(owner))
        facts["probe_ids"] = [lp.id for lp in probes]
        lines = []
        for lp in probes:
            b = lp.budgets
            pending = lp.waiting_for and not lp.symbols  # found nowhere yet: checked when a process loads it
            if pending:
                what = f"{lp.waiting_for}; the guards are applied again to that file"
            else:
                what = (f"{len(lp.symbols)} symbol{'s' if len(lp.symbols) != 1 else ''} ({_names(list(lp.symbols))}) "
                        f"on {lp.library}" + (f" ({lp.waiting_for}: bound when a traced process loads it)"
                                              if lp.waiting_for else "") + f", {lp.direction}")
            lines.append(
                f"attached probe {lp.id} '{lp.name}': {what}, pid {self.root_pid}\n"
                f"  budgets in force: ttl {b.ttl_s:g}s, events {b.events}"
                + (f", rate {b.rate}/s" if b.rate else "")
                + ("\n  symbols and fields: known once it is checked against the copy loaded" if pending else
                   f"\n  events: events table source={SOURCE_PROBE} op={lp.id}; fields {', '.join(lp.fields)}"
                   if lp.fields else "\n  aggregates in the kernel (no per-call events)")
                + f"; read with get_probe_results(probe_id={lp.id})")
        return "\n".join(lines), facts

    def detach(self, probe_id: int) -> str:
        if not self.live or self.session.dynamic is None:
            raise ToolRefused("detach_probe needs a live trace: this server replays a stored database")
        dyn = self.session.dynamic
        t0 = time.perf_counter()
        lp = dyn.get(probe_id)
        if lp.status != "active":
            return f"probe {probe_id} '{lp.name}' had already ended: {lp.end_reason}"
        dyn.detach(probe_id, "detached by request (detach_probe)")
        dt = time.perf_counter() - t0
        return (f"detached probe {probe_id} '{lp.name}' in {dt * 1000:.1f} ms; {lp.events} events recorded "
                "(they stay in the database)")

    def end_owner(self, owner: str, reason: str) -> list[int]:
        if not self.live or self.session.dynamic is None or self.session.closed:
            return []
        return [lp.id for lp in self.session.dynamic.end_owned(owner, reason)]

    def end_owner_prefix(self, prefix: str, reason: str) -> list[int]:
        """End the probes of every owner whose key (``stdio``, ``http:SESSION``) is ``prefix``."""
        ended = []
        for owner in self.owners():
            if owner.split(" ", 1)[0] == prefix:
                ended += self.end_owner(owner, reason)
        return ended

    def owners(self) -> set[str]:
        if not self.live or self.session.dynamic is None:
            return set()
        return self.session.dynamic.owners()

    # -- list_probes / get_probe_results -------------------------------------------------------------------
    def _db(self, sql: str, params=()) -> list[tuple]:
        if self._conn is None:
            return []
        with self._db_lock:
            return self._conn.execute(sql, params).fetchall()

    def _has_probes_table(self) -> bool:
        return bool(self._db("SELECT 1 FROM sqlite_master WHERE name = 'probes'"))

    def _orphaned(self) -> set[int]:
        """Probes whose tracer died without closing them (SIGKILL, crash): the database says active, with no
        end, and their trace session never stopped, and no tracer is writing them now (this server's own
        session, or ``--db --live`` on a database another tracer writes)."""
        if not self._has_probes_table() or (self.reader is not None and self.reader.mode.kind == "live"):
            return set()
        mine = getattr(getattr(self.session, "writer", None), "session_id", None) if self.live else None
        has_sessions = bool(self._db("SELECT 1 FROM sqlite_master WHERE name = 'sessions'"))
        stopped = "(SELECT s.stopped_at FROM sessions s WHERE s.id = p.session_id)" if has_sessions else "0"
        return {int(r[0]) for r in self._db(
            f"SELECT p.id FROM probes p WHERE p.ended_at = 0 AND COALESCE({stopped}, 0) = 0 "
            "AND p.session_id IS NOT ?", (mine,))}

    def list_probes(self, limit: int = 50, offset: int = 0) -> str:
        lim, off = _page(limit, offset, 50)
        live = {}
        if self.live and self.session.dynamic is not None:
            live = dict(self.session.dynamic.probes)
        stored = {}
        if self._has_probes_table():
            for r in self._db("SELECT id, name, status, end_reason, library, symbols, started_at, ended_at "
                              "FROM probes ORDER BY id"):
                stored[int(r[0])] = r
        orphaned = self._orphaned() - set(live)
        counts = dict(self._db("SELECT op, COUNT(*) FROM events WHERE source = ? GROUP BY op", (SOURCE_PROBE,)))
        ids = sorted(set(live) | set(stored))
        head = f"trace: {self.trace_state()}" + (f", pid {self.root_pid}" if self.live else "")
        if not ids:
            return head + "\nno probes attached yet" + (" (attach one with attach_probe)" if
                                                        self.options.allow_attach and self.live else "")
        rows = []
        for i in ids:
            lp = live.get(i)
            st = stored.get(i)
            if lp is not None:
                rows.append((i, lp.name, "waiting" if lp.waiting_for else lp.status, counts.get(i, 0), len(lp.symbols),
                             os.path.basename(lp.library),
                             lp.owner, _hms(lp.attached_at), _hms(lp.ended_at) if lp.ended_at else "",
                             lp.end_reason))
            else:
                import json

                syms = len(json.loads(st[5] or "[]"))
                status, why = ("ended", TRACER_DIED) if i in orphaned else ("ended" if st[7] else st[2], st[3])
                rows.append((i, st[1], status, counts.get(i, 0), syms, os.path.basename(st[4] or ""), "",
                             _hms(st[6] / 1e9), _hms(st[7] / 1e9) if st[7] else "", why))
        active = sum(1 for r in rows if r[2] in ("active", "waiting"))
        shown = rows[off:off + lim]
        head += (f"; {len(rows)} probes, {active} active (at most {self.options.limits.max_probes}); "
                 + (f"rows {off + 1}-{off + len(shown)}" if shown else f"no rows from offset {off}"))
        body = _csv(("id", "name", "status", "events", "symbols", "library", "owner", "attached", "ended",
                     "why_ended"), shown)
        more = f"\nnext page: offset={off + lim}" if off + lim < len(rows) else ""
        return cap(head + "\n" + _wrap(body) + more)

    def results(self, probe_id: int, limit: int = 20, offset: int = 0) -> str:
        import json

        lim, off = _page(limit, offset, 20)
        lp = None
        if self.live and self.session.dynamic is not None:
            lp = self.session.dynamic.probes.get(probe_id)
        st = self._db("SELECT name, status, end_reason, fields, view, ended_at FROM probes WHERE id = ?",
                      (probe_id,)) if self._has_probes_table() else []
        if lp is None and not st:
            known = set(self.session.dynamic.probes) if self.live and self.session.dynamic is not None else set()
            if self._has_probes_table():
                known |= {int(r[0]) for r in self._db("SELECT id FROM probes")}
            raise ToolRefused(f"no probe with id {probe_id}",
                              hint=f"probe ids: {', '.join(map(str, sorted(known))) or 'none'} (see list_probes)")
        name = lp.name if lp else st[0][0]
        status = (lp.status if lp else ("ended" if st[0][5] else st[0][1]))
        why = lp.end_reason if lp else st[0][2]
        if lp is not None and lp.waiting_for:
            status, why = "waiting", lp.waiting_for
        if lp is None and probe_id in self._orphaned():
            status, why = "ended", TRACER_DIED
        fields = [f["name"] for f in json.loads(st[0][3])] if st else list(lp.fields)
        view = st[0][4] if st else ""
        n = int(self._db("SELECT COUNT(*) FROM events WHERE source = ? AND op = ?", (SOURCE_PROBE, probe_id))[0][0])
        out = [f"probe {probe_id} '{name}': {status}" + (f" ({why})" if why else "") + f"; {n} events stored"]
        if lp is not None and self.session.dynamic is not None:
            stats = self.session.dynamic.stats(probe_id)
            if stats is not None:
                out.append(f"kernel counters: hits {stats.hits}, matched {stats.matched}, filtered {stats.filtered}, "
                           f"rate dropped {stats.rate_dropped}, budget dropped {stats.budget_dropped}, "
                           f"lost {stats.lost}, agg overflow {stats.agg_overflow}")
                out += _counters_explained(stats, n)
            aggs = self.session.dynamic.aggregates(probe_id)
            if aggs:
                out.append(_aggregates_text(aggs, lim, off))
        elif self._db("SELECT 1 FROM sqlite_master WHERE name = 'probe_aggregates'"):
            stored = self._db("SELECT key, count, aggs, hists FROM probe_aggregates WHERE probe_id = ? "
                              "ORDER BY count", (probe_id,))
            if stored:
                out.append("aggregates as last read from the kernel (stored):")
                out.append(_aggregates_text([_StoredAgg(json.loads(k), c, json.loads(a or "{}"),
                                                        json.loads(h or "{}")) for k, c, a, h in stored], lim, off))
        if fields and view and n:
            vq = f'"{view}"'
            # exact counts per value of each recorded field with few distinct values (sizes, kinds, retvals)
            view_cols = dict(zip(fields, view_columns(fields), strict=True))
            for f in fields:
                if f in ("ts", "stack", "latency", "tid"):
                    continue
                col = "retval" if f == "retval" else view_cols[f]
                vals = self._db(f'SELECT "{col}", COUNT(*) FROM {vq} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 21')
                if 0 < len(vals) <= 20:
                    out.append(f"by {f}: " + ", ".join(f"{_cell(v)}: {c}" for v, c in vals))
            cols = ["timestamp", "pid", "latency", "retval"] + [view_cols[f] for f in fields
                                                                 if f not in ("latency", "retval")]
            cols = list(dict.fromkeys(cols))
            try:
                rows = self._db(f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM {vq} "
                                "ORDER BY timestamp DESC LIMIT ? OFFSET ?", (lim, off))
            except Exception as e:  # noqa: BLE001
                rows = []
                out.append(f"(could not read {view}: {e})")
            rows.reverse()
            if rows:
                out.append(f"recent events, newest last (rows {off + 1}-{off + len(rows)} counted from the newest "
                           f"of {n}; view {view} in run_sql has them all):")
                # a built-in the probe does not have (an entry-only probe has no latency or retval) prints as
                # absent, never as the 0 stored in its place
                absent = {i for i, c in enumerate(cols) if c in ("latency", "retval") and c not in fields}
                out.append(_wrap(_csv(tuple(cols), [tuple(ABSENT if i in absent else _cell(v) for i, v in enumerate(r))
                                                    for r in rows])))
                if off + lim < n:
                    out.append(f"older: offset={off + lim}")
        elif not n and not any("aggregates" in line for line in out[1:]):
            out.append("no events yet" + (" (the probe is active: call again after the workload runs)"
                                          if status == "active" else " (it is not on any file yet)"
                                          if status == "waiting" else ""))
        return cap("\n".join(out))


def _counters_explained(stats, stored: int) -> list[str]:
    """Why hits, matched and the events stored differ, when they do (nothing left unexplained)."""
    lines = []
    open_calls = stats.hits - stats.filtered - stats.rate_dropped - stats.matched
    if open_calls > 0:
        lines.append(f"hits - filtered - rate dropped - matched = {open_calls}: calls entered but not counted yet "
                     "(in flight when the counters were read: a call with a return part is counted when it "
                     "returns; or never returned: the process exited inside it)")
    recorded = stats.matched - stats.budget_dropped - stats.lost
    if stored and stored != recorded:
        lines.append(f"{stored} events stored of {recorded} recorded in the kernel (matched - budget dropped - "
                     "lost): " + ("the rest are in the ring buffer or the writer's queue, stored within a batch"
                                  if stored < recorded else "the counters were read before the newest calls"))
    return lines
