"""Text for probe results: values as an engineer reads them, bpftrace-style histograms."""

from __future__ import annotations

from ingero.dsl.resolved import ResolvedProbe


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
    if isinstance(value, tuple):
        return " <- ".join(value) if value else "[]"
    if isinstance(value, str):
        return value if v.kind in ("symbol",) else repr(value)
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
