"""Pass 3: the C signature of every symbol (declared in the spec, from the catalogue, or none), each
argument placed by the ABI."""

from __future__ import annotations

import re
from dataclasses import replace

from ingero.abi import place_arguments
from ingero.catalogue import Catalogue, CType, Field, Signature
from ingero.dsl import ast
from ingero.dsl.context import ProbeContext, Report, Sig
from ingero.dsl.resolved import BUILTINS, ResolvedSymbol
from ingero.errors import IngeroError, suggestion

DECLARED_TYPES = {
    # name: (kind, size)
    "i8": ("int", 1), "i16": ("int", 2), "i32": ("int", 4), "i64": ("int", 8),
    "u8": ("uint", 1), "u16": ("uint", 2), "u32": ("uint", 4), "u64": ("uint", 8),
    "bool": ("bool", 1), "ptr": ("pointer", 8), "str": ("char_pointer", 8),
    "f32": ("float", 4), "f64": ("double", 8),
}  # fmt: skip

#: Placed catalogue signatures, by the catalogue's own Signature object (a catalogue hands out one per
#: name and never changes; a test's catalogue of its own may give the same name another signature).
_PLACED: dict[int, tuple[Signature, Sig]] = {}


def scalar(kind: str, size: int, name: str) -> CType:
    return CType(name=name, kind=kind, size=size, align=size)


def signatures(ctx: ProbeContext, report: Report) -> ProbeContext:
    t = ctx.probe.target
    cat = ctx.lookups.catalogue
    lib = ctx.lib
    declared: Sig | None = None
    notes = ctx.notes
    if t.params is not None or t.returns is not None:
        mark = len(report)
        declared = _declared(t, cat, report)
        if len(report) > mark:
            return ctx
        if t.params is None:
            notes += ("return type declared without arguments: arguments are untyped",)
    sigs: list[Sig] = []
    symbols: list[ResolvedSymbol] = []
    for n in ctx.symbol_names:
        if declared is not None:
            sig, how = declared, "declared"
        else:
            cs = cat.lookup_symbol(n, lib.cuda_major) if lib.cuda_major or lib.family else None
            if cs is None and lib.family is None:
                cs = cat.lookup_symbol(n)
            if cs is not None and not cs.variadic:
                sig, how = _from_catalogue(cs), "catalogue"
            else:
                sig, how = Sig(None, None), "untyped"
        sigs.append(sig)
        addrs = ctx.symbol_offsets.get(n, ())
        symbols.append(ResolvedSymbol(n, addrs[0] if addrs else 0, how, addrs[1:]))
    return replace(ctx, sigs=tuple(sigs), symbols=tuple(symbols), notes=notes)


def _from_catalogue(cs: Signature) -> Sig:
    hit = _PLACED.get(id(cs))
    if hit is not None and hit[0] is cs:
        return hit[1]
    params = tuple((p.name, p.ctype) for p in cs.params)
    places = place_arguments([c for _, c in params], cs.return_ctype)
    sig = Sig(params, cs.return_ctype, tuple(places), func_is_code=cs.library == "cudart")
    _PLACED[id(cs)] = (cs, sig)
    return sig


def _declared_type(tr: ast.TypeRef, cat: Catalogue, report: Report) -> CType | None:
    if tr.name is None:
        fields = []
        off = 0
        align = 1
        names = set()
        for m in tr.members:
            if m.type not in DECLARED_TYPES or DECLARED_TYPES[m.type][0] in ("char_pointer",):
                ok = [k for k in DECLARED_TYPES if k != "str"]
                report.unknown(m.type_span, "member type", m.type, ok)
                continue
            if m.name in names:
                report.error(m.span, f"member {m.name!r} declared twice", "give each member its own name")
            kind, size = DECLARED_TYPES[m.type]
            off = (off + size - 1) // size * size
            fields.append(Field(m.name, scalar(kind, size, m.type), off))
            names.add(m.name)
            off += size
            align = max(align, size)
        size = (off + align - 1) // align * align
        return CType(name="struct {...}", kind="struct", size=size, align=align, fields=tuple(fields))
    if tr.name in DECLARED_TYPES:
        kind, size = DECLARED_TYPES[tr.name]
        return scalar(kind, size, tr.name)
    try:
        return cat.type_info(tr.name)
    except IngeroError:
        report.error(
            tr.span,
            f"unknown type {tr.name!r}",
            suggestion(tr.name, DECLARED_TYPES)
            or f"types: {', '.join(DECLARED_TYPES)}, {{u32 x, u32 y}} for a struct, or a CUDA type name",
        )
        return None


def _declared(t: ast.Target, cat: Catalogue, report: Report) -> Sig:
    params = []
    names: set[str] = set()
    pointees = []
    for d in t.params or ():
        ct = _declared_type(d.type, cat, report)
        if ct is not None and d.pointer:
            pointees.append((d.name, ct.name, ct))
            ct = CType(name=f"{ct.name} *", kind="pointer", size=8, align=8, pointee=ct.name)
        if d.name in names:
            report.error(d.name_span, f"argument {d.name!r} declared twice", "give each argument its own name")
        if d.name in BUILTINS or re.fullmatch(r"arg\d+", d.name):
            report.error(
                d.name_span,
                f"{d.name!r} is a built-in field name",
                f"call the argument something else, such as {d.name}_",
            )
        names.add(d.name)
        if ct is not None:
            params.append((d.name, ct))
    ret = _declared_type(t.returns, cat, report) if t.returns is not None else None
    if t.params is None:
        return Sig(None, ret)
    return Sig(tuple(params), ret, tuple(place_arguments([c for _, c in params], ret)), pointees=tuple(pointees))
