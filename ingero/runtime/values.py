"""What a probe session hands back: events, aggregate rows, bindings, counts, and values read through
pointers (with :class:`ReadMiss` for a read that failed, never a made-up number)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingero.compiler.record import STR_NULL


@dataclass(frozen=True)
class ProbeEvent:
    """One recorded call. ``fields`` holds the recorded values by the spec's names (ints for numbers,
    enums and pointers; str for strings; a tuple of frame strings for ``stack``); ``names`` the
    demangled symbol of a host function pointer (cudaLaunchKernel's ``func``) when the process has one."""

    probe: str
    symbol: str
    pid: int
    tid: int
    ts_ns: int
    latency_ns: int | None  # None: the probe has no return (entry only), so no latency
    fields: dict[str, object]
    names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregateRow:
    """One group of an in-kernel aggregation: its key values, the call count, sum/min/max by
    ``func(field)`` and log2 histograms (65 buckets: 0, then [2^(k-1), 2^k))."""

    key: dict[str, object]
    count: int
    values: dict[str, int]
    hists: dict[str, list[int]]
    names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Binding:
    """A probe attached to one more file a traced process maps (``pid``: the one seen mapping it).
    ``symbols``: how many of the probe's functions that copy has; ``missing``: the ones it lacks;
    ``addresses``: how many addresses they are at (more than ``symbols`` when a name is defined at
    several)."""

    probe: str
    path: str
    pid: int | None
    symbols: int
    missing: tuple[str, ...]
    addresses: int = 0


@dataclass(frozen=True)
class ProbeStats:
    hits: int
    filtered: int
    rate_dropped: int
    matched: int
    budget_dropped: int
    lost: int
    agg_overflow: int
    inflight_full: int
    unpaired: int
    read_failed: int


@dataclass(frozen=True)
class ReadMiss:
    """A value read through a pointer that faulted (``errno`` from the kernel's helper): shown as a miss,
    never as a number or an empty string."""

    errno: int

    def __str__(self) -> str:
        return f"<unreadable: {self.errno}>"


def avg_int(total: int, n: int) -> int | None:
    """avg as an integer, rounded toward zero (as C and bpftrace divide); None with no value."""
    if not n:
        return None
    q = abs(total) // n
    return -q if total < 0 else q


def read_value(v, raw, status: int, session=None, pid=None, names=None):
    """A value read through a pointer, from its raw value and read status: None for NULL, a
    :class:`ReadMiss` for a failed read, else the value (decoded as its kind)."""
    if v.kind == "string":
        return string_value(raw, status)
    if status == STR_NULL:
        return None
    if status <= 0:
        return ReadMiss(-status if status < 0 else 0)
    return int(raw)


def cstr(raw) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


def string_value(raw: bytes, status: int) -> str | None | ReadMiss:
    """A string read in the kernel, from its bytes and read status: None for a NULL pointer."""
    if status == STR_NULL:
        return None
    if status < 0:
        return ReadMiss(-status)
    return cstr(raw)
