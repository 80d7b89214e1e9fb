"""What the writer takes and how upstream's schema encodes it: typed records (events, probes, stacks,
aggregates, snapshots, the session), stack hashes (FNV-1a, as upstream) and Go-style compact JSON."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ingero.errors import IngeroError

#: 2**64, and the largest int64: a u64 is stored as the int64 of the same bits (as upstream's Go does)
U64 = 1 << 64
I64_MAX = (1 << 63) - 1


class StoreError(IngeroError):
    """The trace database cannot be created or written (path, permissions, disk full, foreign file)."""


# --- values crossing into the writer ------------------------------------------------------------------
class Event(NamedTuple):
    """One ``events`` row. ``timestamp`` is CLOCK_MONOTONIC ns unless the batch is given ``epoch=True``.

    A plain tuple with the first 13 fields in this order is accepted too (the fastest form); a probe
    event carries its recorded fields in ``values`` (a 14th element).
    """

    timestamp: int
    pid: int
    tid: int
    source: int
    op: int
    duration: int = 0
    gpu_id: int = 0
    arg0: int = 0
    arg1: int = 0
    ret_code: int = 0
    stack_hash: int = 0
    comm: str = ""
    cgroup_id: int = 0
    values: tuple | None = None


EVENT_COLUMNS = ("id", "timestamp", "pid", "tid", "source", "op", "duration", "gpu_id", "arg0", "arg1",
                 "ret_code", "stack_hash", "comm", "cgroup_id")


@dataclass(frozen=True)
class RowLayout:
    """Standard events given as fixed-layout binary records (:meth:`EventWriter.add_records
    <ingero.store.writer.EventWriter.add_records>`). ``record``: the :mod:`struct` format of one record (byte
    order first), which decodes it to items; ``values``: for each column of ``EVENT_COLUMNS`` after ``id``, in
    that order, the SQL expression that fills it from the items, ``{0}``, ``{1}``..., or a constant.
    ``timestamp`` is kernel monotonic ns (the writer adds its clock's offset).
    Made of the program's own text, never of input."""

    record: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(EVENT_COLUMNS) - 1:
            raise ValueError(f"a row layout fills {len(EVENT_COLUMNS) - 1} columns, not {len(self.values)}")
        if self.record[:1] not in "<>=!":
            raise ValueError(f"{self.record}: a record format starts with its byte order")

    @property
    def items(self) -> int:
        """How many items one record decodes to."""
        rec = struct.Struct(self.record)
        return len(rec.unpack(bytes(rec.size)))

    def insert(self, k: int, id_prefix: str, node: str, offset_ns: int) -> tuple[str, struct.Struct]:
        """The INSERT of ``k`` events (parameters: the first one's sequence number, then each record's items)
        and the decoder of ``k`` records into those items, one flat tuple. ``id_prefix`` and ``node`` are SQL
        literals; ``offset_ns`` is added to the timestamp."""
        m = self.items
        ts, *rest = self.values
        values = (f"({ts}) + {int(offset_ns)}", *rest)
        rows = []
        for r in range(k):
            cols = ", ".join(v.format(*(f"?{2 + r * m + i}" for i in range(m))) for v in values)
            rows.append(f"({id_prefix} || (?1 + {r}), {cols}, {node})")
        # OR FAIL: a multi-row INSERT that may abort midway keeps a statement journal (a temporary file:
        # ~8x the writes of the batch); one that fails keeps its earlier rows instead, and the writer rolls
        # the whole batch back
        return (f"INSERT OR FAIL INTO events ({', '.join(EVENT_COLUMNS)}, node) VALUES {', '.join(rows)}",
                struct.Struct(self.record[0] + self.record[1:] * k))


@dataclass(frozen=True)
class ProbeField:
    name: str
    type: str = "u64"


@dataclass(frozen=True)
class ProbeInfo:
    """A dynamic probe as the runtime attached it: ``fields`` are what its events carry in ``values``."""

    name: str
    spec: str = ""
    fields: tuple[ProbeField, ...] = ()
    library: str = ""
    symbols: tuple[str, ...] = ()
    description: str = ""
    #: the probe reads the return (latency, retval): an entry-only probe's view shows both as NULL, not 0
    at_return: bool = True


@dataclass(frozen=True)
class ProbeHandle:
    probe_id: int
    name: str
    source: int
    op: int
    fields: tuple[str, ...]
    view: str


@dataclass(frozen=True)
class SystemSnapshot:
    timestamp: int            # Unix epoch ns
    cpu_pct: float
    mem_pct: float
    mem_avail_mb: int
    swap_mb: int
    load_avg: float


@dataclass(frozen=True)
class Aggregate:
    """An ``event_aggregates`` bucket (minute-truncated epoch ns); added to what the bucket already holds."""

    bucket: int
    source: int
    op: int
    pid: int = 0
    count: int = 0
    stored: int = 0
    sum_dur: int = 0
    min_dur: int = 0
    max_dur: int = 0
    sum_arg0: int = 0


@dataclass(frozen=True)
class Frame:
    """A stack frame: ``file`` is the full path (hashed as upstream); the stored JSON keeps its basename."""

    ip: int = 0
    symbol: str = ""
    file: str = ""
    line: int = 0
    py_file: str = ""
    py_func: str = ""
    py_line: int = 0

    @property
    def resolved(self) -> bool:
        return bool(self.symbol or self.file or self.py_file or self.py_func)


@dataclass(frozen=True)
class SessionInfo:
    """The ``sessions`` row of one trace run (host facts come from :meth:`collect`)."""

    command: str = ""
    pid_filter: str = ""
    flags: str = ""
    gpu_model: str = ""
    gpu_driver: str = ""
    cpu_model: str = ""
    cpu_cores: int = 0
    mem_total_mb: int = 0
    kernel: str = ""
    os_release: str = ""
    cuda_ver: str = ""
    python_ver: str = ""
    ingero_ver: str = ""
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None


class ChainLike(Protocol):
    """What :meth:`EventWriter.record_chains` reads (``ingero.analysis.chains.CausalChain`` fits)."""

    id: str
    severity: str
    summary: str
    root_cause: str
    explanation: str
    recommendations: tuple[str, ...]
    timeline: tuple[Any, ...]
    tail_ratio: float  # p99 / p50 of the chain's op (0 for a chain about no op's tail)


@dataclass(frozen=True)
class WriterStats:
    events: int              # events committed by this writer
    probe_events: int        # of which probe events (with probe_values rows)
    batches: int
    lost: int                # lost events reported to this writer
    pruned_events: int       # events deleted by the size cap
    prunes: int
    db_bytes: int            # database + -wal on disk now


# --- stacks --------------------------------------------------------------------------------------------
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_M64 = U64 - 1


def _fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return h


def _signed(h: int) -> int:
    return h - U64 if h > I64_MAX else h


def stack_hash_ips(ips: Sequence[int]) -> int:
    """Upstream's ``HashStackIPs`` as stored: FNV-1a-64 over little-endian u64 IPs, as a signed int64."""
    return _signed(_fnv1a64(b"".join((ip & _M64).to_bytes(8, "little") for ip in ips)))


def stack_hash_frames(frames: Sequence[Frame]) -> int:
    """Upstream's ``HashStackSymbols`` (ASLR-independent): symbol, file, Python file/function/line."""
    parts = []
    for f in frames:
        parts.append(b"\0".join(s.encode() for s in (f.symbol, f.file, f.py_file, f.py_func)) + b"\0")
        parts.append((f.py_line & 0xFFFFFFFF).to_bytes(4, "little"))
    return _signed(_fnv1a64(b"".join(parts)))


def go_json(obj: object, indent: bool = False) -> str:
    """JSON as Go's ``encoding/json`` writes it: no spaces, ``<>&`` escaped, ``5.0`` as ``5``."""
    text = json.dumps(_go_values(obj), ensure_ascii=False, separators=(",", ":") if not indent else None,
                      indent=2 if indent else None)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _go_values(v: object) -> object:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, dict):
        return {k: _go_values(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_go_values(x) for x in v]
    return v


def frames_json(frames: Sequence[Frame]) -> str:
    """``stack_traces.frames`` as upstream writes it: garbage frames dropped, ``i`` only without a symbol."""
    out = []
    for f in frames:
        if not f.resolved:
            continue
        d: dict[str, Any] = {}
        if f.symbol:
            d["s"] = f.symbol
        elif f.ip or not (f.py_file or f.py_func):  # a Python frame has no address (upstream's shape)
            d["i"] = f"0x{f.ip:x}"
        if f.file:
            d["f"] = os.path.basename(f.file)
        if f.line:
            d["l"] = f.line
        if f.py_file:
            d["pf"] = f.py_file
        if f.py_func:
            d["pfn"] = f.py_func
        if f.py_line:
            d["pl"] = f.py_line
        out.append(d)
    return go_json(out) if out else ""


#: The columns every probe view has (from its events row); a recorded field of the same name is
#: ``field_NAME`` in the view (:func:`view_columns`).
VIEW_BASE = ("event_id", "timestamp", "pid", "tid", "comm", "latency", "retval", "stack_hash")


def view_columns(fields: Sequence[str]) -> tuple[str, ...]:
    """The view column of each recorded field, in order."""
    used = set(VIEW_BASE)
    out = []
    for name in fields:
        col = name if name not in used else f"field_{name}"
        used.add(col)
        out.append(col)
    return tuple(out)
