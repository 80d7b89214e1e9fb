"""One poll's CUDA/driver calls as their raw ring records, read in bulk with no Python object per call.

:meth:`StandardTracer.poll <ingero.tracer.standard.StandardTracer.poll>` returns the calls of a poll as
:class:`CallRecords`: the bytes of their ring records as copied out of the ring (:data:`CUDA_RECORD` each,
one after the other). It is a sequence of call tuples (:data:`CUDA_FIELDS` order), decoded only as they
are iterated; a tracer's per-batch bookkeeping reads whole columns with numpy (:meth:`CallRecords.names`,
:meth:`CallRecords.op_counts`), and the store takes the records themselves, in the layout
:func:`call_layout` gives (the thread names mapped in SQL): no list of rows, no per-call Python code, no
garbage for the cycle collector to walk.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ingero.store.records import RowLayout

#: the fields of a CUDA/driver call tuple out of :meth:`StandardTracer.poll` (``comm`` is NUL-padded bytes;
#: ``arg0``/``arg1`` are the u64 values reinterpreted as int64, as upstream stores them)
CUDA_FIELDS = ("ts_ns", "duration_ns", "pid", "tid", "source", "op", "ret", "arg0", "arg1", "stack_id", "py_stack",
               "comm")
#: ``struct cuda_event`` after the ring buffer's 8-byte record header, as CUDA_FIELDS (flags skipped)
CUDA_RECORD = struct.Struct("<8xqqIIBB2xiqqqQ16s")
#: the same record's columns read in bulk (here and ingero.fleet.metrics), as a numpy dtype spec: name ->
#: (format, offset in the record, header included); a test checks them against CUDA_RECORD
CUDA_RECORD_COLUMNS = {"duration": ("<i8", 16), "pid": ("<u4", 24), "source": ("u1", 32), "op": ("u1", 33),
                       "ret": ("<i4", 36), "stack_id": ("<i8", 56), "py_stack": ("<u8", 64), "comm": ("V16", 72)}
#: the same record as stored (ingero.store.EventWriter.add_records), three ways: decoded to CUDA_FIELDS less
#: stack_id, py_stack and comm, for a batch of one thread name and no stacks (the name a literal of the
#: layout); with the raw comm as two int64 too, which the layout maps to the names; and with stack_id and
#: py_stack (as int64) too, which the layout maps to the stored stacks, with or without the raw comm (a test
#: checks them against CUDA_RECORD)
CALL_ROW_ONE_NAME = "<8xqqIIBB2xiqq32x"
CALL_ROW = "<8xqqIIBB2xiqq16xqq"
CALL_ROW_STACKS = "<8xqqIIBB2xiqqqqqq"
CALL_ROW_STACKS_ONE_NAME = "<8xqqIIBB2xiqqqq16x"
#: where a call's items go in the ``events`` columns after ``id`` (ingero.store.records EVENT_COLUMNS[1:]:
#: timestamp, pid, tid, source, op, duration, gpu_id, arg0, arg1, ret_code, stack_hash, comm, cgroup_id)
_CALL_VALUES = ("{{0}}", "{{2}}", "{{3}}", "{{4}}", "{{5}}", "{{1}}", "0", "{{7}}", "{{8}}", "{{6}}", "{stack}",
                "{comm}", "0")
#: at most this many distinct thread names, and (pid, stack_id, py_stack) stacks, in a batch are mapped in SQL
#: (more: the caller makes its rows)
MAX_LAID_NAMES = 16
MAX_LAID_STACKS = 16


def _literal(name: str) -> str:
    """``name`` as an SQL string literal inside a RowLayout value (whose braces are format fields)."""
    return "'" + name.replace("'", "''").replace("{", "{{").replace("}", "}}") + "'"


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@functools.lru_cache(maxsize=64)
def _layout(names: tuple[tuple[bytes, str], ...], stacks: tuple[tuple[tuple[int, int, int], int], ...] | None
            ) -> RowLayout:
    comm = 9 if stacks is None else 11  # the items of the raw name, when mapped
    if len(names) == 1:
        name = _literal(names[0][1])
    else:
        name = "CASE " + " ".join("WHEN {{{}}} = {} AND {{{}}} = {} THEN {}".format(
            comm, *struct.unpack("<q", raw[:8]), comm + 1, *struct.unpack("<q", raw[8:]), _literal(n))
            for raw, n in names) + " END"
    if stacks is None:
        return RowLayout(CALL_ROW_ONE_NAME if len(names) == 1 else CALL_ROW,
                         tuple(v.format(comm=name, stack="0") for v in _CALL_VALUES))
    stack = "CASE " + " ".join(f"WHEN {{2}} = {pid} AND {{9}} = {sid} AND {{10}} = {_signed(py)} THEN {h}"
                               for (pid, sid, py), h in stacks) + " END"
    return RowLayout(CALL_ROW_STACKS_ONE_NAME if len(names) == 1 else CALL_ROW_STACKS,
                     tuple(v.format(comm=name, stack=stack) for v in _CALL_VALUES))


def call_layout(names: dict[bytes, str], stacks: dict[tuple[int, int, int], int] | None = None) -> RowLayout:
    """How a batch of calls is stored straight from its records: each call's raw ``comm`` (16 bytes) mapped to
    its name as given -- every raw name of the batch -- and with ``stacks``, each call's (pid, stack_id,
    py_stack) to its stored stack hash -- every one of the batch. A call missing from either fails the batch
    (NULL in a NOT NULL column)."""
    if not names or len(names) > MAX_LAID_NAMES:
        raise ValueError(f"1 to {MAX_LAID_NAMES} names, not {len(names)}")
    if stacks is not None and not 0 < len(stacks) <= MAX_LAID_STACKS:
        raise ValueError(f"1 to {MAX_LAID_STACKS} stacks, not {len(stacks)}")
    return _layout(tuple(sorted(names.items())), None if stacks is None else tuple(sorted(stacks.items())))


_DTYPE: list[np.dtype] = []


def record_dtype() -> np.dtype:
    """The numpy dtype of a raw CUDA ring record's columns (CUDA_RECORD_COLUMNS, and ``kind``)."""
    if not _DTYPE:
        cols = dict(CUDA_RECORD_COLUMNS)
        # source and op side by side (a test checks) read as one little-endian u2, the kind: source | op << 8
        cols["kind"] = ("<u2", cols["source"][1])
        _DTYPE.append(np.dtype({"names": list(cols), "formats": [f for f, _ in cols.values()],
                                "offsets": [o for _, o in cols.values()], "itemsize": CUDA_RECORD.size}))
    return _DTYPE[0]


@dataclass(frozen=True)
class CallRecords(Sequence):
    """Calls as their raw ring records (``raw``: CUDA_RECORD after CUDA_RECORD); a sequence of call tuples."""

    raw: bytes = b""

    def __post_init__(self) -> None:
        if len(self.raw) % CUDA_RECORD.size:
            raise ValueError(f"{len(self.raw)} bytes are not whole records of {CUDA_RECORD.size}")

    def __len__(self) -> int:
        return len(self.raw) // CUDA_RECORD.size

    def __getitem__(self, i: int) -> tuple:  # type: ignore[override]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return CUDA_RECORD.unpack_from(self.raw, (i % n) * CUDA_RECORD.size)

    def __iter__(self) -> Iterator[tuple]:
        return CUDA_RECORD.iter_unpack(self.raw)

    def columns(self) -> np.ndarray:
        """The records as a numpy structured array (no copy) of CUDA_RECORD_COLUMNS and ``kind``."""
        return np.frombuffer(self.raw, record_dtype())

    def names(self) -> list[tuple[int, bytes]]:
        """The distinct (pid, raw comm) pairs of the calls, in the order they first occur."""
        if not self.raw:
            return []
        cols = self.columns()
        pid, comm = cols["pid"], cols["comm"]
        if (pid == pid[0]).all() and (comm == comm[0]).all():
            return [(int(pid[0]), comm[0].tobytes())]
        return list(dict.fromkeys(zip(pid.tolist(), comm.tolist(), strict=True)))

    def op_counts(self) -> list[tuple[int, int, int]]:
        """(source, op, calls) for each (source, op) of the calls."""
        if not self.raw:
            return []
        kind = self.columns()["kind"]
        if (kind == kind[0]).all():
            pairs = [(int(kind[0]), len(kind))]
        else:
            kinds, counts = np.unique(kind, return_counts=True)
            pairs = list(zip(kinds.tolist(), counts.tolist(), strict=True))
        return [(k & 0xFF, k >> 8, n) for k, n in pairs]

    def stacks(self) -> list[tuple[int, int, int, int]]:
        """(pid, stack_id, py_stack, calls) for each distinct (pid, stack_id, py_stack) of the calls."""
        if not self.raw:
            return []
        cols = self.columns()
        keys = np.stack([cols["pid"].astype(np.int64), cols["stack_id"], cols["py_stack"].view(np.int64)], axis=1)
        if (keys == keys[0]).all():
            found, counts = keys[:1], np.array([len(keys)])
        else:
            found, counts = np.unique(keys, axis=0, return_counts=True)
        return [(pid, sid, py & 0xFFFFFFFFFFFFFFFF, n)
                for (pid, sid, py), n in zip(found.tolist(), counts.tolist(), strict=True)]
