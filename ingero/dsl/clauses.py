"""Pass 1: at most one where/record/aggregate/limit clause per probe, and the budgets (the symbol
budget is needed by the target pass)."""

from __future__ import annotations

from dataclasses import replace

from ingero.dsl import ast
from ingero.dsl.budgets import budgets
from ingero.dsl.context import ProbeContext, Report

_JOIN = {
    "where": "join the conditions with 'and'",
    "limit": "list every budget in one limit: limit ttl 60s, events 1000",
}


def clauses(ctx: ProbeContext, report: Report) -> ProbeContext:
    seen: dict[type, ast.Clause] = {}
    for c in ctx.probe.clauses:
        kind = type(c)
        word = kind.__name__.lower()
        if kind in seen:
            join = _JOIN.get(word, f"list every field in one {word} clause")
            report.error(
                c.span,
                f"a second {word} clause in probe {ctx.probe.name!r}",
                f"{join} (the first is on line {seen[kind].span.line})",
            )
            continue
        seen[kind] = c
    limit = seen.get(ast.Limit)
    return replace(
        ctx,
        where=_one(seen, ast.Where),
        record_clause=_one(seen, ast.Record),
        aggregate_clause=_one(seen, ast.Aggregate),
        budgets=budgets(limit if isinstance(limit, ast.Limit) else None, report),
    )


def _one(seen: dict[type, ast.Clause], kind: type):
    c = seen.get(kind)
    return c if isinstance(c, kind) else None
