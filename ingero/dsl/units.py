"""Number literals as written (``1MiB``, ``0x5EED0000``, ``120s``) -> a value in base units."""

from __future__ import annotations

from ingero.dsl import ast
from ingero.dsl.context import Report
from ingero.errors import suggestion

SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "min": 60_000_000_000}


def number(n: ast.Number, report: Report) -> tuple[int, str] | None:
    """(value in bytes or ns or plain, unit) of a literal; reports unknown units, fractions, overflow."""
    unit = n.unit
    if n.digits.lower().startswith("0x"):
        base = int(n.digits, 16)
        if unit:
            report.error(n.span, f"a hex number takes no unit: {n.text!r}")
            return None
        if base >= 1 << 64:
            report.error(n.span, f"{n.text!r} does not fit in 64 bits", "the largest value is 0xffffffffffffffff")
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
            near = suggestion(unit, units)
            report.error(
                n.span,
                f"unknown unit {unit!r} in {n.text!r}",
                (near + " " if near else "") + f"(units: {', '.join(units)})",
            )
            return None
    if "." in n.digits:
        whole = float(n.digits) * scale
        if whole != int(whole):
            what = "bytes" if unit in SIZE_UNITS else "ns" if unit else ""
            report.error(
                n.span,
                f"{n.text!r} is not a whole number" + (f" of {what}" if what else ""),
                "fields hold whole numbers: 1536, or 1.5KiB",
            )
            return None
        value = int(whole)
    else:
        value = int(n.digits) * scale
    if value >= 1 << 64:
        report.error(n.span, f"{n.text!r} does not fit in 64 bits", "the largest value is 18446744073709551615")
        return None
    return (-value if n.negative else value), unit
