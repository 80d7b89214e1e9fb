"""AST -> resolved spec: every name looked up, every type checked, every error located.

Each probe goes through :data:`PIPELINE`, in order; every pass is a function
``(ProbeContext, Report) -> ProbeContext`` in its own module (see :mod:`ingero.dsl.context`):

1. :func:`~ingero.dsl.clauses.clauses`       -- at most one where/record/aggregate/limit clause; budgets
                                                 (:mod:`~ingero.dsl.budgets`; the symbol budget is needed by 2);
2. :func:`~ingero.dsl.target.target`         -- library (installed, or a catalogue family that is not
                                                 installed here), symbols (globs, aliases, per-thread variants);
3. :func:`~ingero.dsl.signatures.signatures` -- the C signature of every symbol: declared, catalogue, or none;
4. :func:`~ingero.dsl.outputs.outputs`       -- record and aggregate fields resolved to Values placed by the
                                                 ABI (:mod:`~ingero.dsl.fields`);
5. :func:`~ingero.dsl.filter.filter_`        -- the where expression type-checked (units, enums, pointers,
                                                 strings).

Every pass reports all the errors it finds; once a pass of a probe reported one, that probe's later
passes are skipped, so that one mistake does not cascade. The machine (libraries, symbols, catalogue) is
reached only through a :class:`~ingero.dsl.lookup.Lookups`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ingero.dsl import ast
from ingero.dsl.clauses import clauses
from ingero.dsl.context import ProbeContext, Report
from ingero.dsl.diagnostics import Diagnostic, SpecError
from ingero.dsl.fields import SYMBOL
from ingero.dsl.filter import filter_, uses_return
from ingero.dsl.lookup import MACHINE, Lookups
from ingero.dsl.outputs import outputs
from ingero.dsl.parser import parse
from ingero.dsl.resolved import Budgets, RAgg, ResolvedProbe, ResolvedSpec
from ingero.dsl.signatures import signatures
from ingero.dsl.source import Source, Span
from ingero.dsl.target import target

Pass = Callable[[ProbeContext, Report], ProbeContext]
PIPELINE: tuple[Pass, ...] = (clauses, target, signatures, outputs, filter_)


@dataclass(frozen=True)
class Waiting:
    """A probe whose library is nowhere to be found yet (``check(..., may_wait=True)``): it is checked
    against the copy the traced processes map, when they map it (``only={name}``)."""

    probe: str
    library: str
    searched: str  # what the search said
    budgets: Budgets = Budgets()  # the probe's own limits (its clauses are checked before its library)


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` returns: the resolved spec, or the errors (never both); with ``may_wait``, also
    the probes left to check once their library is mapped (``waiting``; not in ``spec``)."""

    source: Source
    spec: ResolvedSpec | None
    errors: tuple[Diagnostic, ...]
    tree: ast.Spec | None = None
    waiting: tuple[Waiting, ...] = ()

    @property
    def ok(self) -> bool:
        return self.spec is not None

    def resolved(self) -> ResolvedSpec:
        """The resolved spec; raises :class:`SpecError` with every error otherwise."""
        if self.spec is None:
            raise SpecError(self.errors, self.source)
        return self.spec


#: bounds of what a spec author (an agent over MCP) controls: the probe name (it becomes ops.name and the
#: view probe_NAME) and the whole spec text
MAX_PROBE_NAME_CHARS = 64
MAX_SPEC_CHARS = 64 * 1024


def check(
    text: str | bytes, name: str = "<spec>", *, pid: int | None = None, lookups: Lookups = MACHINE,
    may_wait: bool = False, only: frozenset[str] | None = None,
) -> CheckResult:
    """Parse and check a spec against this machine's libraries and the signature catalogue.

    ``pid``: resolve libraries from what that process mapped (a ``pid N`` in a target wins). ``lookups``:
    where libraries, symbols and signatures come from. ``may_wait``: a probe whose library (named by a
    stem or soname) is found nowhere is not an error but :attr:`CheckResult.waiting`. ``only``: check these
    probes and leave the others out. Never raises for a bad spec: errors come back in
    ``CheckResult.errors`` (each with line, column, message, hint).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    source = Source(text, name)
    bad = _not_text(text)
    if bad is not None:
        return CheckResult(source, None, (bad,))
    if len(text) > MAX_SPEC_CHARS:
        return CheckResult(source, None, (Diagnostic(
            Span(1, 1, 1, 2), f"the spec is {len(text)} characters, more than the {MAX_SPEC_CHARS} allowed",
            "split it into several specs, or match symbols with a glob instead of listing them"),))
    try:
        tree = parse(text, name)
    except SpecError as e:
        return CheckResult(source, None, e.diagnostics)
    report = Report()
    probes: list[ResolvedProbe] = []
    seen: dict[str, ast.Probe] = {}
    lines = text.splitlines()
    waiting: list[Waiting] = []
    for i, p in enumerate(tree.probes):
        if only is not None and p.name not in only:
            continue
        if len(p.name) > MAX_PROBE_NAME_CHARS:
            report.error(p.name_span, f"the probe name is {len(p.name)} characters, more than the "
                         f"{MAX_PROBE_NAME_CHARS} allowed", "give it a shorter name")
            continue
        if p.name in seen:
            report.error(
                p.name_span,
                f"a second probe named {p.name!r}",
                f"the first is on line {seen[p.name].span.line}; give each probe its own name",
            )
            continue
        seen[p.name] = p
        ctx = ProbeContext(p, i, p.target.pid if p.target.pid is not None else pid, lookups, may_wait=may_wait)
        for step in PIPELINE:
            mark = len(report)
            ctx = step(ctx, report)
            if len(report) > mark:
                break
            if ctx.waits_for is not None:
                waiting.append(Waiting(p.name, p.target.library, ctx.waits_for, ctx.budgets))
                break
        else:
            probes.append(resolved_probe(ctx, "\n".join(lines[p.span.line - 1 : p.span.end_line])))
    if len(report):
        return CheckResult(source, None, report.errors, tree)
    return CheckResult(source, ResolvedSpec(tuple(probes), name, text), (), tree, tuple(waiting))


def resolved_probe(ctx: ProbeContext, text: str) -> ResolvedProbe:
    """The probe every pass has checked; one without record or aggregate counts calls per symbol."""
    values, aggs, by, notes = dict(ctx.values), ctx.aggregates, ctx.by, ctx.notes
    if not ctx.record and not aggs:
        aggs, by = (RAgg("count", None),), ("symbol",)
        values["symbol"] = SYMBOL
        notes += ("no record or aggregate clause: counting calls per symbol",)
    return ResolvedProbe(
        name=ctx.probe.name,
        index=ctx.index,
        library=ctx.lib,
        symbols=ctx.symbols,
        values=tuple(values.values()),
        filter=ctx.filter,
        filter_at_return=ctx.filter is not None and uses_return(ctx.filter, ctx),
        record=ctx.record,
        aggregates=aggs,
        by=by,
        budgets=ctx.budgets,
        needs_return=any(v.at_return for v in values.values()),
        pid=ctx.pid,
        notes=notes,
        target_pid=ctx.probe.target.pid,
        text=text,
    )


def check_file(path: str, *, pid: int | None = None, lookups: Lookups = MACHINE) -> CheckResult:
    with open(path, "rb") as f:
        return check(f.read(), path, pid=pid, lookups=lookups)


_NOT_TEXT = re.compile(r"[\udc80-\udcff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _not_text(text: str) -> Diagnostic | None:
    """A located error at the first byte that is not UTF-8 text (as decoded with surrogateescape) or is a
    control character, or None."""
    m = _NOT_TEXT.search(text)
    if m is None:
        return None
    line = text.count("\n", 0, m.start()) + 1
    col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
    ch = m.group()
    what = f"byte {ord(ch) - 0xDC00:#04x} is not UTF-8 text" if ch >= "\udc80" else f"control character {ord(ch):#04x}"
    return Diagnostic(Span(line, col, line, col + 1), f"{what}: a spec is text", "is this the right file?")



__all__ = ["PIPELINE", "CheckResult", "Waiting", "check", "check_file"]
