"""CallTracer on the real CUDA runtime: every call of the workload's plan, with its arguments."""

from __future__ import annotations

from collections import Counter

import pytest

from ingero import workload
from ingero.runtime.calltrace import CallTracer
from ingero.symbols import read_symbols
from tests.helpers import Workload

pytestmark = pytest.mark.bpf

PLAN_FUNCS = sorted({c.name for c in workload.PLAN})


def test_the_record_layout_is_the_compilers(need_bpf):
    """The one description of the record gives the C struct and the decoder; clang, compiling the real
    program, agrees with the decoder's size and every offset (static assertions it would refuse), and does
    refuse a program whose decoder reads one field elsewhere."""
    import ctypes

    from bcc import BPF

    from ingero.abi import INT_REGS
    from ingero.compiler.record import CALL_RECORD
    from ingero.runtime.calltrace import program_text

    rec = CALL_RECORD.ctype
    assert ctypes.sizeof(rec) == 8 * 2 + 4 * 4 + 8 + 8 * len(INT_REGS) == 88
    assert [(f.name, getattr(rec, f.name).offset) for f in CALL_RECORD.fields] == [
        ("ts_ns", 0), ("latency_ns", 8), ("pid", 16), ("tid", 20), ("cookie", 24), ("flags", 28), ("retval", 32),
        ("args", 40)]
    text = program_text()
    assert text.count("_Static_assert") == len(CALL_RECORD.fields) + 1
    BPF(text=text, cflags=["-DRINGBUF_PAGES=8"]).cleanup()    # compiles (and loads its maps) as CallTracer does
    wrong = text.replace("ingero_call, retval) == 32", "ingero_call, retval) == 36")
    assert wrong != text
    with pytest.raises(Exception, match="Failed to compile BPF module"):
        BPF(text=wrong, cflags=["-DRINGBUF_PAGES=8"])


def test_every_call_of_the_plan(need_bpf, cudart12):
    table = read_symbols(cudart12)
    syms = [(name, table.get(name).file_offset) for name in PLAN_FUNCS]
    repeat = 3
    with Workload("--repeat", str(repeat)) as w, CallTracer(str(cudart12), syms, pid=w.pid) as tracer:
        w.expect("waiting calls")
        w.go()
        w.finish()
        calls = []
        for _ in range(5):
            calls += tracer.poll(50)
        assert tracer.lost() == 0
    assert all(link.closed for link in tracer.links)

    assert Counter(c.symbol for c in calls) == workload.expected_counts(repeat)
    assert {c.retval32 for c in calls} == {workload.cudaErrorInsufficientDriver}
    assert all(c.pid == w.pid and c.latency_ns > 0 for c in calls)
    by = {name: [c for c in calls if c.symbol == name] for name in PLAN_FUNCS}
    assert [c.args[1] for c in by["cudaMalloc"]] == list(workload.MALLOC_SIZES) * repeat
    memcpy = [(c.args[2], c.args[3]) for c in by["cudaMemcpy"]]
    assert memcpy == [(a.args["count"], a.args["kind"]) for a in workload.PLAN if a.name == "cudaMemcpy"] * repeat
    assert {c.args[4] for c in by["cudaMemcpyAsync"]} == {workload.STREAM}
    assert {c.args[0] for c in by["cudaStreamSynchronize"]} == {workload.STREAM}
    launch = by["cudaLaunchKernel"][0]
    # dim3 is a 12-byte struct passed in two registers: grid in rsi:rdx, block in rcx:r8
    gx, gy, gz = workload.GRID
    bx, by_, bz = workload.BLOCK
    assert launch.args[0] == workload.KERNEL_FUNC
    assert launch.args[1] == gx | gy << 32 and launch.args[2] & 0xFFFFFFFF == gz
    assert launch.args[3] == bx | by_ << 32 and launch.args[4] & 0xFFFFFFFF == bz
    # calls of one thread come out in order
    ts = [c.ts_ns for c in sorted(calls, key=lambda c: c.ts_ns)]
    assert ts == sorted(ts)


def test_attach_to_a_deleted_mapped_library_by_pid(need_bpf, cudart12, tmp_path):
    """The library file was deleted after the process loaded it: attach through /proc/PID/map_files."""
    import shutil

    from ingero.symbols import resolve_library

    copy = tmp_path / "libcudart.so.12"
    shutil.copy(cudart12, copy)
    with Workload("--lib", str(copy)) as w:
        w.expect("waiting calls")
        copy.unlink()
        lib = resolve_library("libcudart", pid=w.pid)
        assert lib.deleted and "/map_files/" in str(lib.attach_path)
        off = read_symbols(lib).get("cudaMalloc").file_offset
        with CallTracer(str(lib.attach_path), [("cudaMalloc", off)], pid=w.pid) as tracer:
            w.go()
            w.finish()
            calls = tracer.poll(100)
    assert [c.args[1] for c in calls] == list(workload.MALLOC_SIZES)
