"""AST -> resolved spec: every name looked up, every type checked, every error located.

The passes run in this order for each probe (each collects all its errors; later passes of a probe
are skipped once an earlier one failed, so one mistake does not cascade):

1. ``_clauses``   -- at most one where/record/aggregate/limit clause, budgets parsed (the symbol budget
                     is needed by 2);
2. ``_target``    -- library (installed, or a catalogue family that is not installed here), symbols
                     (globs, aliases such as cuMemAlloc -> cuMemAlloc_v2, per-thread variants), budget;
3. ``_signatures``-- the C signature of every symbol: declared in the spec, from the catalogue, or none;
4. ``_fields``    -- every field of where/record/aggregate resolved to a Value placed by the ABI;
5. ``_filter``    -- the where expression type-checked (units, enums, pointers, strings).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ingero.catalogue import CType, Field, Signature, load_catalogue
from ingero.compiler.abi import Piece, piece, place_arguments
from ingero.dsl import ast
from ingero.dsl.diagnostics import Diagnostic, SpecError
from ingero.dsl.parser import parse
from ingero.dsl.resolved import (
    BUILTINS,
    COMM_LEN,
    STR_CAP,
    Budgets,
    Const,
    LibraryRef,
    RAgg,
    RAnd,
    RCompare,
    ResolvedProbe,
    ResolvedSpec,
    ResolvedSymbol,
    RExpr,
    RNot,
    ROr,
    RSymbolIn,
    StrConst,
    Value,
    ValueRef,
)
from ingero.dsl.source import Source, Span
from ingero.errors import IngeroError, did_you_mean, suggestion

log = logging.getLogger(__name__)

SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "min": 60_000_000_000}
AGG_FUNCS = ("count", "sum", "min", "max", "hist")
BUDGET_NAMES = ("ttl", "events", "rate", "symbols")
MAX_SYMBOLS = 10_000
DEFAULT_SYMBOLS = 1000
MAX_BY = 6
#: Library stems whose signatures the catalogue holds, and the family name the catalogue uses.
FAMILIES = {
    "libcudart": "cudart",
    "libcuda": "cuda",
    "libcublas": "cublas",
    "libcublasLt": "cublasLt",
    "libnccl": "nccl",
    "libcudnn": "cudnn",
}
DECLARED_TYPES = {
    # name: (kind, size, signed)
    "i8": ("int", 1), "i16": ("int", 2), "i32": ("int", 4), "i64": ("int", 8),
    "u8": ("uint", 1), "u16": ("uint", 2), "u32": ("uint", 4), "u64": ("uint", 8),
    "bool": ("bool", 1), "ptr": ("pointer", 8), "str": ("char_pointer", 8),
    "f32": ("float", 4), "f64": ("double", 8),
}  # fmt: skip
_GLOB = re.compile(r"[*?\[]")


class _Failed(Exception):
    """A pass of one probe reported errors; the probe's later passes are skipped."""


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` returns: the resolved spec, or the errors (never both)."""

    source: Source
    spec: ResolvedSpec | None
    errors: tuple[Diagnostic, ...]
    tree: ast.Spec | None = None

    @property
    def ok(self) -> bool:
        return self.spec is not None

    def resolved(self) -> ResolvedSpec:
        """The resolved spec; raises :class:`SpecError` with every error otherwise."""
        if self.spec is None:
            raise SpecError(self.errors, self.source)
        return self.spec


def check(text: str, name: str = "<spec>", *, pid: int | None = None) -> CheckResult:
    """Parse and check a spec against this machine's libraries and the signature catalogue.

    ``pid``: resolve libraries from what that process mapped (a ``pid N`` in a target wins). Never raises
    for a bad spec: errors come back in ``CheckResult.errors`` (each with line, column, message, hint).
    """
    source = Source(text, name)
    try:
        tree = parse(text, name)
    except SpecError as e:
        return CheckResult(source, None, e.diagnostics)
    errors: list[Diagnostic] = []
    probes: list[ResolvedProbe] = []
    seen: dict[str, ast.Probe] = {}
    lines = text.splitlines()
    for i, p in enumerate(tree.probes):
        if p.name in seen:
            errors.append(
                Diagnostic(
                    p.name_span,
                    f"a second probe named {p.name!r}",
                    f"the first is on line {seen[p.name].span.line}; give each probe its own name",
                )
            )
            continue
        seen[p.name] = p
        ctx = _ProbeCheck(p, i, pid, errors)
        try:
            probe = ctx.run()
        except _Failed:
            continue
        ptext = "\n".join(lines[p.span.line - 1 : p.span.end_line])
        probes.append(_with_text(probe, ptext))
    if errors:
        return CheckResult(source, None, tuple(sorted(errors, key=lambda d: (d.span.line, d.span.column))), tree)
    return CheckResult(source, ResolvedSpec(tuple(probes), name, text), (), tree)


def _with_text(p: ResolvedProbe, text: str) -> ResolvedProbe:
    from dataclasses import replace

    return replace(p, text=text)


def check_file(path: str, *, pid: int | None = None) -> CheckResult:
    with open(path, encoding="utf-8") as f:
        return check(f.read(), path, pid=pid)


# ---------------------------------------------------------------------------------------------------


@dataclass
class _Sig:
    """The signature of one symbol as the checker uses it: typed parameters (or None: untyped)."""

    params: tuple[tuple[str, CType], ...] | None
    ret: CType | None
    places: list = field(default_factory=list)


def _scalar(kind: str, size: int, name: str) -> CType:
    return CType(name=name, kind=kind, size=size, align=size)


#: Library lookups of the last few seconds, by (name, pid): a search of every library directory costs
#: milliseconds, and an agent or a test checks many specs naming the same few libraries in a row.
_LIB_CACHE: dict[tuple[str, int | None], tuple[float, object]] = {}
LIB_CACHE_SECONDS = 2.0


def _resolve_library(name: str, pid: int | None):
    import time

    from ingero.symbols import resolve_library

    now = time.monotonic()
    hit = _LIB_CACHE.get((name, pid))
    if hit is not None and now - hit[0] < LIB_CACHE_SECONDS:
        if isinstance(hit[1], IngeroError):
            raise hit[1]
        return hit[1]
    try:
        lib = resolve_library(name, pid=pid)
    except IngeroError as e:
        _LIB_CACHE[(name, pid)] = (now, e)
        raise
    if len(_LIB_CACHE) > 256:
        _LIB_CACHE.clear()
    _LIB_CACHE[(name, pid)] = (now, lib)
    return lib


#: Placed catalogue signatures, by (symbol, CUDA major, legacy): the catalogue never changes in a process.
_SIG_CACHE: dict[tuple[str, int, bool], _Sig] = {}


class _ProbeCheck:
    def __init__(self, p: ast.Probe, index: int, pid: int | None, errors: list[Diagnostic]) -> None:
        self.p = p
        self.index = index
        self.pid = p.target.pid if p.target.pid is not None else pid
        self.errors = errors
        self.mark = len(errors)
        self.cat = load_catalogue()
        self.notes: list[str] = []
        self.values: dict[str, Value] = {}
        self.failed: set[str] = set()

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.errors.append(Diagnostic(span, message, hint))

    def gate(self) -> None:
        if len(self.errors) > self.mark:
            raise _Failed

    def run(self) -> ResolvedProbe:
        self._clauses()
        self.gate()
        self._target()
        self.gate()
        self._signatures()
        self.gate()
        self._fields()
        self.gate()
        flt = self._filter()
        self.gate()
        needs_return = any(v.at_return for v in self.values.values())
        filter_at_return = flt is not None and self._uses_return(flt)
        aggs = self.aggs
        if not self.record and not aggs:
            aggs = (RAgg("count", None),)
            self.values["symbol"] = Value("symbol", "symbol", "symbol", 4, False, "symbol")
            self.by = ("symbol",)
            self.notes.append("no record or aggregate clause: counting calls per symbol")
        return ResolvedProbe(
            name=self.p.name,
            index=self.index,
            library=self.lib,
            symbols=tuple(self.symbols),
            values=tuple(self.values.values()),
            filter=flt,
            filter_at_return=filter_at_return,
            record=self.record,
            aggregates=aggs,
            by=self.by,
            budgets=self.budgets,
            needs_return=needs_return,
            pid=self.pid,
            notes=tuple(self.notes),
        )

    # -- 1. clauses and budgets ------------------------------------------------------------------
    def _clauses(self) -> None:
        seen: dict[type, ast.Clause] = {}
        self.where: ast.Where | None = None
        self.rec: ast.Record | None = None
        self.agg: ast.Aggregate | None = None
        for c in self.p.clauses:
            kind = type(c)
            word = kind.__name__.lower()
            if kind in seen:
                join = {
                    "where": "join the conditions with 'and'",
                    "limit": "list every budget in one limit: limit ttl 60s, events 1000",
                }.get(word, f"list every field in one {word} clause")
                self.error(
                    c.span,
                    f"a second {word} clause in probe {self.p.name!r}",
                    f"{join} (the first is on line {seen[kind].span.line})",
                )
                continue
            seen[kind] = c
            if isinstance(c, ast.Where):
                self.where = c
            elif isinstance(c, ast.Record):
                self.rec = c
            elif isinstance(c, ast.Aggregate):
                self.agg = c
        self.budgets = self._budgets(seen.get(ast.Limit))

    def _budgets(self, limit: ast.Limit | None) -> Budgets:
        vals: dict[str, object] = {}
        given: set[str] = set()
        for b in limit.budgets if limit else ():
            if b.name not in BUDGET_NAMES:
                self.error(
                    b.name_span,
                    f"unknown budget {b.name!r}",
                    suggestion(b.name, BUDGET_NAMES) or f"budgets: {', '.join(BUDGET_NAMES)}",
                )
                continue
            if b.name in given:
                self.error(b.span, f"budget {b.name!r} given twice", "keep one of them")
                continue
            given.add(b.name)
            num = self._number(b.value)
            if num is None:
                continue
            value, unit = num
            if b.name == "ttl":
                if unit not in TIME_UNITS:
                    self.error(
                        b.value.span,
                        f"ttl needs a time unit, not {b.value.text!r}",
                        "write it like ttl 120s (units: " + ", ".join(TIME_UNITS) + ")",
                    )
                    continue
                if value <= 0:
                    self.error(b.value.span, "ttl must be positive")
                    continue
                vals["ttl_s"] = value / 1e9
            else:
                if unit:
                    self.error(
                        b.value.span, f"{b.name} is a count: write it without a unit", f"{b.name} {b.value.digits}"
                    )
                    continue
                if value <= 0:
                    self.error(b.value.span, f"{b.name} must be at least 1")
                    continue
                if b.name == "rate":
                    if b.per not in (None, "s"):
                        self.error(
                            b.per_span or b.span, f"rate is per second, not per {b.per!r}", "write it like rate 1000/s"
                        )
                        continue
                    vals["rate"] = value
                elif b.name == "events":
                    vals["events"] = value
                else:
                    if value > MAX_SYMBOLS:
                        self.error(b.value.span, f"symbols {value} is above the hard limit of {MAX_SYMBOLS}")
                        continue
                    vals["symbols"] = value
            if b.per is not None and b.name != "rate":
                self.error(b.per_span or b.span, "only rate takes a '/s'")
        return Budgets(**vals)  # type: ignore[arg-type]

    def _number(self, n: ast.Number) -> tuple[int, str] | None:
        """(value in base units, unit) of a literal; reports unknown units and fractions."""
        unit = n.unit
        if n.digits.lower().startswith("0x"):
            base = int(n.digits, 16)
            if unit:
                self.error(n.span, f"a hex number takes no unit: {n.text!r}")
                return None
            return (-base if n.negative else base), ""
        scale = 1
        if unit:
            if unit in SIZE_UNITS:
                scale = SIZE_UNITS[unit]
            elif unit in TIME_UNITS:
                scale = TIME_UNITS[unit]
            else:
                units = [*SIZE_UNITS, *TIME_UNITS]
                self.error(
                    n.span,
                    f"unknown unit {unit!r} in {n.text!r}",
                    (suggestion(unit, units) or "")
                    + (" " if suggestion(unit, units) else "")
                    + f"(units: {', '.join(units)})",
                )
                return None
        if "." in n.digits:
            whole = float(n.digits) * scale
            if whole != int(whole):
                what = "bytes" if unit in SIZE_UNITS else "ns" if unit else ""
                self.error(
                    n.span,
                    f"{n.text!r} is not a whole number" + (f" of {what}" if what else ""),
                    "fields hold whole numbers: 1536, or 1.5KiB",
                )
                return None
            value = int(whole)
        else:
            value = int(n.digits) * scale
        if value >= 1 << 64:
            self.error(n.span, f"{n.text!r} does not fit in 64 bits", "the largest value is 18446744073709551615")
            return None
        return (-value if n.negative else value), unit

    # -- 2. target -------------------------------------------------------------------------------
    def _target(self) -> None:
        t = self.p.target
        from ingero.symbols import read_symbols
        from ingero.symbols.discovery import stem_of

        self.symbols: list[ResolvedSymbol] = []
        lib = None
        family = None
        try:
            lib = _resolve_library(t.library, self.pid)
        except IngeroError as e:
            stem = stem_of(t.library if "/" not in t.library else t.library.rsplit("/", 1)[1])
            stem = stem if stem.startswith("lib") else "lib" + stem
            family = FAMILIES.get(stem) or ("cudnn" if stem.startswith("libcudnn") else None)
            if family is None or self.pid is not None or "/" in t.library:
                self.error(
                    t.library_span,
                    e.message,
                    e.hint or "give an existing path, a soname such as libcudart.so.12 or a name such as libcudart",
                )
                return
        if lib is None:
            self.lib = LibraryRef(t.library, None, None, None, None, None, False, self._major(None), family)
            self.notes.append(
                f"{t.library} is not installed here: checked against the signature catalogue "
                f"only; running this probe needs the library"
            )
            names = self.cat.names(library=family, cuda_major=self.lib.cuda_major)
            self._pick_symbols(names, {n: 0 for n in names}, t)
            return
        try:
            table = read_symbols(lib)
        except IngeroError as e:
            self.error(t.library_span, e.message, e.hint)
            return
        stem = lib.stem
        family = FAMILIES.get(stem) or ("cudnn" if stem.startswith("libcudnn") else None)
        self.lib = LibraryRef(
            t.library,
            lib.path,
            str(lib.attach_path),
            lib.soname,
            lib.build_id,
            lib.version,
            True,
            self._major(lib),
            family,
        )
        offsets: dict[str, int] = {}
        for s in table:
            if s.name not in offsets:
                offsets[s.name] = table.get(s.name).file_offset
        self._pick_symbols(list(offsets), offsets, t, table)

    def _major(self, lib) -> int | None:
        majors = self.cat.cuda_majors
        if lib is not None:
            v = lib.version or ""
            m = re.match(r"(\d+)", v)
            if m and int(m.group(1)) in majors:
                return int(m.group(1))
            m = re.search(r"\.so\.(\d+)", lib.soname or "")
            if m and int(m.group(1)) in majors:
                return int(m.group(1))
            return None
        return majors[0] if majors else None

    def _pick_symbols(self, names: Sequence[str], offsets: dict[str, int], t: ast.Target, table=None) -> None:
        pattern = t.symbol
        where = self.lib.soname or self.lib.name
        chosen: list[str] = []
        if _GLOB.search(pattern):
            rx = re.compile(fnmatch.translate(pattern))
            chosen = [n for n in names if rx.match(n)]
            if table is not None:  # demangled C++ names match too
                extra = [s.name for s in table.match(pattern) if s.name not in chosen and s.name in offsets]
                chosen += extra
            if not chosen:
                stripped = _GLOB.sub("", pattern).strip("]!")
                hint = suggestion(stripped, names) if stripped else None
                self.error(
                    t.symbol_span,
                    f"the glob {pattern!r} matches no function of {where}",
                    (hint + " " if hint else "") + f"(list them with `ingero symbols {where}`)",
                )
                return
        else:
            name = pattern
            called = [n for n in self.cat.called_names(name, self.lib.cuda_major) if n in offsets]
            if called:
                chosen = called
                if called[0] != name:
                    self.notes.append(
                        f"{name} is called as {called[0]}: probing {called[0]}"
                        + (
                            " (the exported " + name + " is the legacy entry point for old binaries)"
                            if name in offsets
                            else ""
                        )
                    )
                if len(called) > 1:
                    self.notes.append(
                        f"{called[0]} also has per-thread-stream variants: probing " + ", ".join(called[1:]) + " too"
                    )
            elif name in offsets:
                chosen = [name]
            elif table is not None and "@" in name or (table is not None and " " in name):
                try:
                    s = table.get(name)
                    chosen = [s.name]
                except IngeroError as e:
                    self.error(t.symbol_span, e.message, e.hint)
                    return
            else:
                hint = suggestion(name, names) or f"list them with `ingero symbols {where}`"
                self.error(t.symbol_span, f"{where} has no function {name!r}", hint)
                return
        # one uprobe per address: aliases at the same offset would fire twice
        by_off: dict[int, str] = {}
        for n in chosen:
            off = offsets[n]
            if off and off in by_off:
                continue
            by_off[off or -len(by_off) - 1] = n
        chosen = list(by_off.values())
        if len(chosen) > self.budgets.symbols:
            self.error(
                t.symbol_span,
                f"{pattern!r} matches {len(chosen)} functions of {where}, more than the "
                f"budget of {self.budgets.symbols}",
                f"narrow the glob, or raise the budget: limit symbols {min(len(chosen), MAX_SYMBOLS)}",
            )
            return
        self.symbol_names = chosen
        self.symbol_offsets = offsets

    # -- 3. signatures ---------------------------------------------------------------------------
    def _signatures(self) -> None:
        t = self.p.target
        self.sigs: list[_Sig] = []
        declared: _Sig | None = None
        if t.params is not None or t.returns is not None:
            declared = self._declared(t)
            self.gate()
        untyped = []
        for n in self.symbol_names:
            if declared is not None:
                sig, how = declared, "declared"
            else:
                cs = self.cat.lookup_symbol(n, self.lib.cuda_major) if self.lib.cuda_major or self.lib.family else None
                if cs is None and self.lib.family is None:
                    cs = self.cat.lookup_symbol(n)
                if cs is not None and not cs.variadic:
                    sig, how = self._from_catalogue(cs), "catalogue"
                else:
                    sig, how = _Sig(None, None), "untyped"
                    untyped.append(n)
            self.sigs.append(sig)
            self.symbols.append(ResolvedSymbol(n, self.symbol_offsets.get(n, 0), how))
        self.untyped = untyped

    def _from_catalogue(self, cs: Signature) -> _Sig:
        key = (cs.called_as, cs.cuda_major, cs.legacy)
        sig = _SIG_CACHE.get(key)
        if sig is None:
            sig = _SIG_CACHE[key] = self._place(cs)
        return sig

    @staticmethod
    def _place(cs: Signature) -> _Sig:
        params = tuple((p.name, p.ctype) for p in cs.params)
        sig = _Sig(params, cs.return_ctype)
        sig.places = place_arguments([c for _, c in params], cs.return_ctype)
        sig.func_is_code = cs.library == "cudart"  # type: ignore[attr-defined]
        return sig

    def _declared_type(self, tr: ast.TypeRef) -> CType | None:
        if tr.name is None:
            fields = []
            off = 0
            align = 1
            names = set()
            for m in tr.members:
                if m.type not in DECLARED_TYPES or DECLARED_TYPES[m.type][0] in ("char_pointer",):
                    ok = [k for k in DECLARED_TYPES if k != "str"]
                    self.error(
                        m.type_span,
                        f"unknown member type {m.type!r}",
                        suggestion(m.type, ok) or f"member types: {', '.join(ok)}",
                    )
                    continue
                if m.name in names:
                    self.error(m.span, f"member {m.name!r} declared twice", "give each member its own name")
                kind, size = DECLARED_TYPES[m.type]
                off = (off + size - 1) // size * size
                fields.append(Field(m.name, _scalar(kind, size, m.type), off))
                names.add(m.name)
                off += size
                align = max(align, size)
            size = (off + align - 1) // align * align
            return CType(name="struct {...}", kind="struct", size=size, align=align, fields=tuple(fields))
        if tr.name in DECLARED_TYPES:
            kind, size = DECLARED_TYPES[tr.name]
            return _scalar(kind, size, tr.name)
        try:
            return self.cat.type_info(tr.name)
        except IngeroError:
            self.error(
                tr.span,
                f"unknown type {tr.name!r}",
                suggestion(tr.name, DECLARED_TYPES)
                or f"types: {', '.join(DECLARED_TYPES)}, {{u32 x, u32 y}} for a struct, or a CUDA type name",
            )
            return None

    def _declared(self, t: ast.Target) -> _Sig:
        params = []
        names: set[str] = set()
        for d in t.params or ():
            ct = self._declared_type(d.type)
            if d.name in names:
                self.error(d.name_span, f"argument {d.name!r} declared twice", "give each argument its own name")
            if d.name in BUILTINS or re.fullmatch(r"arg\d+", d.name):
                self.error(
                    d.name_span,
                    f"{d.name!r} is a built-in field name",
                    f"call the argument something else, such as {d.name}_",
                )
            names.add(d.name)
            if ct is not None:
                params.append((d.name, ct))
        ret = self._declared_type(t.returns) if t.returns is not None else None
        if t.params is None:
            self.notes.append("return type declared without arguments: arguments are untyped")
            sig = _Sig(None, ret)
            return sig
        sig = _Sig(tuple(params), ret)
        sig.places = place_arguments([c for _, c in params], ret)
        return sig

    # -- 4. fields -------------------------------------------------------------------------------
    def _fields(self) -> None:
        self.record: tuple[str, ...] = ()
        self.aggs: tuple[RAgg, ...] = ()
        self.by: tuple[str, ...] = ()
        if self.rec is not None:
            keys = []
            for f in self.rec.fields:
                v = self._field(f)
                if v is None:
                    continue
                if v.key in keys:
                    self.error(f.span, f"{f.text!r} is recorded twice", "list each field once")
                    continue
                keys.append(v.key)
            self.record = tuple(keys)
        if self.agg is not None:
            aggs = []
            for a in self.agg.aggs:
                if a.func not in AGG_FUNCS:
                    self.error(
                        a.func_span,
                        f"unknown aggregation {a.func!r}",
                        suggestion(a.func, AGG_FUNCS) or f"aggregations: {', '.join(AGG_FUNCS)}",
                    )
                    continue
                if a.func == "count":
                    if a.arg is not None:
                        self.error(a.arg.span, "count takes no field", "count counts calls: aggregate count")
                        continue
                    aggs.append(RAgg("count", None))
                    continue
                if a.arg is None:
                    self.error(a.span, f"{a.func} needs a field", f"for example {a.func}(latency)")
                    continue
                v = self._field(a.arg)
                if v is None:
                    continue
                if v.kind not in ("int", "uint") or v.source in ("pid", "tid"):
                    self.error(
                        a.arg.span,
                        f"{a.func}() needs a number such as a size or latency; {a.arg.text} is {_a(v.kind)}",
                        "aggregate by it instead: ... by " + a.arg.text,
                    )
                    continue
                if RAgg(a.func, v.key) in aggs:
                    self.error(a.span, f"{a.func}({a.arg.text}) is listed twice", "list it once")
                    continue
                aggs.append(RAgg(a.func, v.key))
            by = []
            for f in self.agg.by:
                v = self._field(f)
                if v is None:
                    continue
                if v.source == "latency" or v.source == "ts":
                    self.error(
                        f.span,
                        f"aggregating by {f.text} would make one group per call",
                        f"use hist({f.text}) to see its distribution",
                    )
                    continue
                if v.key in by:
                    self.error(f.span, f"{f.text!r} is listed twice after by", "list each field once")
                    continue
                by.append(v.key)
            if len(by) > MAX_BY:
                self.error(self.agg.by[MAX_BY].span, f"at most {MAX_BY} fields after by")
            self.aggs, self.by = tuple(aggs), tuple(by)

    def _field(self, f: ast.FieldRef, quiet: bool = False) -> Value | None:
        """Resolve a field reference to a Value (and remember it), or report why not."""
        key = f.text
        if key in self.values:
            return self.values[key]
        if key in self.failed:
            return None
        if f.name in BUILTINS and f.member is None:
            clash = next(
                (
                    s.name
                    for s, g in zip(self.symbols, self.sigs, strict=True)
                    if g.params and f.name in [n for n, _ in g.params]
                ),
                None,
            )
            if clash:
                i = [
                    n
                    for n, _ in next(g for s, g in zip(self.symbols, self.sigs, strict=True) if s.name == clash).params
                ].index(f.name)
                self.notes.append(
                    f"{f.name!r} is both an argument of {clash} and a built-in field: it means the "
                    f"built-in here; write arg{i} for the argument"
                )
        v = self._builtin(f) if f.name in BUILTINS else self._argument(f, quiet)
        if v is not None:
            self.values[v.key] = v
        elif not quiet:
            self.failed.add(key)
        return v

    def _builtin(self, f: ast.FieldRef) -> Value | None:
        if f.member is not None:
            self.error(f.span, f"{f.name} has no members")
            return None
        n = f.name
        if n == "retval":
            return self._retval(f)
        if n == "latency":
            return Value("latency", "latency", "uint", 8, False, "u64 (ns)", at_return=True)
        if n in ("pid", "tid"):
            return Value(n, n, "uint", 4, False, "u32")
        if n == "ts":
            return Value("ts", "ts", "uint", 8, False, "u64 (ns, CLOCK_MONOTONIC)")
        if n == "comm":
            return Value("comm", "comm", "comm", COMM_LEN, False, f"char[{COMM_LEN}]")
        if n == "symbol":
            return Value("symbol", "symbol", "symbol", 4, False, "symbol")
        return Value("stack", "stack", "stack", 8, True, "user stack")

    def _retval(self, f: ast.FieldRef) -> Value | None:
        rets = {(s.ret.name, s.ret.kind, s.ret.size) if s.ret is not None else None for s in self.sigs}
        if len(rets) > 1:
            which = ", ".join(sorted({r[0] for r in rets if r})) or "unknown"
            self.error(
                f.span,
                f"the probed functions return different types ({which}): retval has no one type",
                "probe them in separate probes",
            )
            return None
        ret = self.sigs[0].ret if self.sigs else None
        if ret is None:
            return Value("retval", "retval", "int", 8, True, "s64 (rax; no declared type)", at_return=True)
        kind = ret.kind
        if kind == "void":
            self.error(f.span, f"{self.symbols[0].name} returns void: there is no retval")
            return None
        if kind in ("float", "double", "long_double"):
            self.error(
                f.span,
                f"{self.symbols[0].name} returns {ret.name}, in a floating-point register that a uprobe cannot read",
            )
            return None
        if kind in ("struct", "union", "array"):
            self.error(
                f.span, f"{self.symbols[0].name} returns a {kind} by value; only scalar return values can be read"
            )
            return None
        return self._value_of("retval", "retval", ret, None, at_return=True)

    def _value_of(
        self, key: str, source: str, ct: CType, pc: Piece | None, *, at_return: bool = False, code: bool = False
    ) -> Value:
        kind = {"bool": "uint", "char_pointer": "string"}.get(ct.kind, ct.kind)
        if kind == "pointer" and code:
            kind = "code"
        enum = None
        if ct.kind == "enum":
            try:
                enum = self.cat.enum_name(ct.enum or ct.name)
            except IngeroError:
                enum = None
        size = ct.size or 8
        if kind == "string":
            size = STR_CAP
        return Value(key, source, kind, size, ct.kind == "int" or (ct.kind == "enum"), ct.name, pc, enum, at_return)

    def _argument(self, f: ast.FieldRef, quiet: bool = False) -> Value | None:
        """An argument by name or argN, placed identically in every probed symbol."""
        m = re.fullmatch(r"arg(\d+)", f.name)
        found: list[tuple[str, CType, Piece, bool]] = []
        missing: list[str] = []
        for sym, sig in zip(self.symbols, self.sigs, strict=True):
            if sig.params is None:
                if m is None:
                    missing.append(sym.name)
                    continue
                i = int(m.group(1))
                ct = _scalar("uint", 8, "u64")
                pc = (
                    Piece("reg", reg=("di", "si", "dx", "cx", "r8", "r9")[i])
                    if i < 6
                    else Piece("stack", offset=(i - 6) * 8)
                )
                found.append((f"arg{i}", ct, pc, False))
                continue
            if m is not None:
                i = int(m.group(1))
                if i >= len(sig.params):
                    missing.append(sym.name)
                    continue
            else:
                names = [n for n, _ in sig.params]
                if f.name not in names:
                    missing.append(sym.name)
                    continue
                i = names.index(f.name)
            pname, ct = sig.params[i]
            place = sig.places[i]
            if f.member is not None:
                if ct.kind not in ("struct", "union"):
                    hint = (
                        "members of a struct passed by pointer cannot be read yet"
                        if self._points_to_struct(ct)
                        else "only struct arguments passed by value have members"
                    )
                    self.error(f.span, f"{pname} is {ct.name}, not a struct: it has no member {f.member!r}", hint)
                    return None
                fld = next((x for x in ct.fields if x.name == f.member), None)
                if fld is None:
                    self.error(
                        f.span,
                        f"{pname} ({ct.name}) has no member {f.member!r}",
                        suggestion(f.member, [x.name for x in ct.fields])
                        or f"its members: {', '.join(x.name for x in ct.fields)}",
                    )
                    return None
                leaf, off = fld.ctype, fld.offset
                if leaf.kind in ("struct", "union", "array"):
                    self.error(f.span, f"{pname}.{f.member} is a {leaf.kind}; only scalar members can be read")
                    return None
            else:
                if ct.kind in ("struct", "union"):
                    mem = ", ".join(f"{pname}.{x.name}" for x in ct.fields[:3]) or "none"
                    self.error(
                        f.span,
                        f"{pname} is a struct ({ct.name}) passed by value: name one of its members",
                        f"for example {mem}",
                    )
                    return None
                leaf, off = ct, 0
            if leaf.kind in ("float", "double", "long_double"):
                self.error(f.span, f"{f.text} is a {leaf.name}: floating-point values cannot be read yet")
                return None
            if (
                leaf.kind not in ("int", "uint", "bool", "enum", "pointer", "char_pointer")
                or not leaf.size
                or leaf.size > 8
            ):
                self.error(f.span, f"{f.text} has type {leaf.name}, which cannot be read")
                return None
            pc = piece(place, off, leaf.size)
            if pc.where == "xmm":
                self.error(f.span, f"{f.text} is passed in a floating-point register, which a uprobe cannot read")
                return None
            code = pname == "func" and getattr(sig, "func_is_code", False) and leaf.kind == "pointer"
            found.append((pname if m is None else f"arg{i}", leaf, pc, code))
        if missing:
            if quiet:
                return None
            if len(missing) == len(self.symbols):
                self._unknown_field(f, missing)
            else:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                self.error(
                    f.span,
                    f"{f.text!r} is not an argument of {missing[0]}{more} (the glob matches "
                    f"{len(self.symbols)} functions)",
                    "narrow the glob so that every function has it",
                )
            return None
        first = found[0]
        for other, sym in zip(found[1:], self.symbols[1:], strict=False):
            if other[2] != first[2] or other[1].kind != first[1].kind or other[1].size != first[1].size:
                self.error(
                    f.span,
                    f"{f.text!r} is not in the same place in {self.symbols[0].name} and {sym.name}",
                    "probe them in separate probes",
                )
                return None
        key = f.text
        return self._value_of(key, "arg", first[1], first[2], code=first[3])

    def _points_to_struct(self, ct: CType) -> bool:
        if ct.kind != "pointer" or not ct.pointee:
            return False
        try:
            target = self.cat.type_info(ct.pointee)
        except IngeroError:
            return False
        return target.kind in ("struct", "union") and not target.opaque and bool(target.fields)

    def _unknown_field(self, f: ast.FieldRef, missing: list[str]) -> None:
        sig = self.sigs[0]
        sym = self.symbols[0].name
        if sig.params is None:
            self.error(
                f.span,
                f"{sym} has no known signature, so {f.text!r} means nothing",
                f"use arg0..arg5, or declare its arguments: {sym}(u64 n, ptr buf)",
            )
            return
        m = re.fullmatch(r"arg(\d+)", f.name)
        if m:
            self.error(
                f.span,
                f"{sym} has only {len(sig.params)} argument{'s' if len(sig.params) != 1 else ''}",
                f"arg0..arg{len(sig.params) - 1}" if sig.params else "it takes no arguments",
            )
            return
        names = [n for n, _ in sig.params]
        hint = suggestion(f.name, [*names, *BUILTINS])
        self.error(
            f.span,
            f"{sym} has no argument {f.name!r}",
            hint or f"its arguments: {', '.join(names) or '(none)'}; built-ins: {', '.join(BUILTINS)}",
        )

    # -- 5. where --------------------------------------------------------------------------------
    def _filter(self) -> RExpr | None:
        if self.where is None:
            return None
        return self._expr(self.where.expr)

    def _uses_return(self, e: RExpr) -> bool:
        if isinstance(e, RCompare):
            return any(isinstance(o, ValueRef) and self.values[o.key].at_return for o in (e.left, e.right))
        if isinstance(e, (RAnd, ROr)):
            return any(self._uses_return(i) for i in e.items)
        if isinstance(e, RNot):
            return self._uses_return(e.item)
        return False

    def _expr(self, e: ast.Expr) -> RExpr | None:
        if isinstance(e, ast.And):
            items = [self._expr(i) for i in e.items]
            return None if any(i is None for i in items) else RAnd(tuple(items))  # type: ignore[arg-type]
        if isinstance(e, ast.Or):
            items = [self._expr(i) for i in e.items]
            return None if any(i is None for i in items) else ROr(tuple(items))  # type: ignore[arg-type]
        if isinstance(e, ast.Not):
            inner = self._expr(e.item)
            return None if inner is None else RNot(inner)
        return self._compare(e)

    def _operand_value(self, o, other: Value | None):
        """A field operand: a Value, else an enum value or constant name (a Const), else an error."""
        if not isinstance(o, ast.FieldRef):
            return o
        if o.name in BUILTINS or o.member is not None or re.fullmatch(r"arg\d+", o.name):
            return self._field(o)
        v = self._field(o, quiet=True)
        if v is not None:
            return v
        if o.name in self.values:
            return self.values[o.name]
        try:
            enum, val = self.cat.enum_value(o.name, self.lib.cuda_major)
            return ("enum", enum, val, o)
        except IngeroError:
            pass
        try:
            return ("const", None, self.cat.constant(o.name, self.lib.cuda_major), o)
        except IngeroError:
            pass
        cands: list[str] = []
        if other is not None and other.enum:
            try:
                cands = list(self.cat.enum(other.enum, self.lib.cuda_major))
            except IngeroError:
                cands = []
        arg_names = {n for s in self.sigs if s.params for n, _ in s.params}
        sym = self.symbols[0].name
        hint = suggestion(o.name, cands) or suggestion(o.name, [*sorted(arg_names), *BUILTINS])
        if cands:
            self.error(
                o.span,
                f"{o.name!r} is neither an argument of {sym} nor a value of {other.enum}",
                hint or f"values of {other.enum}: {', '.join(cands[:5])}, ...",
            )
        else:
            self._unknown_field(o, [sym]) if self.sigs[0].params is not None or not hint else self.error(
                o.span, f"unknown name {o.name!r}", hint
            )
        return None

    def _compare(self, c: ast.Compare) -> RExpr | None:
        # resolve fields first so that an enum name on the other side knows which enum to suggest from
        left = self._operand_value(c.left, None) if isinstance(c.left, ast.FieldRef) else c.left
        lv = left if isinstance(left, Value) else None
        right = self._operand_value(c.right, lv)
        if isinstance(c.left, ast.FieldRef) and left is None:
            return None
        if right is None:
            return None
        if not isinstance(left, Value) and isinstance(right, Value):
            # constant on the left: 1MiB <= count  ->  count >= 1MiB
            flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(c.op, c.op)
            return self._typed(c, right, left, flipped, c.right, c.left)
        if not isinstance(left, Value):
            self.error(c.span, "this compares two constants", "compare a field with a value: count >= 1MiB")
            return None
        return self._typed(c, left, right, c.op, c.left, c.right)

    def _typed(self, c: ast.Compare, v: Value, other, op: str, vnode, onode) -> RExpr | None:
        span = onode.span if hasattr(onode, "span") else c.span
        name = vnode.text if isinstance(vnode, ast.FieldRef) else v.key
        if v.kind == "stack":
            self.error(vnode.span, "stack cannot be compared", "record it, or aggregate by it")
            return None
        if isinstance(other, Value):
            if other.kind == "stack":
                self.error(onode.span, "stack cannot be compared")
                return None
            ptrs = (v.kind in ("pointer", "code"), other.kind in ("pointer", "code"))
            ok = v.numeric and other.numeric and ptrs[0] == ptrs[1]
            if not ok:
                self.error(c.span, f"{name} ({_a(v.kind)}) cannot be compared with {onode.text} ({_a(other.kind)})")
                return None
            return RCompare(op, ValueRef(v.key), ValueRef(other.key))
        if isinstance(other, ast.String):
            return self._string_compare(c, v, other, op, name)
        if v.kind in ("string", "comm", "symbol"):
            self.error(span, f'{name} is {_a(v.kind)}: compare it with a "string"', f'for example {name} == "..."')
            return None
        if isinstance(other, tuple):  # enum value or constant by name
            tag, enum, value, node = other
            if tag == "enum":
                if v.kind in ("pointer", "code"):
                    self.error(node.span, f"{name} is a pointer; {node.name} is a value of {enum}")
                    return None
                if v.kind == "enum" and v.enum and enum != v.enum:
                    try:
                        cands = list(self.cat.enum(v.enum, self.lib.cuda_major))
                    except IngeroError:
                        cands = []
                    self.error(
                        node.span,
                        f"{node.name} is a value of {enum}, but {name} is a {v.enum}",
                        suggestion(node.name, cands)
                        or (f"values of {v.enum}: {', '.join(cands[:4])}, ..." if cands else None),
                    )
                    return None
                if v.source in ("latency", "ts", "pid", "tid") or (v.kind != "enum" and v.source != "retval"):
                    self.error(node.span, f"{name} is not an enum; {node.name} is a value of {enum}")
                    return None
            return RCompare(op, ValueRef(v.key), Const(value, node.name))
        assert isinstance(other, ast.Number)
        num = self._number(other)
        if num is None:
            return None
        value, unit = num
        if v.kind in ("pointer", "code") and unit:
            self.error(
                other.span,
                f"{name} is a pointer; {other.text} is a {'size' if unit in SIZE_UNITS else 'time'}",
                "a pointer compares with another pointer or an address such as 0x7f0000000000",
            )
            return None
        if unit in TIME_UNITS and v.source not in ("latency", "ts"):
            self.error(
                other.span,
                f"{other.text} is a time but {name} is not (only latency and ts are times)",
                "sizes are written 4KiB, 1MiB; counts without a unit",
            )
            return None
        if unit in SIZE_UNITS and v.source in ("latency", "ts"):
            self.error(
                other.span,
                f"{name} is a time; {other.text} is a size",
                f"write a time: {name} > 5ms (units: {', '.join(TIME_UNITS)})",
            )
            return None
        if value < 0 and not v.signed:
            self.error(
                other.span, f"{name} is unsigned: it is never {op} {other.text}", "compare with 0 or a positive value"
            )
            return None
        limit = 1 << (8 * min(v.size, 8))
        if v.kind in ("int", "uint", "enum") and v.size < 8:
            lo, hi = (-(limit >> 1), (limit >> 1) - 1) if v.signed else (0, limit - 1)
            if not lo <= value <= hi:
                self.error(other.span, f"{other.text} is out of range for {name} ({v.ctype}, {v.size} bytes)")
                return None
        return RCompare(op, ValueRef(v.key), Const(value, other.text))

    def _string_compare(self, c, v: Value, s: ast.String, op: str, name: str) -> RExpr | None:
        if op not in ("==", "!="):
            self.error(c.span, f"strings compare only with == and !=, not {op}", f'{name} == "..."')
            return None
        if v.kind == "symbol":
            names = [x.name for x in self.symbols]
            if s.value not in names:
                self.error(
                    s.span,
                    f"{s.value!r} is not one of the probed symbols",
                    suggestion(s.value, names) or f"this probe attaches to {', '.join(names[:5])}",
                )
                return None
            return RSymbolIn((names.index(s.value),), op == "!=")
        if v.kind not in ("string", "comm"):
            self.error(
                s.span,
                f"{name} is {_a(v.kind)}, not a string",
                "only char * arguments, comm and symbol compare with strings",
            )
            return None
        data = s.value.encode()
        cap = COMM_LEN if v.kind == "comm" else STR_CAP
        if len(data) >= cap:
            self.error(
                s.span,
                f"the string is {len(data)} bytes; {name} holds at most {cap - 1}",
                f"compare with a string of at most {cap - 1} bytes",
            )
            return None
        return RCompare(op, ValueRef(v.key), StrConst(data))


def _a(kind: str) -> str:
    return {
        "int": "an integer", "uint": "an unsigned integer", "enum": "an enum", "pointer": "a pointer",
        "code": "a function pointer", "string": "a string", "comm": "a process name", "symbol": "a symbol name",
        "stack": "a stack",
    }.get(kind, kind)  # fmt: skip


__all__ = ["CheckResult", "check", "check_file", "did_you_mean"]
