"""Pass 4: what a probe outputs: the fields of its record clause, the aggregations of its aggregate
clause and the fields it groups them by, each resolved to a :class:`Value`."""

from __future__ import annotations

from ingero.dsl import ast
from ingero.dsl.context import ProbeContext, Report, a_kind
from ingero.dsl.fields import Fields
from ingero.dsl.resolved import RAgg
from ingero.dsl.units import number

#: Every aggregation the language has (the code generator accepts exactly these).
AGG_FUNCS = ("count", "sum", "min", "max", "avg", "hist", "lhist")
#: lhist: at most this many buckets
MAX_LHIST_BUCKETS = 1000
MAX_BY = 6


def outputs(ctx: ProbeContext, report: Report) -> ProbeContext:
    fields = Fields(ctx, report)
    record = _record(ctx.record_clause, fields, report) if ctx.record_clause is not None else ()
    aggs: tuple[RAgg, ...] = ()
    by: tuple[str, ...] = ()
    if ctx.aggregate_clause is not None:
        aggs = _aggregations(ctx.aggregate_clause, fields, report)
        by = _by(ctx.aggregate_clause, fields, report)
    return fields.done(record=record, aggregates=aggs, by=by)


def _record(rec: ast.Record, fields: Fields, report: Report) -> tuple[str, ...]:
    keys: list[str] = []
    for f in rec.fields:
        v = fields.value(f, what="a field to record")
        if v is None:
            continue
        if v.key in keys:
            report.error(f.span, f"{f.text!r} is recorded twice", "list each field once")
            continue
        keys.append(v.key)
    return tuple(keys)


def _aggregations(agg: ast.Aggregate, fields: Fields, report: Report) -> tuple[RAgg, ...]:
    aggs: list[RAgg] = []
    for a in agg.aggs:
        if a.func not in AGG_FUNCS:
            report.unknown(a.func_span, "aggregation", a.func, AGG_FUNCS)
            continue
        if a.func == "count":
            if a.arg is not None:
                report.error(a.arg.span, "count takes no field", "count counts calls: aggregate count")
                continue
            aggs.append(RAgg("count", None))
            continue
        if a.arg is None:
            example = "lhist(latency, 0, 1ms, 100us)" if a.func == "lhist" else f"{a.func}(latency)"
            report.error(a.span, f"{a.func} needs a field", f"for example {example}")
            continue
        params = _lhist_params(a, report)
        if params is None:
            continue
        v = fields.value(a.arg, what="a number to aggregate")
        if v is None:
            continue
        if v.kind not in ("int", "uint") or v.source in ("pid", "tid"):
            report.error(
                a.arg.span,
                f"{a.func}() needs a number such as a size or latency; {a.arg.text} is {a_kind(v.kind)}",
                "aggregate by it instead: ... by " + a.arg.text,
            )
            continue
        if RAgg(a.func, v.key, params) in aggs:
            report.error(a.span, f"{a.func}({a.arg.text}) is listed twice", "list it once")
            continue
        aggs.append(RAgg(a.func, v.key, params))
    return tuple(aggs)


def _by(agg: ast.Aggregate, fields: Fields, report: Report) -> tuple[str, ...]:
    by: list[str] = []
    for f in agg.by:
        v = fields.value(f, what="a key to aggregate by")
        if v is None:
            continue
        if v.source in ("latency", "ts"):
            report.error(
                f.span,
                f"aggregating by {f.text} would make one group per call",
                f"use hist({f.text}) to see its distribution",
            )
            continue
        if v.key in by:
            report.error(f.span, f"{f.text!r} is listed twice after by", "list each field once")
            continue
        by.append(v.key)
    if len(by) > MAX_BY:
        report.error(agg.by[MAX_BY].span, f"at most {MAX_BY} fields after by")
    return tuple(by)


def _lhist_params(a: ast.Agg, report: Report) -> tuple[int, ...] | None:
    """lhist's (min, max, step): whole-number literals, step > 0, max > min, a bounded bucket count;
    () for every other aggregation, which takes exactly one value."""
    if a.func != "lhist":
        if a.more:
            report.error(a.more[0].span, f"{a.func} takes one value", f"{a.func}({a.arg.text})")  # type: ignore[union-attr]
            return None
        return ()
    if len(a.more) != 3 or not all(isinstance(x, ast.Number) for x in a.more):
        report.error(a.span, "lhist takes a value and three numbers: lhist(x, min, max, step)",
                     "for example lhist(latency, 0, 1ms, 100us)")
        return None
    nums = [number(x, report) for x in a.more]  # type: ignore[arg-type]
    if any(n is None for n in nums):
        return None
    lo, hi, step = (n[0] for n in nums)  # type: ignore[index]
    if step <= 0 or hi <= lo:
        report.error(a.span, f"lhist needs min < max and step > 0 (here min {lo}, max {hi}, step {step})")
        return None
    if lo <= -(1 << 63) or hi >= 1 << 63:
        report.error(a.span, "lhist bounds must fit in a signed 64-bit integer")
        return None
    n = (hi - lo + step - 1) // step + 2
    if n > MAX_LHIST_BUCKETS:
        report.error(a.span, f"lhist would have {n} buckets; at most {MAX_LHIST_BUCKETS}",
                     f"raise the step to at least {(hi - lo) // (MAX_LHIST_BUCKETS - 2) + 1}")
        return None
    return (lo, hi, step)
