"""A checked probe: concrete file, symbols and offsets, typed values, filters, outputs and budgets.

This is what :func:`ingero.dsl.check` produces and :mod:`ingero.compiler` consumes. Everything here is
a frozen dataclass of plain values: no user text is ever emitted into C from it, only names the compiler
makes up (``v3``) and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from ingero.abi import Piece
from ingero.limits import DEFAULT_SYMBOLS

#: Fields every probe has, whatever the function.
BUILTINS = ("retval", "latency", "pid", "tid", "comm", "symbol", "stack", "pystack", "ts")
#: Bytes read from a ``char *`` argument or return value (including the terminating NUL).
STR_CAP = 64
COMM_LEN = 16


@dataclass(frozen=True)
class Value:
    """One value a probe reads, named as the spec names it.

    ``source``: arg, retval, latency, pid, tid, comm, symbol, stack, ts, deref (read through a pointer
    argument: ``deref`` says where, ``piece`` where the pointer is) or expr (arithmetic: ``expr``).
    ``kind``: int, uint, enum, pointer, code (a host function pointer, shown as the demangled symbol),
    string, comm, symbol, stack. ``piece`` (arguments only) says where it is at entry; ``size`` is the C
    size in bytes (the cap for strings)."""

    key: str
    source: str
    kind: str
    size: int
    signed: bool
    ctype: str
    piece: Piece | None = None
    enum: str | None = None
    at_return: bool = False
    deref: Deref | None = None
    expr: RArith | None = None

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "uint", "enum", "pointer", "code")

    @property
    def has_status(self) -> bool:
        """Read through a pointer (a string, ``*p``, ``p->m``): it may be NULL or fail, so it has a read
        status beside it (``> 0`` read; STR_NULL; a negative errno), and a miss is never shown as a value."""
        return self.kind == "string" or self.source == "deref"


@dataclass(frozen=True)
class Deref:
    """``size`` bytes at ``offset`` from the pointer argument ``pointer`` (a Value key), read at entry or
    at return (``at_return``: an out-parameter the function writes)."""

    pointer: str
    offset: int
    size: int
    at_return: bool


@dataclass(frozen=True)
class ValueRef:
    key: str


@dataclass(frozen=True)
class Const:
    value: int
    text: str  # as written: 1MiB, cudaMemcpyDeviceToHost


@dataclass(frozen=True)
class StrConst:
    value: bytes


@dataclass(frozen=True)
class RCompare:
    op: str
    left: ValueRef | Const | StrConst
    right: ValueRef | Const | StrConst


@dataclass(frozen=True)
class RSymbolIn:
    cookies: tuple[int, ...]
    negate: bool


@dataclass(frozen=True)
class RAnd:
    items: tuple[RExpr, ...]


@dataclass(frozen=True)
class ROr:
    items: tuple[RExpr, ...]


@dataclass(frozen=True)
class RNot:
    item: RExpr


RExpr = RCompare | RSymbolIn | RAnd | ROr | RNot


@dataclass(frozen=True)
class RArith:
    """Integer arithmetic over 64 bits (wrapping), signed when both sides are: ``+ - * / << >>``.
    Division by zero gives 0; a shift by 64 or more gives 0 (or -1 for ``>>`` of a negative value)."""

    op: str
    left: ValueRef | Const | RArith
    right: ValueRef | Const | RArith
    signed: bool

    def keys(self) -> list[str]:
        out = []
        for side in (self.left, self.right):
            if isinstance(side, ValueRef):
                out.append(side.key)
            elif isinstance(side, RArith):
                out += side.keys()
        return out


@dataclass(frozen=True)
class RAgg:
    func: str  # count, sum, min, max, avg, hist, lhist
    value: str | None  # a Value key
    params: tuple[int, ...] = ()  # lhist: min, max, step

    @property
    def label(self) -> str:
        if self.value is None:
            return self.func
        return f"{self.func}({', '.join([self.value, *map(str, self.params)])})"

    @property
    def lhist_buckets(self) -> int:
        """lhist: below min, then one per step up to max, then max and above."""
        lo, hi, step = self.params
        return (hi - lo + step - 1) // step + 2


@dataclass(frozen=True)
class Budgets:
    ttl_s: float | None = None
    events: int | None = None
    rate: int | None = None  # per second
    symbols: int = DEFAULT_SYMBOLS


@dataclass(frozen=True)
class LibraryRef:
    """The file a probe attaches to. ``installed`` False: not on this machine, checked against the
    catalogue only (``attach_path`` is None)."""

    name: str
    path: str | None
    attach_path: str | None
    soname: str | None
    build_id: str | None
    version: str | None
    installed: bool
    cuda_major: int | None
    family: str | None  # catalogue library family (cudart, cuda, cublas, ...)


@dataclass(frozen=True)
class ResolvedSymbol:
    """One function a probe attaches to. A name defined at several addresses (a ``static`` function of
    several translation units) is one symbol: ``file_offset`` is its preferred definition, ``also_at`` the
    others; every address is probed with the same cookie, so its calls count together under the name."""

    name: str
    file_offset: int
    typed_by: str  # catalogue, declared, untyped
    also_at: tuple[int, ...] = ()

    @property
    def offsets(self) -> tuple[int, ...]:
        """Every address of this function in the checked file."""
        return (self.file_offset, *self.also_at)

    @property
    def shown(self) -> str:
        """The name as output shows it: demangled for a C++ function (``c10::cuda::device_count()``)."""
        return self.name if not self.name.startswith("_Z") else _demangled(self.name)


@lru_cache(maxsize=1 << 16)
def _demangled(name: str) -> str:
    from ingero.symbols.table import demangle_all

    return demangle_all([name])[0]


@dataclass(frozen=True)
class ResolvedProbe:
    name: str
    index: int
    library: LibraryRef
    symbols: tuple[ResolvedSymbol, ...]
    values: tuple[Value, ...]
    filter: RExpr | None
    filter_at_return: bool
    record: tuple[str, ...]
    aggregates: tuple[RAgg, ...]
    by: tuple[str, ...]
    budgets: Budgets
    needs_return: bool
    pid: int | None  # the process the kernel filters on: the target's own pid, else the one checked with
    notes: tuple[str, ...] = ()
    target_pid: int | None = None  # the pid the target itself names (``pid N``), if any
    text: str = field(default="", compare=False)  # the probe's source text

    def value(self, key: str) -> Value:
        for v in self.values:
            if v.key == key:
                return v
        raise KeyError(key)

    @property
    def direction(self) -> str:
        return "entry+return" if self.needs_return else "entry"


@dataclass(frozen=True)
class ResolvedSpec:
    probes: tuple[ResolvedProbe, ...]
    source_name: str = "<spec>"
    text: str = field(default="", compare=False)


def _expr_text(e) -> str:
    if isinstance(e, RCompare):
        return f"{_expr_text(e.left)} {e.op} {_expr_text(e.right)}"
    if isinstance(e, ValueRef):
        return e.key
    if isinstance(e, Const):
        return e.text if e.text == str(e.value) else f"{e.text} ({e.value})"
    if isinstance(e, StrConst):
        return repr(e.value.decode(errors="replace"))
    if isinstance(e, RArith):
        return f"({_expr_text(e.left)} {e.op} {_expr_text(e.right)})"
    if isinstance(e, RSymbolIn):
        return f"symbol {'not ' if e.negate else ''}in cookies {list(e.cookies)}"
    if isinstance(e, RAnd):
        return "(" + " and ".join(_expr_text(i) for i in e.items) + ")"
    if isinstance(e, ROr):
        return "(" + " or ".join(_expr_text(i) for i in e.items) + ")"
    if isinstance(e, RNot):
        return f"not {_expr_text(e.item)}"
    return repr(e)


def describe(p: ResolvedProbe, full: bool = True) -> str:
    """A readable summary of a resolved probe (``ingero probe check`` and ``--emit resolved``)."""
    lib = p.library
    where = lib.path if lib.installed else "not installed here: checked against the signature catalogue"
    cat = f", CUDA {lib.cuda_major} signatures" if lib.cuda_major else ""
    if lib.installed and "/" not in lib.name and p.pid is None:
        # checked against this copy; `probe run -- CMD`, `trace` and `mcp --live` bind the copies the
        # traced processes map (docs/dsl.md)
        where = f"first on the search path: {where}"
    lines = [f"probe {p.name}: {lib.soname or lib.name} ({where}{cat})"]
    n = len(p.symbols)
    names = ", ".join(s.shown if s.shown == s.name else f"{s.shown} [{s.name}]" for s in p.symbols[:6]) + (
        f", ... ({n - 6} more)" if n > 6 else "")
    lines.append(f"  {n} symbol{'s' if n != 1 else ''}: {names}")
    lines.append(f"  attach: {p.direction}" + (f", pid {p.pid}" if p.pid else ", every process"))
    if p.filter is not None:
        lines.append(f"  where (at {'return' if p.filter_at_return else 'entry'}): {_expr_text(p.filter)}")
    if p.record:
        lines.append("  record: " + ", ".join(p.record))
    if p.aggregates:
        aggs = ", ".join(a.label for a in p.aggregates)
        lines.append(f"  aggregate: {aggs}" + (f" by {', '.join(p.by)}" if p.by else ""))
    b = p.budgets
    lim = [f"symbols {b.symbols}"]
    if b.ttl_s is not None:
        lim.append(f"ttl {b.ttl_s:g}s")
    if b.events is not None:
        lim.append(f"events {b.events}")
    if b.rate is not None:
        lim.append(f"rate {b.rate}/s")
    lines.append("  limits: " + ", ".join(lim))
    if full:
        for v in p.values:
            if v.source == "deref" and v.deref is not None:
                d = v.deref
                at = "return" if d.at_return else "entry"
                where = f"at {d.pointer}+{d.offset}, read at {at}"
                lines.append(f"  value {v.key}: {v.ctype} ({v.kind}, {v.size} bytes) {where}")
            elif v.source == "expr":
                lines.append(f"  value {v.key}: {v.ctype} (computed{', at return' if v.at_return else ''})")
            elif v.source == "arg":
                pc = v.piece
                loc = (
                    (f"register {pc.reg}" + (f" >> {pc.shift}" if pc.shift else ""))
                    if pc.where == "reg"
                    else (f"stack rsp+{8 + pc.offset}")
                )
                lines.append(f"  value {v.key}: {v.ctype} ({v.kind}, {v.size} bytes) in {loc}")
            else:
                lines.append(f"  value {v.key}: {v.ctype} ({v.kind})")
    for note in p.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
