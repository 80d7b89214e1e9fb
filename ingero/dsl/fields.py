"""Field references (``count``, ``arg3``, ``gridDim.x``, ``latency``) -> :class:`Value`, placed by the ABI.

A :class:`Fields` is made by a pass from its context, resolves the fields that pass names (each once:
a field already resolved is reused, one already reported is not reported again) and hands back the
context with the values it added (:meth:`Fields.done`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from types import MappingProxyType

from ingero.abi import Piece, piece, untyped_piece
from ingero.catalogue import CType
from ingero.dsl import ast
from ingero.dsl.context import ProbeContext, Report, Sig
from ingero.dsl.exprs import ValueExprs, enum_of
from ingero.dsl.resolved import BUILTINS, COMM_LEN, STR_CAP, Value
from ingero.dsl.signatures import scalar
from ingero.errors import IngeroError, suggestion

_ARGN = re.compile(r"arg(\d+)")
_READABLE = ("int", "uint", "bool", "enum", "pointer", "char_pointer")


def is_positional(name: str) -> bool:
    return _ARGN.fullmatch(name) is not None


class Fields(ValueExprs):
    def __init__(self, ctx: ProbeContext, report: Report) -> None:
        self.ctx = ctx
        self.report = report
        self.cat = ctx.lookups.catalogue
        self.values: dict[str, Value] = dict(ctx.values)
        self.failed: set[str] = set(ctx.failed)
        self.notes: list[str] = list(ctx.notes)

    def done(self, **more) -> ProbeContext:
        """The context with every value resolved here (and ``more`` fields of the pass)."""
        return replace(
            self.ctx,
            values=MappingProxyType(self.values),
            failed=frozenset(self.failed),
            notes=tuple(self.notes),
            **more,
        )

    def field(self, f: ast.FieldRef, quiet: bool = False) -> Value | None:
        """Resolve a field reference to a Value, or report why not (``quiet``: report nothing)."""
        key = f.text
        if key in self.values:
            return self.values[key]
        if key in self.failed:
            return None
        if f.name in BUILTINS and f.member is None:
            self._note_clash(f)
        v = self._builtin(f) if f.name in BUILTINS else self._argument(f, quiet)
        if v is not None:
            self.values[v.key] = v
        elif not quiet:
            self.failed.add(key)
        return v

    def _note_clash(self, f: ast.FieldRef) -> None:
        for s, g in zip(self.ctx.symbols, self.ctx.sigs, strict=True):
            if f.name in g.names():
                self.notes.append(
                    f"{f.name!r} is both an argument of {s.name} and a built-in field: it means the "
                    f"built-in here; write arg{g.names().index(f.name)} for the argument"
                )
                return

    def _builtin(self, f: ast.FieldRef) -> Value | None:
        if f.member is not None:
            self.report.error(f.span, f"{f.name} has no members")
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
            return SYMBOL
        if n == "pystack":
            return Value("pystack", "pystack", "pystack", 8, False, "the calling thread's Python stack")
        return Value("stack", "stack", "stack", 8, True, "user stack (with the Python frames)")

    def _retval(self, f: ast.FieldRef) -> Value | None:
        sigs, first = self.ctx.sigs, self.ctx.symbols[0].name
        rets = {(s.ret.name, s.ret.kind, s.ret.size) if s.ret is not None else None for s in sigs}
        if len(rets) > 1:
            which = ", ".join(sorted({r[0] for r in rets if r})) or "unknown"
            self.report.error(
                f.span,
                f"the probed functions return different types ({which}): retval has no one type",
                "probe them in separate probes",
            )
            return None
        ret = sigs[0].ret if sigs else None
        if ret is None:
            self.report.error(
                f.span,
                f"the return type of {first} is not known, so retval cannot be read",
                f"declare it after the arguments: ...:{first}(...) -> i32 (or i64, u64, ptr)",
            )
            return None
        kind = ret.kind
        if kind == "void":
            self.report.error(f.span, f"{first} returns void: there is no retval")
            return None
        if kind in ("float", "double", "long_double"):
            self.report.error(
                f.span, f"{first} returns {ret.name}, in a floating-point register that a uprobe cannot read"
            )
            return None
        if kind in ("struct", "union", "array"):
            self.report.error(f.span, f"{first} returns a {kind} by value; only scalar return values can be read")
            return None
        return self._value_of("retval", "retval", ret, None, at_return=True)

    def _value_of(
        self, key: str, source: str, ct: CType, pc: Piece | None, *, at_return: bool = False, code: bool = False
    ) -> Value:
        kind = {"bool": "uint", "char_pointer": "string"}.get(ct.kind, ct.kind)
        if kind == "pointer" and code:
            kind = "code"
        enum = enum_of(self.cat, ct)
        size = STR_CAP if kind == "string" else ct.size or 8
        return Value(key, source, kind, size, ct.kind in ("int", "enum"), ct.name, pc, enum, at_return)

    def _argument(self, f: ast.FieldRef, quiet: bool) -> Value | None:
        """An argument by name or argN, placed identically in every probed symbol."""
        m = _ARGN.fullmatch(f.name)
        found: list[tuple[CType, Piece, bool]] = []
        missing: list[str] = []
        for sym, sig in zip(self.ctx.symbols, self.ctx.sigs, strict=True):
            if sig.params is None:
                if m is None:
                    missing.append(sym.name)
                    continue
                found.append((scalar("uint", 8, "u64"), untyped_piece(int(m.group(1))), False))
                continue
            if m is not None:
                i = int(m.group(1))
                if i >= len(sig.params):
                    missing.append(sym.name)
                    continue
            else:
                if f.name not in sig.names():
                    missing.append(sym.name)
                    continue
                i = sig.names().index(f.name)
            one = self._placed(f, sig, i)
            if one is None:
                return None
            found.append(one)
        if missing:
            if quiet:
                return None
            n = len(self.ctx.symbols)
            if len(missing) == n:
                self.unknown_field(f)
            else:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                self.report.error(
                    f.span,
                    f"{f.text!r} is not an argument of {missing[0]}{more} (the glob matches {n} functions)",
                    "narrow the glob so that every function has it",
                )
            return None
        first = found[0]
        for other, sym in zip(found[1:], self.ctx.symbols[1:], strict=False):
            if other[1] != first[1] or other[0].kind != first[0].kind or other[0].size != first[0].size:
                self.report.error(
                    f.span,
                    f"{f.text!r} is not in the same place in {self.ctx.symbols[0].name} and {sym.name}",
                    "probe them in separate probes",
                )
                return None
        return self._value_of(f.text, "arg", first[0], first[1], code=first[2])

    def _placed(self, f: ast.FieldRef, sig: Sig, i: int) -> tuple[CType, Piece, bool] | None:
        """The type and place of parameter ``i`` (or of the member ``f`` names), or an error."""
        pname, ct = (sig.params or ())[i]
        if f.member is not None:
            if ct.kind not in ("struct", "union"):
                hint = (
                    "members of a struct passed by pointer cannot be read yet"
                    if self._points_to_struct(ct)
                    else "only struct arguments passed by value have members"
                )
                self.report.error(f.span, f"{pname} is {ct.name}, not a struct: it has no member {f.member!r}", hint)
                return None
            fld = next((x for x in ct.fields if x.name == f.member), None)
            if fld is None:
                self.report.error(
                    f.span,
                    f"{pname} ({ct.name}) has no member {f.member!r}",
                    suggestion(f.member, [x.name for x in ct.fields])
                    or f"its members: {', '.join(x.name for x in ct.fields)}",
                )
                return None
            leaf, off = fld.ctype, fld.offset
            if leaf.kind in ("struct", "union", "array"):
                self.report.error(f.span, f"{pname}.{f.member} is a {leaf.kind}; only scalar members can be read")
                return None
        else:
            if ct.kind in ("struct", "union"):
                mem = ", ".join(f"{pname}.{x.name}" for x in ct.fields[:3]) or "none"
                self.report.error(
                    f.span,
                    f"{pname} is a struct ({ct.name}) passed by value: name one of its members",
                    f"for example {mem}",
                )
                return None
            leaf, off = ct, 0
        if leaf.kind in ("float", "double", "long_double"):
            self.report.error(f.span, f"{f.text} is a {leaf.name}: floating-point values cannot be read yet")
            return None
        if leaf.kind not in _READABLE or not leaf.size or leaf.size > 8:
            self.report.error(f.span, f"{f.text} has type {leaf.name}, which cannot be read")
            return None
        pc = piece(sig.places[i], off, leaf.size)
        if pc.where == "xmm":
            self.report.error(f.span, f"{f.text} is passed in a floating-point register, which a uprobe cannot read")
            return None
        code = pname == "func" and sig.func_is_code and leaf.kind == "pointer"
        return leaf, pc, code

    def _points_to_struct(self, ct: CType) -> bool:
        if ct.kind != "pointer" or not ct.pointee:
            return False
        try:
            target = self.cat.type_info(ct.pointee)
        except IngeroError:
            return False
        return target.kind in ("struct", "union") and not target.opaque and bool(target.fields)

    def unknown_field(self, f: ast.FieldRef) -> None:
        """Report a name that is no argument of the (first) probed function."""
        sig = self.ctx.sigs[0]
        sym = self.ctx.symbols[0].name
        if sig.params is None:
            self.report.error(
                f.span,
                f"{sym} has no known signature, so {f.text!r} means nothing",
                f"use arg0..arg5, or declare its arguments: {sym}(u64 n, ptr buf)",
            )
            return
        if is_positional(f.name):
            n = len(sig.params)
            self.report.error(
                f.span,
                f"{sym} has only {n} argument{'s' if n != 1 else ''}",
                f"arg0..arg{n - 1}" if n else "it takes no arguments",
            )
            return
        names = sig.names()
        self.report.error(
            f.span,
            f"{sym} has no argument {f.name!r}",
            suggestion(f.name, [*names, *BUILTINS])
            or f"its arguments: {', '.join(names) or '(none)'}; built-ins: {', '.join(BUILTINS)}",
        )


#: The built-in ``symbol`` field (also what a probe without record or aggregate counts by).
SYMBOL = Value("symbol", "symbol", "symbol", 4, False, "symbol")
