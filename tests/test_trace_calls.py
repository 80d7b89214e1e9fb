"""A trace's CUDA/driver calls as raw ring records (ingero.tracer.calls): the sequence of tuples they decode to,
their names and op counts read as numpy columns, and the rows the writer binds straight from them (the thread
names mapped in SQL), each compared with the tuples the test packed itself."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingero.store import EpochClock, EventWriter, SessionInfo, StoreError
from ingero.tracer.calls import (
    CALL_ROW,
    CALL_ROW_ONE_NAME,
    CALL_ROW_STACKS,
    CALL_ROW_STACKS_ONE_NAME,
    CUDA_FIELDS,
    CUDA_RECORD,
    MAX_LAID_NAMES,
    CallRecords,
    call_layout,
)
from tests.helpers import db_rows

COMMS = [b"python", b"pt_main_thread", b"a'quote", b"\xff\xfebad utf8", b"x" * 15, b""]

call = st.tuples(
    st.integers(0, 1 << 62), st.integers(0, 1 << 40), st.sampled_from([11, 12, 4_000_000]), st.integers(0, 1 << 31),
    st.sampled_from([1, 4]), st.integers(0, 255), st.integers(-(1 << 31), (1 << 31) - 1),
    st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-1, 1000),
    st.integers(0, 1 << 64 - 1), st.sampled_from(COMMS))


def _pack(calls) -> CallRecords:
    return CallRecords(b"".join(CUDA_RECORD.pack(*c) for c in calls))


def _padded(t: tuple) -> tuple:
    return (*t[:11], t[11].ljust(16, b"\0"))


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


@settings(max_examples=60, deadline=None)
@given(st.lists(call, max_size=40))
def test_records_read_as_the_calls_they_hold(calls):
    recs = _pack(calls)
    assert len(recs) == len(calls)
    assert list(recs) == [_padded(c) for c in calls]
    assert [recs[i] for i in range(-len(calls), len(calls))] == [_padded(c) for c in calls * 2]
    # the distinct (pid, comm) pairs in the order they first occur; (source, op) counts
    assert recs.names() == list(dict.fromkeys((c[2], c[11].ljust(16, b"\0")) for c in calls))
    assert Counter({(s, o): n for s, o, n in recs.op_counts()}) == Counter((c[4], c[5]) for c in calls)
    assert Counter({(p, s, y): n for p, s, y, n in recs.stacks()}) == Counter((c[2], c[9], c[10]) for c in calls)


def test_a_stored_row_is_the_record_less_its_stack_fields():
    import struct

    t = (1, 2, 3, 4, 5, 6, -7, 8, 9, 10, 11, b"name")
    assert len(t) == len(CUDA_FIELDS)
    buf = CUDA_RECORD.pack(*t)
    one, two, three = struct.Struct(CALL_ROW_ONE_NAME), struct.Struct(CALL_ROW), struct.Struct(CALL_ROW_STACKS)
    assert one.size == two.size == three.size == CUDA_RECORD.size
    assert one.unpack(buf) == t[:9]
    assert two.unpack(buf) == (*t[:9], *struct.unpack("<qq", t[11].ljust(16, b"\0")))
    with_py = CUDA_RECORD.pack(*t[:10], (1 << 64) - 2, t[11])
    assert three.unpack(with_py) == (*t[:10], -2, *struct.unpack("<qq", t[11].ljust(16, b"\0")))
    assert struct.unpack(CALL_ROW_STACKS_ONE_NAME, with_py) == (*t[:10], -2)


def _stored(db) -> list[tuple]:
    return db_rows(db, "SELECT id, timestamp, pid, tid, source, op, duration, gpu_id, arg0, arg1, ret_code, "
                       "stack_hash, comm, cgroup_id, node FROM events ORDER BY rowid")


@settings(max_examples=60, deadline=None)
@given(st.lists(call, min_size=1, max_size=16), st.integers(0, 5), st.sampled_from([1, 3, 64, 130]),
       st.booleans(), st.booleans())
def test_records_store_what_they_hold(tmp_path_factory, calls, before, times, one_name, with_stacks):
    """Rows bound straight from the records, many to an INSERT and the rest one at a time: each column equal
    to the packed call (timestamp plus the clock's offset, the name decoded as Python decodes it; one name
    or several; the stack hash given for its (pid, stack_id, py_stack), or none), numbered in order after the
    writer's earlier events."""
    db = tmp_path_factory.mktemp("laid") / "t.db"
    calls = [(*c[:11], calls[0][11]) if one_name else c for c in calls * times]
    recs = _pack(calls)
    names = {raw: _name(raw) for _, raw in recs.names()}
    stacks = {(p, s, y): (p * 7919 + s * 31 + y) % (1 << 63) - (1 << 62) for p, s, y, _ in recs.stacks()}
    layout = call_layout(names, stacks if with_stacks else None)
    with EventWriter(db, node="n1", clock=EpochClock(1_000), session=SessionInfo()) as w:
        if before:
            w.add_events([(5, 1, 1, 1, 4, 5, 0, 0, 0, 0, 0, "h", 0)] * before)
        assert w.add_records(layout, recs.raw) == before + len(calls)
        assert w.add_records(layout, b"") == before + len(calls)
    rows = _stored(db)[before:]
    assert rows == [(f"n1:{before + i + 1}", ts + 1_000, pid, tid, src, op, dur, 0, a0, a1, ret,
                     stacks[(pid, sid, py)] if with_stacks else 0, _name(c), 0, "n1")
                    for i, (ts, dur, pid, tid, src, op, ret, a0, a1, sid, py, c) in enumerate(calls)]


def test_a_name_left_out_or_a_torn_record_writes_nothing(tmp_path):
    recs = _pack([(1, 2, 3, 4, 1, 4, 0, 0, 0, -1, 0, b"a"), (1, 2, 3, 4, 1, 4, 0, 0, 0, -1, 0, b"b")] * 40)
    names = {raw: _name(raw) for _, raw in recs.names()}
    db = tmp_path / "t.db"
    with EventWriter(db, node="n1", session=SessionInfo()) as w:
        with pytest.raises(StoreError):
            w.add_records(call_layout({b"a".ljust(16, b"\0"): "a", b"c".ljust(16, b"\0"): "c"}), recs.raw)
        with pytest.raises(StoreError):  # a stack left out
            w.add_records(call_layout(names, {(3, 0, 0): 6}), recs.raw)
        with pytest.raises(StoreError, match="not whole records"):
            w.add_records(call_layout(names), recs.raw[:-8])
        assert w.add_records(call_layout(names), recs.raw) == 80
    assert [r[0] for r in _stored(db)] == [f"n1:{i}" for i in range(1, 81)]  # the failed batches took no number
    with pytest.raises(ValueError):
        call_layout({bytes([i]) * 16: str(i) for i in range(MAX_LAID_NAMES + 1)})
