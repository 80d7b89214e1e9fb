"""A probe's ``limit`` clause -> typed :class:`Budgets`, within the hard limits of :mod:`ingero.limits`."""

from __future__ import annotations

from ingero.dsl import ast
from ingero.dsl.context import Report
from ingero.dsl.resolved import Budgets
from ingero.dsl.units import TIME_UNITS, number
from ingero.limits import MAX_SYMBOLS

BUDGET_NAMES = ("ttl", "events", "rate", "symbols")


def budgets(limit: ast.Limit | None, report: Report) -> Budgets:
    """The budgets of a limit clause (defaults for the rest); every mistake reported."""
    ttl_s: float | None = None
    events: int | None = None
    rate: int | None = None
    symbols: int | None = None
    given: set[str] = set()
    for b in limit.budgets if limit else ():
        if b.name not in BUDGET_NAMES:
            report.unknown(b.name_span, "budget", b.name, BUDGET_NAMES)
            continue
        if b.name in given:
            report.error(b.span, f"budget {b.name!r} given twice", "keep one of them")
            continue
        given.add(b.name)
        num = number(b.value, report)
        if num is None:
            continue
        value, unit = num
        if b.name == "ttl":
            if unit not in TIME_UNITS:
                report.error(
                    b.value.span,
                    f"ttl needs a time unit, not {b.value.text!r}",
                    "write it like ttl 120s (units: " + ", ".join(TIME_UNITS) + ")",
                )
                continue
            if value <= 0:
                report.error(b.value.span, "ttl must be positive")
                continue
            ttl_s = value / 1e9
        else:
            if unit:
                report.error(
                    b.value.span, f"{b.name} is a count: write it without a unit", f"{b.name} {b.value.digits}"
                )
                continue
            if value <= 0:
                report.error(b.value.span, f"{b.name} must be at least 1")
                continue
            if b.name == "rate":
                if b.per not in (None, "s"):
                    report.error(
                        b.per_span or b.span, f"rate is per second, not per {b.per!r}", "write it like rate 1000/s"
                    )
                    continue
                rate = value
            elif b.name == "events":
                events = value
            else:
                if value > MAX_SYMBOLS:
                    report.error(b.value.span, f"symbols {value} is above the hard limit of {MAX_SYMBOLS}")
                    continue
                symbols = value
        if b.per is not None and b.name != "rate":
            report.error(b.per_span or b.span, "only rate takes a '/s'")
    out = Budgets(ttl_s=ttl_s, events=events, rate=rate)
    return out if symbols is None else Budgets(ttl_s=ttl_s, events=events, rate=rate, symbols=symbols)
