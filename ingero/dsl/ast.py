"""The probe spec as written: frozen dataclasses, each node with its span. No meaning yet (no library,
symbol, type or unit has been looked up); :mod:`ingero.dsl.check` turns this into a resolved spec."""

from __future__ import annotations

from dataclasses import dataclass

from ingero.dsl.source import Span


@dataclass(frozen=True)
class FieldRef:
    """``count``, ``arg3``, ``latency``, ``gridDim.x``: a name and an optional member; ``p->m`` (``via``
    ``->``) reads a member through a pointer; ``*p`` (``star``) reads what a pointer points to."""

    name: str
    member: str | None
    span: Span
    via: str = "."
    star: bool = False

    @property
    def text(self) -> str:
        if self.star:
            return f"*{self.name}"
        return f"{self.name}{self.via}{self.member}" if self.member else self.name


@dataclass(frozen=True)
class Number:
    """A literal as written (``1MiB``, ``0x5EED0000``, ``120s``): digits and the unit glued to them."""

    text: str
    digits: str
    unit: str
    negative: bool
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Arith:
    """``left op right`` over integers: ``+ - * / << >>``."""

    op: str
    left: Operand
    right: Operand
    span: Span

    @property
    def text(self) -> str:
        def side(x, right: bool) -> str:
            t = x.text if not isinstance(x, String) else repr(x.value)
            if isinstance(x, Arith) and (_PREC[x.op] < _PREC[self.op] or (right and _PREC[x.op] == _PREC[self.op])):
                return f"({t})"
            return t

        return f"{side(self.left, False)} {self.op} {side(self.right, True)}"


_PREC = {"<<": 0, ">>": 0, "+": 1, "-": 1, "*": 2, "/": 2}

Operand = FieldRef | Number | String | Arith


@dataclass(frozen=True)
class Compare:
    op: str
    left: Operand
    right: Operand
    span: Span


@dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Not:
    item: Expr
    span: Span


Expr = Compare | And | Or | Not


@dataclass(frozen=True)
class Member:
    type: str
    name: str
    span: Span
    type_span: Span


@dataclass(frozen=True)
class TypeRef:
    """A declared argument type: a name (``u64``, ``str``, ``cudaStream_t``) or an inline struct."""

    name: str | None
    members: tuple[Member, ...]
    span: Span


@dataclass(frozen=True)
class ParamDecl:
    type: TypeRef
    name: str
    span: Span
    name_span: Span
    pointer: bool = False  # ``i32 *count``: a pointer to the type


@dataclass(frozen=True)
class Target:
    library: str
    symbol: str
    library_span: Span
    symbol_span: Span
    params: tuple[ParamDecl, ...] | None  # None: not declared (use the catalogue)
    params_span: Span | None
    returns: TypeRef | None  # declared return type: foo(u64 n) -> i32
    pid: int | None
    pid_span: Span | None
    span: Span


@dataclass(frozen=True)
class Where:
    expr: Expr
    span: Span


@dataclass(frozen=True)
class Record:
    fields: tuple[Operand, ...]
    span: Span


@dataclass(frozen=True)
class Agg:
    func: str
    arg: Operand | None
    span: Span
    func_span: Span
    parens: bool
    more: tuple[Operand, ...] = ()  # lhist(x, min, max, step): min, max, step


@dataclass(frozen=True)
class Aggregate:
    aggs: tuple[Agg, ...]
    by: tuple[Operand, ...]
    span: Span


@dataclass(frozen=True)
class Budget:
    name: str
    value: Number
    per: str | None
    span: Span
    name_span: Span
    per_span: Span | None


@dataclass(frozen=True)
class Limit:
    budgets: tuple[Budget, ...]
    span: Span


Clause = Where | Record | Aggregate | Limit


@dataclass(frozen=True)
class Probe:
    name: str
    name_span: Span
    target: Target
    clauses: tuple[Clause, ...]
    span: Span


@dataclass(frozen=True)
class Spec:
    probes: tuple[Probe, ...]


def dump(node, indent: int = 0) -> str:
    """A readable tree of an AST (``ingero probe check --emit ast``)."""
    pad = "  " * indent
    if isinstance(node, tuple):
        return "\n".join(dump(n, indent) for n in node)
    if not hasattr(node, "__dataclass_fields__"):
        return f"{pad}{node!r}"
    name = type(node).__name__
    simple, nested = [], []
    for k in node.__dataclass_fields__:
        v = getattr(node, k)
        if k.endswith("span") or k == "span":
            continue
        if hasattr(v, "__dataclass_fields__") or (isinstance(v, tuple) and v and hasattr(v[0], "__dataclass_fields__")):
            nested.append((k, v))
        elif v is not None and v != () and v != "" and v is not False:
            simple.append(f"{k}={v!r}")
    span = getattr(node, "span", None)
    where = f" @{span.line}:{span.column}" if span is not None else ""
    lines = [f"{pad}{name}{where} " + " ".join(simple)]
    for k, v in nested:
        lines.append(f"{pad}  {k}:")
        lines.append(dump(v, indent + 2))
    return "\n".join(line.rstrip() for line in lines)
