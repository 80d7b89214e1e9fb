"""Probe specs with declared arguments on a small C library built here (tests/native/probe_demo.c):
more than six arguments, structs by value in registers and on the stack, a string argument and a string
return value, a double before an integer; and cudaLaunchKernel's ``func`` reported as the demangled name
of a C++ host function."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ingero.compiler import compile_spec
from ingero.dsl import check
from ingero.runtime.probes import ProbeSession
from tests.conftest import ROOT, skip_or_fail

pytestmark = pytest.mark.bpf
NATIVE = ROOT / "tests" / "native"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("gcc") is None or shutil.which("g++") is None:
        skip_or_fail("needs gcc and g++")
    d = tmp_path_factory.mktemp("clib")
    lib = d / "libprobedemo.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", lib, NATIVE / "probe_demo.c"], check=True)
    subprocess.run(
        ["gcc", "-O0", "-o", d / "driver", NATIVE / "probe_driver.c", f"-L{d}", "-lprobedemo", f"-Wl,-rpath,{d}"],
        check=True,
    )
    subprocess.run(["g++", "-O0", "-o", d / "launch_stub", NATIVE / "launch_stub.cpp", "-ldl"], check=True)
    return d


PAIR = "{i32 x, i32 y, i64 z}"


def _run(cmd: list, spec_text: str) -> tuple[list, ProbeSession, str]:
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        spec = check(spec_text, "t", pid=p.pid).resolved()
        session = ProbeSession(compile_spec(spec), pid=p.pid).start()
        try:
            p.stdin.write("go\n")
            p.stdin.flush()
            done = p.stdout.readline()
            events = session.poll(100) + session.poll(0)
            stats = {x.name: session.stats(x.name) for x in session.probes}
            if p.poll() is None:  # the launch stub waits for this before it exits
                try:
                    p.stdin.write("bye\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    pass
        finally:
            session.close()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    return events, stats, done


def test_declared_arguments_exact(need_bpf, built):
    lib = built / "libprobedemo.so"
    spec = f"""
probe many = {lib}:many(i32 a, i64 b, i16 c, u32 d, i64 e, i64 f, i64 g, i32 h) -> i64
    record a, b, c, d, e, f, g, h, retval, latency
probe pair = {lib}:take_pair(i64 a, {PAIR} p, i64 q)
    record a, p.x, p.y, p.z, q
probe late = {lib}:late_pair(i64 a, i64 b, i64 c, i64 d, i64 e, {PAIR} p, i64 z)
    record e, p.x, p.y, p.z, z
probe big = {lib}:take_big(i32 k, {{i64 a, i64 b, i64 c}} s) -> i64
    record k, s.a, s.b, s.c, retval
probe greet = {lib}:greet(str name, i32 n) -> i32
    where name == "hello, probe"
    record name, n, retval
probe dbl = {lib}:after_double(f64 d, i64 x) -> i64
    record x, retval
probe label = {lib}:label(i32 k) -> str
    where retval == "odd"
    record k, retval
"""
    events, stats, done = _run([built / "driver", "2"], spec)
    assert done.startswith("done")
    by = {}
    for e in events:
        by.setdefault(e.probe, []).append(e.fields)
    many = {
        "a": -1,
        "b": 2,
        "c": -3,
        "d": 4000000000,
        "e": 5,
        "f": 6,
        "g": 7000000007,
        "h": -8,
        "retval": -1 + 2 - 3 + 4000000000 + 5 + 6 + 7000000007 - 8,
    }
    assert [{k: v for k, v in f.items() if k != "latency"} for f in by["many"]] == [many] * 2
    assert all(f["latency"] > 0 for f in by["many"])
    assert by["pair"] == [{"a": 10, "p.x": 11, "p.y": -12, "p.z": 13000000013, "q": 14}] * 2
    assert by["late"] == [{"e": 5, "p.x": 21, "p.y": 22, "p.z": 23, "z": 24}] * 2
    assert by["big"] == [{"k": 30, "s.a": 31, "s.b": 32, "s.c": 33, "retval": 126}] * 2
    assert by["greet"] == [
        {"name": "hello, probe", "n": 0, "retval": 12},
        {"name": "hello, probe", "n": 1, "retval": 13},
    ]
    assert (stats["greet"].hits, stats["greet"].filtered) == (4, 2)
    assert by["dbl"] == [{"x": 77, "retval": 79}] * 2
    assert by["label"] == [{"k": 1, "retval": "odd"}]  # a char * return value, filtered at return


def test_launch_kernel_func_is_the_demangled_host_stub(need_bpf, built, cudart12):
    spec = """
probe launch = libcudart:cudaLaunchKernel
    record func, gridDim.x, gridDim.y, blockDim.x, sharedMem, stream, retval
"""
    events, _, done = _run([built / "launch_stub", cudart12], spec)
    assert done.strip() == "done 35"
    (e,) = events
    assert e.names == {"func": "demo::scale_kernel(float*, int)"}
    f = e.fields
    assert (f["gridDim.x"], f["gridDim.y"], f["blockDim.x"], f["sharedMem"]) == (4, 2, 32, 128)
    assert (f["stream"], f["retval"]) == (0x5EED0000, 35)
