"""Pass 5: the where expression, type-checked (units, enums, pointers, strings) into an :data:`RExpr`."""

from __future__ import annotations

from dataclasses import dataclass

from ingero.dsl import ast
from ingero.dsl.context import ProbeContext, Report, a_kind
from ingero.dsl.fields import Fields, is_positional
from ingero.dsl.resolved import (
    BUILTINS,
    COMM_LEN,
    STR_CAP,
    Const,
    RAnd,
    RCompare,
    RExpr,
    RNot,
    ROr,
    RSymbolIn,
    StrConst,
    Value,
    ValueRef,
)
from ingero.dsl.units import SIZE_UNITS, TIME_UNITS, number
from ingero.errors import IngeroError, suggestion

_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass(frozen=True)
class NamedValue:
    """A name in a condition that is no field: an enum value (``enum`` names its enum) or a constant."""

    value: int
    enum: str | None
    node: ast.FieldRef


Operand = Value | NamedValue | ast.Number | ast.String


def filter_(ctx: ProbeContext, report: Report) -> ProbeContext:
    if ctx.where is None:
        return ctx
    check = _Filter(ctx, report)
    flt = check.expr(ctx.where.expr)
    return check.fields.done(filter=flt)


def uses_return(e: RExpr, ctx: ProbeContext) -> bool:
    """Whether a filter reads a value only known at return (then it is judged there)."""
    if isinstance(e, RCompare):
        return any(isinstance(o, ValueRef) and ctx.values[o.key].at_return for o in (e.left, e.right))
    if isinstance(e, (RAnd, ROr)):
        return any(uses_return(i, ctx) for i in e.items)
    if isinstance(e, RNot):
        return uses_return(e.item, ctx)
    return False


class _Filter:
    def __init__(self, ctx: ProbeContext, report: Report) -> None:
        self.ctx = ctx
        self.report = report
        self.fields = Fields(ctx, report)
        self.cat = ctx.lookups.catalogue
        self.major = ctx.lib.cuda_major

    def expr(self, e: ast.Expr) -> RExpr | None:
        if isinstance(e, (ast.And, ast.Or)):
            items = [self.expr(i) for i in e.items]
            if any(i is None for i in items):
                return None
            return (RAnd if isinstance(e, ast.And) else ROr)(tuple(items))  # type: ignore[arg-type]
        if isinstance(e, ast.Not):
            inner = self.expr(e.item)
            return None if inner is None else RNot(inner)
        return self._compare(e)

    def _operand(self, o: ast.Operand, other: Value | None) -> Operand | None:
        """A field operand: a Value, else an enum value or constant name, else an error (None)."""
        if isinstance(o, ast.Arith) or (isinstance(o, ast.FieldRef) and (o.star or o.via == "->")):
            return self.fields.value(o)
        if not isinstance(o, ast.FieldRef):
            return o
        if o.name in BUILTINS or o.member is not None or is_positional(o.name):
            return self.fields.field(o)
        v = self.fields.field(o, quiet=True)
        if v is not None:
            return v
        try:
            enum, val = self.cat.enum_value(o.name, self.major)
            return NamedValue(val, enum, o)
        except IngeroError:
            pass
        try:
            return NamedValue(self.cat.constant(o.name, self.major), None, o)
        except IngeroError:
            pass
        cands: list[str] = []
        if other is not None and other.enum:
            try:
                cands = list(self.cat.enum(other.enum, self.major))
            except IngeroError:
                cands = []
        arg_names = {n for s in self.ctx.sigs for n in s.names()}
        sym = self.ctx.symbols[0].name
        hint = suggestion(o.name, cands) or suggestion(o.name, [*sorted(arg_names), *BUILTINS])
        if cands and other is not None:
            self.report.error(
                o.span,
                f"{o.name!r} is neither an argument of {sym} nor a value of {other.enum}",
                hint or f"values of {other.enum}: {', '.join(cands[:5])}, ...",
            )
        elif self.ctx.sigs[0].params is not None or not hint:
            self.fields.unknown_field(o)
        else:
            self.report.error(o.span, f"unknown name {o.name!r}", hint)
        return None

    def _compare(self, c: ast.Compare) -> RExpr | None:
        # resolve the left field first so that an enum name on the right knows which enum to suggest from
        left = self._operand(c.left, None)
        right = self._operand(c.right, left if isinstance(left, Value) else None)
        if left is None or right is None:
            return None
        if not isinstance(left, Value) and isinstance(right, Value):
            # constant on the left: 1MiB <= count  ->  count >= 1MiB
            return self._typed(c, right, left, _FLIPPED.get(c.op, c.op), c.right, c.left)
        if not isinstance(left, Value):
            self.report.error(c.span, "this compares two constants", "compare a field with a value: count >= 1MiB")
            return None
        return self._typed(c, left, right, c.op, c.left, c.right)

    def _typed(
        self, c: ast.Compare, v: Value, other: Operand, op: str, vnode: ast.Operand, onode: ast.Operand
    ) -> RExpr | None:
        name = vnode.text if isinstance(vnode, (ast.FieldRef, ast.Arith)) else v.key
        if v.kind in ("stack", "pystack"):
            self.report.error(vnode.span, f"{v.kind} cannot be compared", "record it, or aggregate by it")
            return None
        if isinstance(other, Value):
            if other.kind in ("stack", "pystack"):
                self.report.error(onode.span, f"{other.kind} cannot be compared")
                return None
            ptrs = (v.kind in ("pointer", "code"), other.kind in ("pointer", "code"))
            if not (v.numeric and other.numeric and ptrs[0] == ptrs[1]):
                otext = onode.text if isinstance(onode, (ast.FieldRef, ast.Number, ast.Arith)) else other.key
                self.report.error(
                    c.span, f"{name} ({a_kind(v.kind)}) cannot be compared with {otext} ({a_kind(other.kind)})"
                )
                return None
            return RCompare(op, ValueRef(v.key), ValueRef(other.key))
        if isinstance(other, ast.String):
            return self._string_compare(c, v, other, op, name)
        if v.kind in ("string", "comm", "symbol"):
            self.report.error(
                onode.span, f'{name} is {a_kind(v.kind)}: compare it with a "string"', f'for example {name} == "..."'
            )
            return None
        if isinstance(other, NamedValue):
            return self._named(v, other, op, name)
        return self._number(v, other, op, name)

    def _named(self, v: Value, other: NamedValue, op: str, name: str) -> RExpr | None:
        node, enum = other.node, other.enum
        if enum is not None:
            if v.kind in ("pointer", "code"):
                self.report.error(node.span, f"{name} is a pointer; {node.name} is a value of {enum}")
                return None
            if v.kind == "enum" and v.enum and enum != v.enum:
                try:
                    cands = list(self.cat.enum(v.enum, self.major))
                except IngeroError:
                    cands = []
                self.report.error(
                    node.span,
                    f"{node.name} is a value of {enum}, but {name} is a {v.enum}",
                    suggestion(node.name, cands)
                    or (f"values of {v.enum}: {', '.join(cands[:4])}, ..." if cands else None),
                )
                return None
            if v.source in ("latency", "ts", "pid", "tid") or (v.kind != "enum" and v.source != "retval"):
                self.report.error(node.span, f"{name} is not an enum; {node.name} is a value of {enum}")
                return None
        return RCompare(op, ValueRef(v.key), Const(other.value, node.name))

    def _number(self, v: Value, other: ast.Number, op: str, name: str) -> RExpr | None:
        num = number(other, self.report)
        if num is None:
            return None
        value, unit = num
        if v.kind in ("pointer", "code") and unit:
            self.report.error(
                other.span,
                f"{name} is a pointer; {other.text} is a {'size' if unit in SIZE_UNITS else 'time'}",
                "a pointer compares with another pointer or an address such as 0x7f0000000000",
            )
            return None
        if unit in TIME_UNITS and v.source not in ("latency", "ts", "expr"):  # computed values take any unit
            self.report.error(
                other.span,
                f"{other.text} is a time but {name} is not (only latency and ts are times)",
                "sizes are written 4KiB, 1MiB; counts without a unit",
            )
            return None
        if unit in SIZE_UNITS and v.source in ("latency", "ts"):
            self.report.error(
                other.span,
                f"{name} is a time; {other.text} is a size",
                f"write a time: {name} > 5ms (units: {', '.join(TIME_UNITS)})",
            )
            return None
        if value < 0 and not v.signed:
            self.report.error(
                other.span, f"{name} is unsigned: it is never {op} {other.text}", "compare with 0 or a positive value"
            )
            return None
        limit = 1 << (8 * min(v.size, 8))
        lo, hi = (-(limit >> 1), (limit >> 1) - 1) if v.signed else (0, limit - 1)
        if not lo <= value <= hi:
            self.report.error(
                other.span,
                f"{other.text} is out of range for {name} ({v.ctype}, {v.size} bytes: {lo} to {hi})",
                "compare with a value the field can hold",
            )
            return None
        return RCompare(op, ValueRef(v.key), Const(value, other.text))

    def _string_compare(self, c: ast.Compare, v: Value, s: ast.String, op: str, name: str) -> RExpr | None:
        if op not in ("==", "!="):
            self.report.error(c.span, f"strings compare only with == and !=, not {op}", f'{name} == "..."')
            return None
        if v.kind == "symbol":
            names = [x.name for x in self.ctx.symbols]
            if s.value not in names:
                self.report.error(
                    s.span,
                    f"{s.value!r} is not one of the probed symbols",
                    suggestion(s.value, names) or f"this probe attaches to {', '.join(names[:5])}",
                )
                return None
            return RSymbolIn((names.index(s.value),), op == "!=")
        if v.kind not in ("string", "comm"):
            self.report.error(
                s.span,
                f"{name} is {a_kind(v.kind)}, not a string",
                "only char * arguments, comm and symbol compare with strings",
            )
            return None
        data = s.value.encode()
        cap = COMM_LEN if v.kind == "comm" else STR_CAP
        if len(data) >= cap:
            self.report.error(
                s.span,
                f"the string is {len(data)} bytes; {name} holds at most {cap - 1}",
                f"compare with a string of at most {cap - 1} bytes",
            )
            return None
        return RCompare(op, ValueRef(v.key), StrConst(data))
