"""The policy dynamic probes run under: the limits every probe is judged by (:class:`ProbeLimits`), and
what a probe bound later -- its library found when a traced process loads it -- is judged by then
(:class:`BindPolicy`: the MCP server's guards, applied again to the file the process really loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ingero.dsl.resolved import Budgets, ResolvedProbe
from ingero.errors import IngeroError
from ingero.limits import MAX_PROBES, MAX_SYMBOLS, PROBE_EVENTS, PROBE_TTL_S


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
        out = list(self.budget_excess(rp.budgets))
        if len(rp.symbols) > self.max_symbols:
            out.append(Excess(f"{len(rp.symbols)} symbols", f"{self.max_symbols}", "narrow the glob"))
        return tuple(out)

    def budget_excess(self, b: Budgets) -> tuple[Excess, ...]:
        """The ttl and events a spec asks for over these limits (what can be judged of a probe before its
        library is found: its symbols are counted then)."""
        out = []
        if b.ttl_s is not None and b.ttl_s > self.ttl_s:
            out.append(Excess(f"ttl {b.ttl_s:g}s", f"{self.ttl_s:g}s", "lower it or omit it"))
        if b.events is not None and b.events > self.events:
            out.append(Excess(f"events {b.events}", f"{self.events}", "lower it or omit it"))
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
        over = self.excess(rp)
        text = self.describe_budgets(rp.budgets, over=False)
        return text + (f"; OVER THE LIMIT: {'; '.join(e.short for e in over)}" if over else "")

    def describe_budgets(self, budgets: Budgets, over: bool = True) -> str:
        """The budgets in force for a probe asking for ``budgets``, these limits (and, with ``over``, what
        is over them: its ttl and events; its symbols are counted once its library is found)."""
        b = self.in_force(budgets)
        text = (f"budgets in force: ttl {b.ttl_s:g}s, events {b.events}" + (f", rate {b.rate}/s" if b.rate else "")
                + f" (server limits: ttl {self.ttl_s:g}s, events {self.events}, {self.max_symbols} symbols, "
                f"{self.max_probes} live probes)")
        excess = self.budget_excess(budgets) if over else ()
        return text + (f"; OVER THE LIMIT: {'; '.join(e.short for e in excess)}" if excess else "")


@dataclass(frozen=True)
class BindPolicy:
    """How a probe whose file is found later is judged when a traced process loads that file, and who hears
    of it. ``refusal(rp)``: why the probe, checked against that very file (``rp.library``), may not attach
    ('' = it may); asked of a probe waiting for its library, and of a probe already running, for each
    further copy it would bind (its allow-list decides on the copy). ``bound(probe_id, name, library, pid,
    refusal)``: told each time, with the refusal ('' when bound); e.g. the MCP server's audit log."""

    refusal: Callable[[ResolvedProbe], str]
    bound: Callable[[int, str, str, int, str], None] | None = None

    def judge(self, probe_id: int, rp: ResolvedProbe, lib) -> str:
        """The refusal of ``rp`` on ``lib`` (a :class:`~ingero.symbols.Library`), told to ``bound``."""
        why = self.refusal(replace(rp, library=replace(rp.library, path=lib.path, soname=lib.soname)))
        self.tell(probe_id, rp.name, lib, why)
        return why

    def tell(self, probe_id: int, name: str, lib, why: str) -> None:
        if self.bound is not None:
            self.bound(probe_id, name, lib.path, lib.pid or 0, why)
