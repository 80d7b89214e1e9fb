"""Values beyond a plain field: reads through pointers (``*p``, ``p->m``) and integer arithmetic.

A mixin of :class:`ingero.dsl.fields.Fields`: ``value(node)`` turns
any value node of record, ``by``, an aggregation or a comparison into a :class:`Value`, or reports why
not (located, with a hint) and returns None.

- ``*p`` reads what the pointer argument ``p`` points to; ``p->m`` reads member ``m`` of the catalogue or
  declared struct ``p`` points to. Through a pointer to ``const`` (an input) the read is at entry; through
  any other pointer (declared pointers included) it is taken as an out-parameter and read at return
  (``record *devPtr`` on cudaMalloc gives the device pointer it wrote). The pointer itself is read at entry.
- A read through a pointer can fail (NULL, unmapped): it carries a read status, is counted
  (``read failed``) and shows as a miss, never as 0.
- ``+ - * / << >>`` compute in 64 bits, wrapping; signed only when both sides are signed. ``x / 0`` is 0;
  a shift by 64 or more is 0 (``>>`` of a negative signed value: -1). A literal 0 divisor or a literal
  shift outside 0..63 is an error.
"""

from __future__ import annotations

import re

from ingero.catalogue import Catalogue, CType
from ingero.dsl import ast
from ingero.dsl.resolved import BUILTINS, Const, Deref, RArith, Value, ValueRef
from ingero.dsl.units import number
from ingero.errors import IngeroError, suggestion

_READABLE = ("int", "uint", "bool", "enum", "pointer")


def enum_of(cat: Catalogue, ct: CType) -> str | None:
    """The catalogue's name of the enum a C type is (its values name a recorded number), or None."""
    if ct.kind != "enum":
        return None
    try:
        return cat.enum_name(ct.enum or ct.name)
    except IngeroError:
        return None


class ValueExprs:
    """Mixin of :class:`~ingero.dsl.fields.Fields` (``report``, ``field``, ``values``, ``ctx``, ``cat``)."""

    def value(self, node, *, what: str = "a value") -> Value | None:
        """Any value node (a field, ``*p``, ``p->m``, arithmetic) as a Value; constants are refused here
        (they only appear inside arithmetic and comparisons)."""
        if isinstance(node, ast.Arith):
            return self._computed(node)
        if isinstance(node, ast.FieldRef):
            if node.star or node.via == "->":
                return self._pointer_read(node)
            return self.field(node)
        if isinstance(node, ast.Number):
            self.report.error(node.span, f"{node.text} is a constant, not {what}",
                              "name a field, or compute one: size / 1MiB")
            return None
        self.report.error(node.span, f"a string is not {what}",
                          'strings only compare with char * fields: name == "x"')
        return None

    # -- pointers ------------------------------------------------------------------------------
    def _pointer_read(self, f: ast.FieldRef) -> Value | None:
        key = f.text
        if key in self.values:
            return self.values[key]
        if f.name in BUILTINS:
            self.report.error(f.span, f"{f.name} is a built-in field, not a pointer argument")
            return None
        base = self.field(ast.FieldRef(f.name, None, f.span))
        if base is None:
            return None
        if base.kind != "pointer" or base.source != "arg":
            self.report.error(f.span, f"{f.name} is {base.ctype}, not a pointer: {key} cannot be read",
                       f"record {f.name} itself")
            return None
        pointee = self._pointee(f.name)
        if pointee is None:
            self.report.error(f.span, f"the type {f.name} points to is not known, so {key} cannot be read",
                       f"declare it: ...:{self.ctx.symbols[0].name}(i32 *{f.name}, ...)")
            return None
        name, ct = pointee
        const = name.startswith("const ")
        if f.star:
            leaf, off = ct, 0
            at_return = not const
            if ct.kind in ("struct", "union"):
                mem = ", ".join(f"{f.name}->{x.name}" for x in ct.fields[:3]) or "none"
                self.report.error(f.span, f"{f.name} points to a struct ({ct.name}): name one of its members",
                           f"for example {mem}")
                return None
        else:
            if ct.kind not in ("struct", "union"):
                self.report.error(f.span, f"{f.name} points to {ct.name}, not a struct: it has no member {f.member!r}",
                           f"read what it points to: *{f.name}")
                return None
            fld = next((x for x in ct.fields if x.name == f.member), None)
            if fld is None:
                self.report.error(f.span, f"{ct.name} has no member {f.member!r}",
                           suggestion(f.member, [x.name for x in ct.fields])
                           or f"its members: {', '.join(x.name for x in ct.fields[:8])}")
                return None
            leaf, off = fld.ctype, fld.offset
            at_return = not const
        if leaf.kind == "char_pointer":
            leaf = CType(leaf.name, "pointer", 8, 8)
        if leaf.kind not in _READABLE or not leaf.size or leaf.size > 8:
            self.report.error(f.span, f"{key} has type {leaf.name}, which cannot be read",
                       "only integers, enums and pointers can be read through a pointer")
            return None
        kind = {"bool": "uint"}.get(leaf.kind, leaf.kind)
        enum = enum_of(self.cat, leaf)
        v = Value(key, "deref", kind, leaf.size, leaf.kind in ("int", "enum"), leaf.name, base.piece, enum,
                  at_return, Deref(base.key, off, leaf.size, at_return))
        self.values[key] = v
        return v

    def _pointee(self, name: str) -> tuple[str, CType] | None:
        """(spelling, type) of what argument ``name`` points to, the same in every probed symbol."""
        found: set[tuple[str, CType]] = set()
        for sig in self.ctx.sigs:
            declared = {n: (spelled, ct) for n, spelled, ct in sig.pointees}
            if name in declared:
                found.add(declared[name])
                continue
            ct = next((c for n, c in sig.params or () if n == name), None)
            if ct is None:
                m = re.fullmatch(r"arg(\d+)", name)
                if m and sig.params and int(m.group(1)) < len(sig.params):
                    ct = sig.params[int(m.group(1))][1]
            if ct is None or not ct.pointee:
                return None
            try:
                found.add((ct.pointee, self.cat.type_info(ct.pointee)))
            except IngeroError:
                return None
        return next(iter(found)) if len(found) == 1 else None

    # -- arithmetic ----------------------------------------------------------------------------
    def _computed(self, node: ast.Arith) -> Value | None:
        key = node.text
        if key in self.values:
            return self.values[key]
        expr = self._arith(node)
        if expr is None:
            return None
        keys = expr.keys()
        at_return = any(self.values[k].at_return for k in keys)
        ctype = "s64" if expr.signed else "u64"
        v = Value(key, "expr", "int" if expr.signed else "uint", 8, expr.signed, ctype, at_return=at_return,
                  expr=expr)
        self.values[key] = v
        return v

    def _arith(self, node):  # how deep it nests is bounded by the parser (MAX_NESTING)
        if isinstance(node, ast.Number):
            num = number(node, self.report)
            if num is None:
                return None
            value = num[0]
            if value >= 1 << 63 or value < -(1 << 63):
                if value >= 1 << 64 or value < 0:
                    self.report.error(node.span, f"{node.text} does not fit in 64 bits")
                    return None
            return Const(value, node.text)
        if isinstance(node, ast.FieldRef) or not isinstance(node, ast.Arith):
            v = self.value(node, what="a number")
            if v is None:
                return None
            if not v.numeric or v.kind == "code":
                self.report.error(node.span, f"{node.text} is {v.ctype}: arithmetic needs integers",
                           "use integer fields, sizes, counts, times or pointers")
                return None
            return ValueRef(v.key)
        left = self._arith(node.left)
        right = self._arith(node.right)
        if left is None or right is None:
            return None
        if isinstance(right, Const):
            if node.op == "/" and right.value == 0:
                self.report.error(node.right.span, "division by a literal 0", "x / 0 would always give 0")
                return None
            if node.op in ("<<", ">>") and not 0 <= right.value <= 63:
                self.report.error(node.right.span, f"a shift by {right.value}: shifts are by 0 to 63 bits")
                return None
        signed = self._signed(left) and self._signed(right)
        return RArith(node.op, left, right, signed)

    def _signed(self, e) -> bool:
        if isinstance(e, Const):
            return e.value < 1 << 63
        if isinstance(e, RArith):
            return e.signed
        v = self.values[e.key]
        return v.signed and v.kind != "pointer"
