"""Record layouts, each defined once here: the C struct text and the ctypes decoder both come from it.

A :class:`Layout` is a list of fields (name, C scalar type, array length). ``c_struct()`` renders the C
declaration the BPF program uses; ``ctype`` builds the matching ``ctypes.Structure`` the runtime decodes
with, and ``struct_format()`` the :mod:`struct` format. Fields are laid out so that neither side adds
padding; ``c_checks()`` states the decoder's size and offsets as C static assertions, so the compiler that
builds the program refuses it if its view of the struct differs.
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from functools import cached_property

from ingero.abi import INT_REGS

_CT = {"u64": ct.c_uint64, "s64": ct.c_int64, "u32": ct.c_uint32, "s32": ct.c_int32, "char": ct.c_char}
_SIZE = {"u64": 8, "s64": 8, "u32": 4, "s32": 4, "char": 1}


@dataclass(frozen=True)
class LayoutField:
    name: str  # C identifier, made up by the compiler (never user text)
    ctype: str  # u64, s64, u32, s32, char
    length: int = 0  # > 0: an array
    key: str = ""  # the spec's name for it (a Value key or a header field)
    role: str = ""  # "len": the read status of the string ``key`` (STR_NULL, < 0 failed, else its length)


@dataclass(frozen=True)
class Layout:
    name: str
    fields: tuple[LayoutField, ...]

    def c_struct(self) -> str:
        body = "\n".join(f"    {f.ctype} {f.name}" + (f"[{f.length}]" if f.length else "") + ";" for f in self.fields)
        return f"struct {self.name} {{\n{body}\n}};"

    @cached_property
    def ctype(self) -> type[ct.Structure]:
        fields = [(f.name, _CT[f.ctype] * f.length if f.length else _CT[f.ctype]) for f in self.fields]
        return type(self.name, (ct.Structure,), {"_fields_": fields})

    def c_checks(self) -> str:
        """C static assertions of the decoder's view (``ctype``): the struct's size and each field's offset."""
        ct_ = self.ctype
        lines = [f'_Static_assert(sizeof(struct {self.name}) == {ct.sizeof(ct_)}, "{self.name}: size");']
        lines += [f"_Static_assert(__builtin_offsetof(struct {self.name}, {f.name}) == {getattr(ct_, f.name).offset}, "
                  f'"{self.name}.{f.name}: offset");' for f in self.fields]
        return "\n".join(lines)

    def struct_format(self) -> str:
        """The layout as a :mod:`struct` format (no byte order or padding marks: add them)."""
        codes = {"u64": "Q", "s64": "q", "u32": "I", "s32": "i"}
        return "".join(f"{f.length}s" if f.ctype == "char" else f"{f.length or ''}{codes[f.ctype]}"
                       for f in self.fields)

    @property
    def size(self) -> int:
        return sum(_SIZE[f.ctype] * (f.length or 1) for f in self.fields)


#: The header of every event in the ring buffer; ``probe`` says which probe (and payload layout) follows.
EVENT_HEADER = Layout(
    "ingero_event_hdr",
    (
        LayoutField("ts_ns", "u64", key="ts"),
        LayoutField("latency_ns", "u64", key="latency"),
        LayoutField("pid", "u32", key="pid"),
        LayoutField("tid", "u32", key="tid"),
        LayoutField("probe", "u32"),
        LayoutField("cookie", "u32", key="symbol"),
    ),
)

#: The record of one traced call of :class:`~ingero.runtime.calltrace.CallTracer` (``bpf/calltrace.bpf.c``):
#: stashed at entry, emitted at return through the ring buffer.
CALL_RECORD = Layout(
    "ingero_call",
    (
        LayoutField("ts_ns", "u64"),  # bpf_ktime_get_ns() at entry (CLOCK_MONOTONIC)
        LayoutField("latency_ns", "u64"),  # return - entry
        LayoutField("pid", "u32"),  # tgid
        LayoutField("tid", "u32"),
        LayoutField("cookie", "u32"),  # the attach cookie: the index of the symbol that fired
        LayoutField("flags", "u32"),
        LayoutField("retval", "s64"),
        LayoutField("args", "u64", len(INT_REGS)),  # the integer argument registers at entry, in SysV order
    ),
)

#: Per-probe counters (a BPF array indexed by these); names as the runtime reports them.
STATS = (
    "hits",  # the probed functions were entered
    "filtered",  # a where clause said no
    "rate_dropped",  # over the rate budget: dropped in the kernel
    "matched",  # passed filter and rate: recorded and/or aggregated (the events budget counts these)
    "budget_dropped",  # matched after the events budget was spent
    "lost",  # the ring buffer was full
    "agg_overflow",  # an aggregation map was full: a new group was not added
    "inflight_full",  # too many calls in flight to stash their entry values
    "unpaired",  # a return whose entry was not stashed (the in-flight map was full at its entry)
    "read_failed",  # a read through a pointer (a string, *p, p->m) faulted: the value shows as a miss
)

#: the read status of a string whose pointer was NULL (a failed read is the helper's negative errno)
STR_NULL = -1000


def stats_enum() -> str:
    return (
        "enum ingero_stat {\n"
        + "".join(f"    INGERO_S_{s.upper()} = {i},\n" for i, s in enumerate(STATS))
        + (f"    INGERO_NSTATS = {len(STATS)}\n}};")
    )
