"""Text -> AST: ``grammar/probe.lark`` (LALR, positions on) and one structural Transformer.

Syntax errors become one :class:`Diagnostic` each, located, with what was expected in user words
(:func:`_syntax_error`); the transformer does no semantic checking (that is :mod:`ingero.dsl.check`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ingero.dsl import ast
from ingero.dsl.diagnostics import Diagnostic, SpecError
from ingero.dsl.source import Source, Span
from ingero.paths import data_dir

CLAUSE_WORDS = ("where", "record", "aggregate", "limit")

#: Terminal names as a user would say them.
_WORDS = {
    "NAME": "a name",
    "TARGET": "a target LIBRARY:SYMBOL (no spaces, e.g. libcudart:cudaMalloc)",
    "NUMBER": "a number",
    "INT": "a whole number",
    "STRING": 'a "string"',
    "CMP": "a comparison (==, !=, <, <=, >, >=)",
    "PROBE": "'probe'",
    "WHERE": "'where'",
    "RECORD": "'record'",
    "AGGREGATE": "'aggregate'",
    "LIMIT": "'limit'",
    "BY": "'by'",
    "AND": "'and'",
    "OR": "'or'",
    "NOT": "'not'",
    "PID": "'pid'",
    "COMMA": "','",
    "LPAR": "'('",
    "RPAR": "')'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "EQUAL": "'='",
    "SLASH": "'/'",
    "DOT": "'.'",
    "MINUS": "'-'",
    "SHIFT": "a shift (<<, >>)",
    "ADDOP": "'+' or '-'",
    "MULOP": "'*' or '/'",
    "STAR": "'*'",
    "__ANON_1": "'->'",
    "__ANON_0": "'->'",
    "$END": "the end of the spec",
}


@dataclass(frozen=True)
class _Params:
    """A target's declared parameter list, before it joins its :class:`ast.Target`."""

    params: tuple[ast.ParamDecl, ...]
    span: Span


@dataclass(frozen=True)
class _Pid:
    pid: int
    span: Span


@dataclass(frozen=True)
class _By:
    fields: tuple[ast.FieldRef, ...]


@lru_cache(maxsize=1)
def _parser() -> Lark:
    text = (data_dir("grammar") / "probe.lark").read_text()
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _sp(x) -> Span:
    return Span.of(x)


def _num(tok: Token, negative: bool = False, span: Span | None = None) -> ast.Number:
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(tok))
    digits, unit = (m.group(1), m.group(2)) if m else (str(tok), "")
    return ast.Number(("-" if negative else "") + str(tok), digits, unit, negative, span or _sp(tok))


@v_args(meta=True)
class _ToAst(Transformer):
    def start(self, meta, probes):
        return ast.Spec(tuple(probes))

    def probe(self, meta, items):
        name, target, *clauses = items
        return ast.Probe(str(name), _sp(name), target, tuple(clauses), _sp(meta))

    def target(self, meta, items):
        tok = items[0]
        lib, _, sym = str(tok).partition(":")
        if sym.startswith('"'):  # a quoted demangled C++ name or glob
            sym = re.sub(r"\\(.)", r"\1", sym[1:-1])
        lspan = Span(tok.line, tok.column, tok.line, tok.column + len(lib))
        sspan = Span(tok.line, tok.column + len(lib) + 1, tok.line, tok.column + len(tok))
        params = params_span = pid = pid_span = returns = None
        for it in items[1:]:
            if isinstance(it, ast.TypeRef):
                returns = it
            elif isinstance(it, _Params):
                params, params_span = it.params, it.span
            elif isinstance(it, _Pid):
                pid, pid_span = it.pid, it.span
        return ast.Target(lib, sym, lspan, sspan, params, params_span, returns, pid, pid_span, _sp(meta))

    def ret_type(self, meta, items):
        return ast.TypeRef(str(items[0]), (), _sp(items[0]))

    def target_pid(self, meta, items):
        return _Pid(int(items[0]), _sp(items[0]))

    def params(self, meta, items):
        return _Params(tuple(items), _sp(meta))

    def param(self, meta, items):
        t, name = items[0], items[-1]
        return ast.ParamDecl(t, str(name), _sp(meta), _sp(name), len(items) == 3)

    def type_name(self, meta, items):
        return ast.TypeRef(str(items[0]), (), _sp(items[0]))

    def type_struct(self, meta, items):
        return ast.TypeRef(None, tuple(items), _sp(meta))

    def member(self, meta, items):
        t, n = items
        return ast.Member(str(t), str(n), _sp(n), _sp(t))

    def where(self, meta, items):
        return ast.Where(items[0], _sp(meta))

    def record(self, meta, items):
        return ast.Record(tuple(items), _sp(meta))

    def aggregate(self, meta, items):
        by: tuple[ast.FieldRef, ...] = ()
        if items and isinstance(items[-1], _By):
            by = items.pop().fields
        return ast.Aggregate(tuple(items), by, _sp(meta))

    def by(self, meta, items):
        return _By(tuple(items))

    def agg(self, meta, items):
        func = items[0]
        arg = items[1] if len(items) > 1 else None
        parens = meta.end_pos > func.end_pos
        return ast.Agg(str(func), arg, _sp(meta), _sp(func), parens, tuple(items[2:]))

    def limit(self, meta, items):
        return ast.Limit(tuple(items), _sp(meta))

    def budget(self, meta, items):
        name, value = items[0], items[1]
        per = items[2] if len(items) > 2 else None
        return ast.Budget(
            str(name), _num(value), str(per) if per else None, _sp(meta), _sp(name), _sp(per) if per else None
        )

    def or_expr(self, meta, items):
        return ast.Or(tuple(items), _sp(meta))

    def and_expr(self, meta, items):
        return ast.And(tuple(items), _sp(meta))

    def not_(self, meta, items):
        return ast.Not(items[0], _sp(meta))

    def comparison(self, meta, items):
        left, op, right = items
        return ast.Compare(str(op), left, right, _sp(meta))

    def field(self, meta, items):
        return ast.FieldRef(str(items[0]), str(items[1]) if len(items) > 1 else None, _sp(meta))

    def arrow(self, meta, items):
        return ast.FieldRef(str(items[0]), str(items[1]), _sp(meta), via="->")

    def deref(self, meta, items):
        return ast.FieldRef(str(items[0]), None, _sp(meta), star=True)

    def arith(self, meta, items):
        left, op, right = items
        return ast.Arith(str(op), left, right, _sp(meta))

    def number(self, meta, items):
        return _num(items[0])

    def negative(self, meta, items):
        return _num(items[0], True, _sp(meta))

    def string(self, meta, items):
        raw = str(items[0])[1:-1]
        value = re.sub(r"\\(.)", r"\1", raw)
        return ast.String(value, _sp(items[0]))


def _expected_words(expected) -> str:
    names = sorted({_WORDS.get(e, None) or f"'{e.lower()}'" for e in expected})
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1] if names else "something else"


def _token_span(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + max(1, len(tok)))


def _syntax_error(e: UnexpectedInput, source: Source) -> Diagnostic:
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        exp = e.expected
        words = [w for w in source.text.split() if w in ("probe", *CLAUSE_WORDS)]
        hint = _hint_for(exp, None, bool(words) and words[-1] == "where")
        return Diagnostic(source.end_span(), f"the spec ends too early: expected {_expected_words(exp)}", hint)
    if isinstance(e, UnexpectedCharacters):
        ch = source.text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(source.text) else "?"
        span = Span(e.line, e.column, e.line, e.column + 1)
        allowed = e.allowed or set()
        if "TARGET" in allowed:
            return Diagnostic(
                span,
                "expected a target LIBRARY:SYMBOL",
                "write the library, a colon and the symbol with no spaces: libcudart:cudaMalloc",
            )
        if ch == "'":
            return Diagnostic(span, "strings are written in double quotes", 'write "text"')
        return Diagnostic(
            span, f"unexpected character {ch!r}: expected {_expected_words(allowed)}", _hint_for(allowed, ch)
        )
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    span = _token_span(tok)
    exp = set(e.expected)
    word = str(tok)
    before = source.text[: tok.start_pos].split()
    prev = before[-1] if before else ""
    if prev == "probe" and "NAME" in exp:
        return Diagnostic(span, f"expected a probe name, found {word!r}", "probe NAME = LIBRARY:SYMBOL")
    words = [w for w in before if w in ("probe", *CLAUSE_WORDS)]
    in_where = bool(words) and words[-1] == "where"
    if tok.type == "NAME" and "PROBE" in exp and not in_where and word not in CLAUSE_WORDS:
        from ingero.errors import suggestion

        hint = suggestion(word, [*CLAUSE_WORDS, "probe", "pid"]) or (
            "a probe continues with where, record, aggregate or limit; a new one starts with 'probe'"
        )
        return Diagnostic(
            span, f"unexpected {word!r}: expected a clause (where, record, aggregate, limit) or a new probe", hint
        )
    if "CMP" in exp and tok.type != "CMP":
        return Diagnostic(
            span,
            f"expected a comparison (==, !=, <, <=, >, >=) after {prev!r}, found {word!r}",
            "a condition compares a field with a value: count >= 1MiB",
        )
    if exp == {"EQUAL"}:
        return Diagnostic(span, f"expected '=' after the probe name, found {word!r}", "probe NAME = LIBRARY:SYMBOL")
    if "TARGET" in exp:
        return Diagnostic(
            span,
            f"expected a target LIBRARY:SYMBOL, found {word!r}",
            "write the library, a colon and the symbol with no spaces: libcudart:cudaMalloc",
        )
    if tok.type == "NAME" and "PROBE" in exp and word not in CLAUSE_WORDS:
        from ingero.errors import suggestion

        hint = suggestion(word, [*CLAUSE_WORDS, "probe", "pid"]) or (
            "a probe continues with where, record, aggregate or limit; a new one starts with 'probe'"
        )
        return Diagnostic(
            span, f"unexpected {word!r}: expected a clause (where, record, aggregate, limit) or a new probe", hint
        )
    found = "a comparison" if tok.type == "CMP" else repr(word)
    return Diagnostic(span, f"unexpected {found}: expected {_expected_words(exp)}", _hint_for(exp, word, in_where))


def _hint_for(expected, found, in_where: bool = True) -> str | None:
    exp = set(expected or ())
    if "CMP" in exp:
        return "a condition compares a field with a value: count >= 1MiB"
    if exp == {"NAME"} or exp == {"NAME", "RPAR"} or ("NAME" in exp and not in_where):
        return "a field name such as count, latency or arg2"
    if "NUMBER" in exp and "STRING" in exp:
        return 'compare with a number (1MiB, 5ms, 0x10), an enum value name or a "string"'
    if "NUMBER" in exp:
        return "budgets are written: limit ttl 60s, events 1000, rate 100/s, symbols 500"
    return None


#: how deep conditions and arithmetic may nest (each level is a level of parentheses in the generated C)
MAX_NESTING = 32
#: how many comparisons and operators one probe may hold (each is code the kernel's verifier walks)
MAX_EXPR_NODES = 256


def _too_deep(tree: Tree) -> Diagnostic | None:
    """A located error for a probe whose expressions nest deeper than MAX_NESTING or hold more than
    MAX_EXPR_NODES operators, found without recursion (the AST is built recursively after this)."""
    nested = {"or_expr", "and_expr", "not_", "comparison", "arith"}
    for probe in tree.children:
        count = 0
        stack = [(probe, 0)]
        while stack:
            node, depth = stack.pop()
            if not isinstance(node, Tree):
                continue
            if node.data in nested:
                depth += 1
                count += 1
                span = Span.of(node.meta) if not node.meta.empty else Span(1, 1, 1, 2)
                if depth > MAX_NESTING:
                    return Diagnostic(span, f"this nests more than {MAX_NESTING} deep",
                                      "write the condition flatter: a and b and c, not (a and (b and c))")
                if count > MAX_EXPR_NODES:
                    return Diagnostic(span, f"probe has more than {MAX_EXPR_NODES} comparisons and operators",
                                      "split it into several probes")
            stack.extend((c, depth) for c in node.children)
    return None


def parse(text: str, name: str = "<spec>") -> ast.Spec:
    """Parse a spec; raises :class:`SpecError` with one located diagnostic on a syntax error."""
    source = Source(text, name)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise SpecError([_syntax_error(e, source)], source) from None
    too_deep = _too_deep(tree)
    if too_deep is not None:
        raise SpecError([too_deep], source)
    spec = _ToAst().transform(tree)
    if not spec.probes:
        raise SpecError(
            [Diagnostic(Span(1, 1, 1, 2), "the spec has no probe", "start one with: probe NAME = LIBRARY:SYMBOL")],
            source,
        )
    return spec
