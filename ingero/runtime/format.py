"""Text for probe results: values as an engineer reads them, bpftrace-style histograms."""

from __future__ import annotations

from ingero.dsl.resolved import ResolvedProbe

#: how a field a probe does not have prints (an entry-only probe has no latency or retval): never 0
ABSENT = "\u2014"


def human_size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def human_ns(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.3g}s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.3g}ms"
    if ns >= 1_000:
        return f"{ns / 1e3:.3g}us"
    return f"{ns}ns"


def value_text(probe: ResolvedProbe, key: str, value, names: dict | None = None, enum_name=None) -> str:
    """One recorded or key value as text: enum names, hex pointers, host-stub names, times."""
    v = probe.value(key)
    if value is None:
        return "NULL" if v.kind == "string" else ABSENT
    if isinstance(value, tuple):
        return " <- ".join(value) if value else "[]"
    if isinstance(value, str):
        return value if v.kind in ("symbol",) else repr(value)
    if not isinstance(value, int):  # a read that faulted (ReadMiss)
        return str(value)
    if names and key in names:
        return f"{names[key]} ({value:#x})"
    if v.kind in ("pointer", "code"):
        return f"{value:#x}"
    if v.source == "latency":
        return human_ns(value)
    if v.kind == "enum" and v.enum and enum_name is not None:
        name = enum_name(v.enum, value)
        if name:
            return f"{name}({value})"
    return str(value)


def hist_lines(buckets: list[int], *, time: bool = False, width: int = 40) -> list[str]:
    """Log2 histogram rows in bpftrace's shape: ``[lo, hi)  count |@@@@|``; bucket 0 holds 0."""
    used = [i for i, c in enumerate(buckets) if c]
    if not used:
        return []
    top = max(buckets)
    fmt = human_ns if time else human_size
    out = []
    for i in range(used[0], used[-1] + 1):
        c = buckets[i]
        if i == 0:
            label = "0"
        else:
            lo = 1 << (i - 1)
            hi = 1 << i
            label = f"[{fmt(lo)}, {fmt(hi)})"
        bar = "@" * (round(c * width / top) if top else 0)
        out.append(f"{label:<20} {c:>8} |{bar:<{width}}|")
    return out


def row_formatter(p, enum_name=None):
    """A function from one record tuple of probe ``p`` (a :class:`~ingero.runtime.probes.ProbeSession`
    probe) to its printed line, as ``value_text`` would print its fields, built once per probe so a
    batch prints without a per-event object; None if the probe records a stack or a host function
    pointer (those need the process's symbols, event by event)."""
    from ingero.runtime.probes import string_value

    rp = p.cp.probe
    if any(rp.value(k).kind in ("stack", "pystack", "code") for k in rp.record):
        return None
    syms = [s.shown for s in rp.symbols]
    fast = _template(p, syms)
    if fast is not None:
        return fast
    parts = []
    for key in rp.record:
        v = rp.value(key)
        col = p.columns[key]
        if key == "symbol":
            parts.append((key, col, lambda x: syms[x] if 0 <= x < len(syms) else str(x)))
        elif key in p.status_columns:
            st = p.status_columns[key]
            parts.append((key, (col, st), lambda pair: _str_text(string_value(*pair))))
        elif v.kind == "comm":
            parts.append((key, col, lambda x: repr(x.split(b"\0", 1)[0].decode("utf-8", "replace"))))
        elif v.kind == "pointer":
            parts.append((key, col, lambda x: f"{x:#x}"))
        elif v.source == "latency":
            parts.append((key, col, human_ns))
        elif v.kind == "enum" and v.enum and enum_name is not None:
            parts.append((key, col, _enum_text(v.enum, enum_name)))
        else:
            parts.append((key, col, str))
    head = f"{rp.name} "

    def line(row: tuple) -> str:
        cookie = row[5]
        out = [head, syms[cookie] if 0 <= cookie < len(syms) else str(cookie), " pid=", str(row[2])]
        for key, col, conv in parts:
            raw = (row[col[0]], row[col[1]]) if isinstance(col, tuple) else row[col]
            out += (" ", key, "=", conv(raw))
        out.append("\n")
        return "".join(out)

    return line


def _template(p, syms: list[str]):
    """One ``%`` format per line when the probe has one symbol and records only plain integers and
    pointers (the common case, and the one that must keep up with a tight loop), else None."""
    import operator

    rp = p.cp.probe
    if len(syms) != 1:
        return None
    specs, cols = [], [2]  # pid
    for key in rp.record:
        v = rp.value(key)
        if key in p.status_columns or v.source in ("latency", "symbol") or v.kind not in ("int", "uint", "pointer"):
            return None
        specs.append(f"{key.replace('%', '%%')}={'%#x' if v.kind == 'pointer' else '%d'}")
        cols.append(p.columns[key])
    fmt = f"{rp.name.replace('%', '%%')} {syms[0].replace('%', '%%')} pid=%d " + " ".join(specs) + "\n"
    get = operator.itemgetter(*cols)
    return lambda row: fmt % get(row)


def _str_text(value) -> str:
    return "NULL" if value is None else repr(value) if isinstance(value, str) else str(value)


def _enum_text(enum: str, enum_name):
    def conv(x: int) -> str:
        name = enum_name(enum, x)
        return f"{name}({x})" if name else str(x)

    return conv


def lhist_lines(buckets: list[int], lo: int, hi: int, step: int, *, time: bool = False, width: int = 40) -> list[str]:
    """Linear histogram rows in bpftrace's shape: ``(..., lo)``, ``[lo, lo+step)`` ... ``[hi, ...)``."""
    used = [i for i, c in enumerate(buckets) if c]
    if not used:
        return []
    top = max(buckets)
    fmt = human_ns if time else str
    last = len(buckets) - 1
    out = []
    for i in range(used[0], used[-1] + 1):
        c = buckets[i]
        if i == 0:
            label = f"(..., {fmt(lo)})"
        elif i == last:
            label = f"[{fmt(hi)}, ...)"
        else:
            a = lo + (i - 1) * step
            label = f"[{fmt(a)}, {fmt(min(a + step, hi))})"
        bar = "@" * (round(c * width / top) if top else 0)
        out.append(f"{label:<20} {c:>8} |{bar:<{width}}|")
    return out
