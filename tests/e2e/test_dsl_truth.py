"""Ground truth for the DSL on a C library built here (tests/native/dsl_truth.c): every value a probe
gives equals what the program printed for that call. Recursion 16 deep (every return paired with its own
arguments, and its latency between the durations the program measured around it and inside it), four
threads recursing at once, string keys (NULL, "", a short string after a long one), a signed return with
and without a declared type, out-parameters through ``*p`` at return, a struct member through a pointer,
arithmetic in record, key and where, avg and lhist."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter, defaultdict

import pytest

from ingero.compiler import compile_spec
from ingero.dsl import check
from ingero.runtime.probes import ProbeSession
from tests.conftest import ROOT, skip_or_fail

pytestmark = pytest.mark.bpf
NATIVE = ROOT / "tests" / "native"
U64 = 1 << 64


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("gcc") is None:
        skip_or_fail("needs gcc")
    d = tmp_path_factory.mktemp("dsltruth")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", d / "libdsltruth.so", NATIVE / "dsl_truth.c"], check=True)
    subprocess.run(["gcc", "-O0", "-pthread", "-o", d / "driver", NATIVE / "dsl_truth_driver.c", f"-L{d}",
                    "-ldsltruth", f"-Wl,-rpath,{d}"], check=True)
    return d


def _spec(lib) -> str:
    return f"""
probe rec = {lib}:rec(i32 n, i64 tag, ptr inner) -> i64
    record n, tag, retval, latency, tid, retval - tag * 1000
probe keys = {lib}:keyed(str s) -> i32
    aggregate count, sum(retval) by s
probe strs = {lib}:keyed(str s) -> i32
    record s, retval
probe neg = {lib}:negative(i32 x) -> i32
    record x, retval
    aggregate count, avg(retval), lhist(x, 990, 994, 2), min(retval), max(retval)
probe out = {lib}:outp(i32 x, i32 *out, i64 *wide) -> i32
    record x, *out, *wide
probe mem = {lib}:member({{i32 x, i64 y, u16 tag}} *p)
    record p->y, p->tag, p->y / 1000 + 1
probe ar = {lib}:arith(i64 a, u64 b)
    where a * 2 + 1 > -4 and b >> 1 != 3
    record a, b, a * 3 - 1, b / a, (a << 4) >> 2, a / 2, -7 / a
    aggregate count, sum(a * 2) by a * a
"""


@pytest.fixture(scope="module")
def run(built):
    """(events by probe, aggregates by probe, stats by probe, the program's lines)."""
    from ingero.runtime.kernel import bpf_problem

    if bpf_problem():
        skip_or_fail(bpf_problem())
    r = check(_spec(built / "libdsltruth.so"), "truth.probe")
    assert r.ok, r.errors
    p = subprocess.Popen([built / "driver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        session = ProbeSession(compile_spec(r.resolved()), pid=p.pid).start()
        try:
            p.stdin.write("go\n")
            p.stdin.flush()
            lines = []
            while (line := p.stdout.readline().strip()) != "done":
                assert line, "the driver ended early"
                lines.append(line)
            events = defaultdict(list)
            for ev in session.poll(200) + session.poll(0) + session.poll(0):
                events[ev.probe].append(ev)
            aggs = {x.name: session.aggregates(x.name) for x in session.probes}
            stats = {x.name: session.stats(x.name) for x in session.probes}
        finally:
            session.close()
        p.stdin.write("bye\n")
        p.stdin.flush()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    return events, aggs, stats, lines


def _truth(lines, kind):
    return [dict(re.findall(r"(\w+)=('[^']*'|\S+)", line)) for line in lines if line.startswith(kind + " ")]


def test_recursion_pairs_every_return_with_its_own_entry(run):
    events, _, stats, lines = run
    tops = _truth(lines, "rec")
    assert len(tops) == 21  # one call on the main thread, then 4 threads x 5 calls at once
    evs = events["rec"]
    assert len(evs) == 21 * 16 and stats["rec"].unpaired == 0 and stats["rec"].inflight_full == 0
    by_thread = Counter(e.tid for e in evs)
    assert sorted(by_thread.values()) == [16] + [80] * 4  # several threads recursing at once
    for e in evs:  # each return carries its own arguments: rec(n, tag) returns tag * 1000 + n
        f = e.fields
        assert f["retval"] == f["tag"] * 1000 + f["n"] and f["retval - tag * 1000"] == f["n"], f
        assert f["tid"] == e.tid and f["latency"] == e.latency_ns
    # a call's latency lies between what its caller measured around it and what it measured inside it:
    # the returns of one thread come innermost first, so each run of 16 is one top-level call
    truth_by_tid = defaultdict(list)
    for t in tops:
        truth_by_tid[int(t["tid"])].append(t)
    for tid, truths in truth_by_tid.items():
        mine = [e.fields for e in evs if e.tid == tid]
        assert len(mine) == 16 * len(truths)
        for k, t in enumerate(truths):
            call = mine[16 * k:16 * (k + 1)]
            assert [f["n"] for f in call] == list(range(16)) and {f["tag"] for f in call} == {int(t["tag"])}
            lat = [f["latency"] for f in call]
            assert lat == sorted(lat), lat  # a deeper call ends inside a shallower one
            assert lat[14] <= int(t["inner_ns"]) <= lat[15] <= int(t["outer_ns"]), (lat[14:], t)
            assert int(t["ret"]) == call[15]["retval"]


def test_strings_null_empty_and_short_after_long(run):
    events, aggs, _, lines = run
    truth = [(None if t["s"] == "<NULL>" else t["s"].strip("'"), int(t["ret"])) for t in _truth(lines, "keyed")]
    assert [(e.fields["s"], e.fields["retval"]) for e in events["strs"]] == truth
    groups = {r.key["s"]: (r.count, r.values["sum(retval)"]) for r in aggs["keys"]}
    want = defaultdict(lambda: [0, 0])
    for s, ret in truth:
        want[s][0] += 1
        want[s][1] += ret
    assert groups == {s: tuple(v) for s, v in want.items()}
    assert None in groups and "" in groups  # NULL and "" are two groups, each under its own key


def test_signed_return_avg_lhist_min_max(run):
    events, aggs, _, lines = run
    truth = [(int(t["x"]), int(t["ret"])) for t in _truth(lines, "negative")]
    assert [(e.fields["x"], e.fields["retval"]) for e in events["neg"]] == truth
    (row,) = aggs["neg"]
    rets = [r for _, r in truth]
    assert row.count == len(truth)
    assert row.values == {"avg(retval)": int(sum(rets) / len(rets)), "min(retval)": min(rets),
                          "max(retval)": max(rets)}
    buckets = [0] * 4  # below 990, [990, 992), [992, 994), 994 and above
    for x, _ in truth:
        buckets[0 if x < 990 else 3 if x >= 994 else 1 + (x - 990) // 2] += 1
    assert row.hists == {"lhist(x, 990, 994, 2)": buckets}


def test_signed_return_without_a_declared_type_is_a_located_error(built):
    r = check(f"probe n = {built / 'libdsltruth.so'}:negative(i32 x)\n  record retval\n", "t")
    assert not r.ok
    (d,) = r.errors
    assert (d.line, d.column) == (2, 10) and "return type of negative is not known" in d.message
    assert "-> i32" in d.hint


def test_out_parameters_read_at_return(run):
    events, _, stats, lines = run
    got = [(e.fields["x"], e.fields["*out"], e.fields["*wide"]) for e in events["out"]]
    want = [(int(t["x"]), int(t["out"]), None if t["null_wide"] == "1" else int(t["wide"]))
            for t in _truth(lines, "outp")]
    assert got == want and stats["out"].read_failed == 0


def test_struct_member_through_a_pointer(run):
    events, _, _, lines = run
    truth = [t for t in _truth(lines, "member") if "y" in t]
    assert lines[-1] == "member null" or "member null" in lines
    got = [(e.fields["p->y"], e.fields["p->tag"], e.fields["p->y / 1000 + 1"]) for e in events["mem"]]
    want = [(int(t["y"]), int(t["tag"]), _c_div(int(t["y"]), 1000) + 1) for t in truth]
    assert got == want + [(None, None, None)]  # member(NULL): shown as NULL, never 0


def _c_div(a: int, b: int) -> int:
    return 0 if b == 0 else int(abs(a) // abs(b)) * (1 if (a < 0) == (b < 0) else -1)


def test_arithmetic_in_record_key_and_where(run):
    events, aggs, stats, lines = run
    truth = [(int(t["a"]), int(t["b"])) for t in _truth(lines, "arith")]
    kept = [(a, b) for a, b in truth if a * 2 + 1 > -4 and (b >> 1) != 3]
    assert stats["ar"].filtered == len(truth) - len(kept)
    got = [tuple(e.fields.values()) for e in events["ar"]]
    assert all(e.latency_ns is None for e in events["ar"])  # entry only: no latency (absent, not 0)
    want = [(a, b, a * 3 - 1, (b // (a % U64)) if a else 0, (a << 4) >> 2, _c_div(a, 2), _c_div(-7, a))
            for a, b in kept]  # b / a: unsigned (b is u64), as C converts
    assert got == want
    groups = {r.key["a * a"]: (r.count, r.values["sum(a * 2)"]) for r in aggs["ar"]}
    want_groups = defaultdict(lambda: [0, 0])
    for a, _ in kept:
        want_groups[a * a][0] += 1
        want_groups[a * a][1] += a * 2
    assert groups == {k: tuple(v) for k, v in want_groups.items()}


_CTYPES_CALLER = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
out = []
for _ in range(3):
    v, n = ctypes.c_int(-1), ctypes.c_int(-1)
    rv = lib.cudaRuntimeGetVersion(ctypes.byref(v))
    rn = lib.cudaGetDeviceCount(ctypes.byref(n))
    out.append(f"version={v.value} rv={rv} count={n.value} rn={rn}")
print("\n".join(out), flush=True)
print("done", flush=True)
sys.stdin.readline()
"""


def test_cuda_out_parameters_equal_what_the_ctypes_caller_saw(need_bpf, cudart12, tmp_path):
    spec = f"""
probe ver = {cudart12}:cudaRuntimeGetVersion
    record *runtimeVersion, retval
probe devs = {cudart12}:cudaGetDeviceCount
    record *count, retval
"""
    script = tmp_path / "caller.py"
    script.write_text(_CTYPES_CALLER)
    import sys

    p = subprocess.Popen([sys.executable, script, cudart12], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        r = check(spec, "cuda.probe", pid=p.pid)
        assert r.ok, r.errors
        session = ProbeSession(compile_spec(r.resolved()), pid=p.pid).start()
        try:
            p.stdin.write("go\n")
            p.stdin.flush()
            lines = []
            while (line := p.stdout.readline().strip()) != "done":
                assert line
                lines.append(line)
            events = session.poll(200) + session.poll(0)
        finally:
            session.close()
        p.stdin.write("bye\n")
        p.stdin.flush()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    truth = [dict(re.findall(r"(\w+)=(-?\d+)", line)) for line in lines]
    ver = [(e.fields["*runtimeVersion"], e.fields["retval"]) for e in events if e.probe == "ver"]
    devs = [(e.fields["*count"], e.fields["retval"]) for e in events if e.probe == "devs"]
    assert ver == [(int(t["version"]), int(t["rv"])) for t in truth]
    assert devs == [(int(t["count"]), int(t["rn"])) for t in truth]
    assert ver[0][0] >= 12000  # the runtime's version, e.g. 12090
