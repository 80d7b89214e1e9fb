"""What the checker's passes share: the frozen context of one probe, and the report errors go to.

Each pass of :data:`ingero.dsl.check.PIPELINE` is a function ``(ProbeContext, Report) -> ProbeContext``:
it reads what the earlier passes found and returns a new context with its own findings filled in
(:func:`dataclasses.replace`); nothing is set on a context after it is made. Errors go to the
:class:`Report`; a probe's later passes are skipped once one of its passes reported an error, so that
one mistake does not cascade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ingero.abi import Place
from ingero.catalogue import CType
from ingero.dsl import ast
from ingero.dsl.diagnostics import Diagnostic
from ingero.dsl.lookup import Lookups
from ingero.dsl.resolved import Budgets, LibraryRef, RAgg, ResolvedSymbol, RExpr, Value
from ingero.dsl.source import Span
from ingero.errors import suggestion


class Report:
    """Where the passes put the errors they find (every error of every probe, in the order found)."""

    def __init__(self) -> None:
        self._errors: list[Diagnostic] = []

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self._errors.append(Diagnostic(span, message, hint))

    def unknown(self, span: Span, what: str, name: str, known: Sequence[str], plural: str = "") -> None:
        """``unknown WHAT 'name'``, with the closest known names as the hint, else all of them."""
        self.error(span, f"unknown {what} {name!r}",
                   suggestion(name, known) or f"{plural or what + 's'}: {', '.join(known)}")

    def add(self, d: Diagnostic) -> None:
        self._errors.append(d)

    def __len__(self) -> int:
        return len(self._errors)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        """Every error, sorted by where it is."""
        return tuple(sorted(self._errors, key=lambda d: (d.span.line, d.span.column)))


@dataclass(frozen=True)
class Sig:
    """The signature of one symbol as the checker uses it: named, typed parameters (None: untyped, read
    as ``arg0``..), the return type, where each parameter is at entry, and whether a ``func`` parameter
    is a host function pointer (the CUDA runtime's kernels)."""

    params: tuple[tuple[str, CType], ...] | None
    ret: CType | None
    places: tuple[Place, ...] = ()
    func_is_code: bool = False
    pointees: tuple[tuple[str, str, CType], ...] = ()  # declared ``T *name``: (name, T's spelling, T)

    def names(self) -> list[str]:
        return [n for n, _ in self.params or ()]


@dataclass(frozen=True)
class ProbeContext:
    """One probe as the passes have understood it so far. Each field is filled by the pass named."""

    probe: ast.Probe
    index: int
    pid: int | None
    lookups: Lookups
    notes: tuple[str, ...] = ()
    #: a library found nowhere may be waited for (``probe run -- CMD`` / ``--pid``): the target pass then
    #: sets ``waits_for`` (what was searched) instead of reporting an error, and the probe is checked later
    #: against the copy the traced processes map
    may_wait: bool = False
    waits_for: str | None = None
    # clauses
    where: ast.Where | None = None
    record_clause: ast.Record | None = None
    aggregate_clause: ast.Aggregate | None = None
    budgets: Budgets = field(default_factory=Budgets)
    # target
    library: LibraryRef | None = None
    symbol_names: tuple[str, ...] = ()
    symbol_offsets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # every address of each name
    # signatures
    symbols: tuple[ResolvedSymbol, ...] = ()
    sigs: tuple[Sig, ...] = ()
    # fields (record, aggregate, filter): every value read, in the order first named
    values: Mapping[str, Value] = field(default_factory=dict)
    failed: frozenset[str] = frozenset()  # fields already reported as errors
    record: tuple[str, ...] = ()
    aggregates: tuple[RAgg, ...] = ()
    by: tuple[str, ...] = ()
    # filter
    filter: RExpr | None = None

    @property
    def lib(self) -> LibraryRef:
        if self.library is None:
            raise RuntimeError("the target pass has not run")
        return self.library

    def note(self, *notes: str) -> tuple[str, ...]:
        return self.notes + notes


def a_kind(kind: str) -> str:
    """A value kind as a noun with its article, for messages."""
    return {
        "int": "an integer", "uint": "an unsigned integer", "enum": "an enum", "pointer": "a pointer",
        "code": "a function pointer", "string": "a string", "comm": "a process name", "symbol": "a symbol name",
        "stack": "a stack",
        "pystack": "a Python stack",
    }.get(kind, kind)  # fmt: skip
