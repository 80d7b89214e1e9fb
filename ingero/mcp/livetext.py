"""Text of the live probe tools (:mod:`ingero.mcp.live`): CSV tables, paging, caps, aggregates."""

from __future__ import annotations

import csv
import io
import os
import re
import time

from ingero.errors import IngeroError

MAX_OUTPUT = 48 * 1024
MAX_ROWS = 500


def _csv(header: tuple[str, ...], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().rstrip("\n")


def cap(text: str, limit: int = MAX_OUTPUT) -> str:
    """Cut ``text`` to ``limit`` bytes at a line boundary, saying so."""
    data = text.encode()
    if len(data) <= limit:
        return text
    cut = data[: limit - 200].decode("utf-8", "ignore")
    cut = cut[: cut.rfind("\n")] if "\n" in cut else cut
    return cut + f"\n... output cut at {limit} bytes: use limit/offset or a narrower pattern"


def _page(limit: int, offset: int, default: int = 100) -> tuple[int, int]:
    lim = default if limit <= 0 else min(limit, MAX_ROWS)
    return lim, max(0, offset)


def _wrap(text: str) -> str:
    """Strings from library files and processes are data, not instructions."""
    from ingero.mcp.format import sanitize

    return sanitize(text, 0)


def lib_label(lib) -> str:
    return lib.soname or os.path.basename(lib.path)


class _StoredAgg:
    def __init__(self, key: dict, count: int, values: dict, hists: dict) -> None:
        self.key, self.count, self.values, self.hists = key, count, values, hists


def _aggregates_text(aggs, lim: int, off: int) -> str:
    rows = list(reversed(aggs))  # largest first
    lines = [f"aggregates ({len(rows)} groups, largest first; rows {off + 1}-{min(len(rows), off + lim)}):"]
    for r in rows[off: off + lim]:
        key = " ".join(f"{k}={_cell(v)}" for k, v in r.key.items()) or "(all)"
        vals = " ".join(f"{k}={v}" for k, v in r.values.items())
        lines.append(f"  {key}: count={r.count}" + (f" {vals}" if vals else ""))
        for h, buckets in r.hists.items():
            parts = [f"{_bucket(i)}:{c}" for i, c in enumerate(buckets) if c]
            lines.append(f"    {h}: " + " ".join(parts))
    return _wrap("\n".join(lines))


def _bucket(i: int) -> str:
    if i == 0:
        return "[0]"
    lo, hi = 1 << (i - 1), 1 << i
    return f"[{_short(lo)},{_short(hi)})"


def _short(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _cell(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def _hms(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) if t else ""


def _names(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _prefix(name: str) -> str:
    """The leading word of a C name for grouping: cudaMemcpy2DAsync -> cudaMem, cublasSgemm -> cublasS."""
    m = re.match(r"[a-z_]*[A-Z]?[a-z]*", name)
    return (m.group(0) if m and m.group(0) else name[:6]) or name


def _sig(cat, name: str, major: int | None):
    try:
        return cat.lookup_symbol(name, major)
    except IngeroError:
        return cat.lookup_symbol(name)
