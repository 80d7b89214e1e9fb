"""Probe specs attached to the bundled CUDA workload (real libcudart, real uprobe_multi links): exact
filtered counts, recorded sizes, kinds and streams, cudaLaunchKernel's stack arguments, retval 35,
latency, an in-kernel histogram whose total is the number of calls, a rate limit that drops and counts,
an events budget and a ttl that detach; then ``ingero probe run`` end to end, Ctrl-C included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ingero import workload
from ingero.compiler import compile_spec
from ingero.dsl import check
from ingero.runtime.probes import ProbeSession
from tests.conftest import ROOT
from tests.helpers import Workload

REPEAT = 5

SPEC = """
probe copies = libcudart:cudaMemcpy
    where count >= 8KiB
    record count, kind, latency, retval
probe h2d = libcudart:cudaMemcpyAsync
    where kind == cudaMemcpyHostToDevice
    record count, kind, stream
probe launch = libcudart:cudaLaunchKernel
    record func, gridDim.x, gridDim.y, gridDim.z, blockDim.x, blockDim.y, blockDim.z, sharedMem, stream, retval
probe allocs = libcudart:cudaMalloc
    aggregate count, sum(size), min(size), max(size), hist(size), hist(latency) by symbol
probe frees = libcudart:cudaFree
    record pid
    limit rate 2/s
probe budget = libcudart:cudaStreamSynchronize
    record stream
    limit events 2
probe fails = libcudart:cudaDeviceSynchronize
    where retval == cudaErrorInsufficientDriver
    aggregate count by retval
probe short = libcudart:cudaGetDeviceCount
    limit ttl 300ms
"""


@pytest.fixture(scope="module")
def traced(need_bpf_module):
    with Workload("--repeat", str(REPEAT)) as w:
        w.expect("waiting calls")
        spec = check(SPEC, "cuda.probe", pid=w.pid).resolved()
        session = ProbeSession(compile_spec(spec), pid=w.pid).start()
        try:
            w.go()
            w.finish()
            events = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and "short" not in session.ended:
                events += session.poll(50)
            events += session.poll(0)
            stats = {p.name: session.stats(p.name) for p in session.probes}
            aggs = {p.name: session.aggregates(p.name) for p in session.probes}
            ended = dict(session.ended)
            t0 = time.perf_counter()
            session.detach_all()
            detach_s = time.perf_counter() - t0
            links_closed = all(link.closed for p in session.probes for link in p.links)
        finally:
            session.close()
    return {
        "events": events,
        "stats": stats,
        "aggs": aggs,
        "ended": ended,
        "detach_s": detach_s,
        "closed": links_closed,
        "spec": spec,
    }


@pytest.fixture(scope="module")
def need_bpf_module():
    from tests.conftest import skip_or_fail

    if os.geteuid() != 0:
        skip_or_fail("needs root")
    from ingero.runtime.kernel import bpf_problem

    problem = bpf_problem()
    if problem:
        skip_or_fail(problem)


def _of(traced, probe):
    return [e for e in traced["events"] if e.probe == probe]


pytestmark = pytest.mark.bpf


def test_filter_counts_and_recorded_values(traced):
    copies = _of(traced, "copies")
    assert [(e.fields["count"], e.fields["kind"]) for e in copies] == [(64 * 1024, 2)] * REPEAT
    assert {e.fields["retval"] for e in copies} == {workload.cudaErrorInsufficientDriver}
    assert all(e.fields["latency"] > 0 and e.latency_ns == e.fields["latency"] for e in copies)
    st = traced["stats"]["copies"]
    assert (st.hits, st.filtered, st.matched) == (2 * REPEAT, REPEAT, REPEAT)


def test_enum_filter_and_stream(traced):
    h2d = _of(traced, "h2d")
    assert [(e.fields["count"], e.fields["kind"], e.fields["stream"]) for e in h2d] == [
        (1024 * 1024, workload.cudaMemcpyHostToDevice, workload.STREAM)
    ] * REPEAT


def test_launch_kernel_register_and_stack_arguments(traced):
    launches = _of(traced, "launch")
    assert len(launches) == REPEAT
    f = launches[0].fields
    assert f["func"] == workload.KERNEL_FUNC
    assert (f["gridDim.x"], f["gridDim.y"], f["gridDim.z"]) == workload.GRID
    assert (f["blockDim.x"], f["blockDim.y"], f["blockDim.z"]) == workload.BLOCK
    assert f["sharedMem"] == workload.SHARED_MEM  # on the stack
    assert f["stream"] == workload.STREAM  # on the stack, read at entry, stashed for the return
    assert f["retval"] == 35


def test_in_kernel_aggregation(traced):
    (row,) = traced["aggs"]["allocs"]
    assert row.key == {"symbol": "cudaMalloc"}
    assert row.count == 3 * REPEAT
    assert row.values == {
        "sum(size)": sum(workload.MALLOC_SIZES) * REPEAT,
        "min(size)": min(workload.MALLOC_SIZES),
        "max(size)": max(workload.MALLOC_SIZES),
    }
    assert sum(row.hists["hist(size)"]) == row.count == sum(row.hists["hist(latency)"])
    # 256 B -> bucket 9 ([256, 512)), 1 MiB -> 21, 4 MiB -> 23
    assert {i: c for i, c in enumerate(row.hists["hist(size)"]) if c} == {9: REPEAT, 21: REPEAT, 23: REPEAT}
    assert traced["stats"]["allocs"].agg_overflow == 0


def test_aggregate_by_an_enum_return_value(traced):
    (row,) = traced["aggs"]["fails"]
    assert row.key == {"retval": 35} and row.count == REPEAT


def test_rate_limit_drops_and_counts_in_the_kernel(traced):
    st = traced["stats"]["frees"]
    assert st.hits == 3 * REPEAT
    assert st.rate_dropped > 0 and st.matched + st.rate_dropped == st.hits
    assert st.matched <= 4  # 2 per second; the calls take milliseconds, so at most two windows
    assert len(_of(traced, "frees")) == st.matched


def test_events_budget_detaches_and_says_why(traced):
    assert [e.fields["stream"] for e in _of(traced, "budget")] == [workload.STREAM] * 2
    assert traced["ended"]["budget"] == "events budget reached (2 events)"
    st = traced["stats"]["budget"]
    assert st.matched == 2 and st.budget_dropped == REPEAT - 2


def test_ttl_detaches_and_says_why(traced):
    assert traced["ended"]["short"] == "ttl 0.3s elapsed"


def test_detach_is_fast_and_complete(traced):
    assert traced["closed"]
    assert traced["detach_s"] < 1.0  # 8 probes, 10 links; the benchmark holds the 0.1 s target


def test_old_kernel_gets_a_clear_error(monkeypatch):
    from ingero.errors import BpfUnavailable
    from ingero.runtime import kernel

    monkeypatch.setattr(kernel.platform, "release", lambda: "6.1.0-13-amd64")
    spec = check("probe a = libcudart.so.12:cudaMalloc", "t").resolved()
    with pytest.raises(BpfUnavailable, match=r"kernel 6.1 is too old.*Linux 6.6"):
        ProbeSession(compile_spec(spec)).load()


# -- ingero probe run ---------------------------------------------------------------------------------


def _ingero(*args: str, **kw) -> subprocess.Popen:
    exe = os.path.join(os.path.dirname(sys.executable), "ingero")
    return subprocess.Popen([exe, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_run_a_command_json(need_bpf, tmp_path):
    spec = tmp_path / "s.probe"
    spec.write_text(
        "probe copies = libcudart.so.12:cudaMemcpy\n  where count >= 8KiB\n  record count, kind\n"
        "probe allocs = libcudart.so.12:cudaMalloc\n  aggregate hist(size)\n"
    )
    p = _ingero("probe", "run", str(spec), "--json", "--", sys.executable, "-m", "ingero.workload", "--repeat", "3")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    events = [x for x in lines if "probe" in x]
    assert [(e["symbol"], e["fields"]) for e in events] == [("cudaMemcpy", {"count": 65536, "kind": 2})] * 3
    final = lines[-1]["final"]
    assert final["allocs"]["stats"]["matched"] == 9
    assert sum(final["allocs"]["aggregates"][0]["hists"]["hist(size)"]) == 9


def test_cli_run_pid_ctrl_c_is_clean_and_prints_the_histogram(need_bpf, tmp_path):
    spec = tmp_path / "s.probe"
    spec.write_text("probe allocs = libcudart:cudaMalloc\n  aggregate count, hist(size) by symbol\n")
    with Workload("--repeat", "2", "--hold", "30") as w:
        w.expect("waiting calls")
        p = _ingero("probe", "run", str(spec), "--pid", str(w.pid))
        deadline = time.monotonic() + 30
        line = ""
        while "attached" not in line and time.monotonic() < deadline:
            line = p.stderr.readline()
        assert "attached allocs" in line and f"to pid {w.pid}" in line
        w.go()
        w.expect("done")
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert "probe allocs: 6 matched of 6 calls" in out
    assert "@allocs[symbol=cudaMalloc]: count 6" in out
    assert "[256, 512)                  2 |" in out and "[4M, 8M)                    2 |" in out


def test_a_full_aggregation_map_reports_overflow(need_bpf):
    text = "probe sizes = libcudart.so.12:cudaMalloc\n  aggregate count by size\n"
    with Workload("--repeat", "3") as w:
        w.expect("waiting calls")
        spec = check(text, "t", pid=w.pid).resolved()
        with ProbeSession(compile_spec(spec, agg_entries=2), pid=w.pid) as session:
            w.go()
            w.finish()
            session.poll(0)
            rows = session.aggregates("sizes")
            st = session.stats("sizes")
    assert len(rows) == 2 and sum(r.count for r in rows) == 6  # two sizes fit, three calls each
    assert st.matched == 9 and st.agg_overflow == 3  # the third size never got a group: said, not hidden
