"""The compiler: SysV argument placement, record layouts defined once, C that carries no user text, and
every example and every test spec compiled and LOADED in the kernel (the verifier accepts it)."""

from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

import pytest

from ingero.abi import place_arguments
from ingero.catalogue import CType, Field, load_catalogue
from ingero.compiler import compile_spec
from ingero.compiler.record import EVENT_HEADER, STATS
from ingero.dsl import check, check_file
from tests.conftest import ROOT
from tests.test_dsl import GOOD

EXAMPLES = sorted((ROOT / "examples").glob("*.probe"))


def _t(kind: str, size: int, name: str = "") -> CType:
    return CType(name or kind, kind, size, size)


def _struct(*members: tuple[str, int], name: str = "s") -> CType:
    fields, off, align = [], 0, 1
    for kind, size in members:
        off = (off + size - 1) // size * size
        fields.append(Field(f"m{len(fields)}", _t(kind, size), off))
        off += size
        align = max(align, size)
    return CType(name, "struct", (off + align - 1) // align * align, align, tuple(fields))


L8 = _t("int", 8)
D = _t("double", 8)


def test_integer_registers_then_stack():
    places = place_arguments([L8] * 8)
    assert [p.regs for p in places[:6]] == [("di",), ("si",), ("dx",), ("cx",), ("r8",), ("r9",)]
    assert [(p.where, p.offset) for p in places[6:]] == [("stack", 0), ("stack", 8)]


def test_floats_use_xmm_and_do_not_consume_integer_registers():
    places = place_arguments([D, L8, D, L8])
    assert [p.regs for p in places] == [("xmm0",), ("di",), ("xmm1",), ("si",)]


def test_small_struct_in_two_registers_else_all_on_the_stack():
    pair = _struct(("int", 4), ("int", 4), ("int", 8))
    places = place_arguments([L8, pair, L8])
    assert places[1].regs == ("si", "dx") and places[2].regs == ("cx",)
    places = place_arguments([L8] * 5 + [pair, L8])
    assert (places[5].where, places[5].offset) == ("stack", 0)
    assert places[6].regs == ("r9",)  # the later scalar still takes the register the struct could not use


def test_mixed_struct_eightbytes_and_large_structs():
    mixed = _struct(("double", 8), ("int", 8))
    assert place_arguments([mixed])[0].regs == ("xmm0", "di")
    big = _struct(("int", 8), ("int", 8), ("int", 8))
    places = place_arguments([big, L8])
    assert places[0].where == "stack" and places[1].regs == ("di",)


def test_hidden_return_pointer_shifts_the_registers():
    big = _struct(("int", 8), ("int", 8), ("int", 8))
    assert place_arguments([L8], big)[0].regs == ("si",)


def test_cuda_launch_kernel_from_the_catalogue():
    sig = load_catalogue().lookup("cudaLaunchKernel")
    places = place_arguments([p.ctype for p in sig.params], sig.return_ctype)
    assert [p.regs for p in places[:4]] == [("di",), ("si", "dx"), ("cx", "r8"), ("r9",)]
    assert [(p.where, p.offset) for p in places[4:]] == [("stack", 0), ("stack", 8)]


def test_event_header_is_defined_once_and_agrees():
    assert ct.sizeof(EVENT_HEADER.ctype) == EVENT_HEADER.size == 32
    c = EVENT_HEADER.c_struct()
    for f in EVENT_HEADER.fields:
        assert f"{f.ctype} {f.name};" in c


def test_payload_layout_and_decoder_come_from_one_definition():
    spec = check(GOOD["copies"] + GOOD["strings"]).resolved()
    compiled = compile_spec(spec)
    for cp in compiled.probes:
        assert cp.event is not None
        assert ct.sizeof(cp.event.ctype) == cp.event.size
        assert cp.event.c_struct().split("{", 1)[1].split("}")[0].strip().splitlines()[0].strip() in compiled.c_text
    assert f"INGERO_NSTATS = {len(STATS)}" in compiled.c_text


def test_user_text_never_reaches_the_c():
    text = """
        probe sneaky_name_zzq = libcudart.so.12:cudaGetErrorString
            where comm == "x\\"); system(\\"rm" or retval == "qqq*/ #include"
            record error
    """
    r = check(text, "t")
    assert r.ok, r.errors
    c = compile_spec(r.resolved()).c_text
    if os.geteuid() == 0:
        _load_all(text, "t")  # and the kernel accepts it
    body = c.split('#include "ingero_probe.h"')[1]
    for word in ("sneaky_name_zzq", "system", "qqq", "*/ #include"):
        assert word not in body, word
    assert "{120, 34, 41, 59, 32, 115" in body  # the literal arrives as bytes


def _load_all(text: str, name: str) -> None:
    from ingero.runtime.probes import ProbeSession

    r = check(text, name)
    assert r.ok, [(d.line, d.column, d.message) for d in r.errors]
    session = ProbeSession(compile_spec(r.resolved()))
    try:
        session.load()
        assert set(session._fns) == {p.program for p in session.compiled.probes}
    finally:
        session.close()


def test_there_are_enough_examples():
    assert len(EXAMPLES) >= 8


@pytest.mark.bpf
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_checks_compiles_and_loads(need_bpf, path: Path):
    r = check_file(str(path))
    assert r.ok, [(d.line, d.column, d.message) for d in r.errors]
    _load_all(path.read_text(), str(path))


@pytest.mark.bpf
@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_test_spec_compiles_and_loads(need_bpf, name):
    _load_all(GOOD[name], name)


def test_probe_run_lines_are_the_same_on_the_fast_path():
    # the one-format-per-line path of `probe run` prints what value_text prints for each field
    from ingero.runtime.format import _template, row_formatter, value_text
    from ingero.runtime.probes import HEADER_COLUMNS, _Probe

    spec = check("probe m = libcudart.so.12:cudaMalloc\n    record size, devPtr, pid, ts\n", "t").resolved()
    p = _Probe(compile_spec(spec).probes[0])
    rp = p.cp.probe
    row = [0] * (HEADER_COLUMNS + len(p.cp.event.fields))
    row[0], row[2], row[5] = 123456789, 4242, 0  # ts, pid, cookie
    row[p.columns["size"]], row[p.columns["devPtr"]] = 1 << 20, 0x7F0012345678
    row = tuple(row)
    assert _template(p, [s.name for s in rp.symbols]) is not None
    want = "m cudaMalloc pid=4242 " + " ".join(f"{k}={value_text(rp, k, row[p.columns[k]])}" for k in rp.record)
    assert row_formatter(p)(row) == want + "\n"
