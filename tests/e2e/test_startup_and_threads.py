"""The standard set's start-up/error-path CUDA calls, failing calls as findings, and thread lifecycle, on the
bundled workload: its start-up calls (``--startup``) in two forked workers that each start threads
(``--threads``), traced for real. Ground truth is what the workload prints: the return codes and values of
its calls, its pids and its threads' tids."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import anyio
import pytest

from ingero import workload
from ingero.store.schema import INGERO_OPS, op_code
from ingero.tracer.session import TraceOptions, TraceSession
from tests.helpers import Workload
from tests.helpers import db_rows as rows

pytestmark = pytest.mark.bpf

IDLE_THREADS = 2
WORKERS = 2



@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(db, parent pid, {worker pid: (ended tid, idle tids)}, {worker pid: startup results})"""
    from ingero.runtime.kernel import bpf_problem
    from tests.conftest import skip_or_fail

    if bpf_problem():
        skip_or_fail(bpf_problem())
    db = tmp_path_factory.mktemp("startup") / "run.db"
    # only the start-up calls (--repeat 0: no plan), whose return codes the workers print
    args = ("--startup", "--repeat", "0", "--threads", str(IDLE_THREADS), "--workers", str(WORKERS))
    with Workload(*args) as w:
        w.expect("waiting calls")
        session = TraceSession(TraceOptions(db=db, chains_every_s=0.5), pids=[w.pid]).start()
        runner = threading.Thread(target=session.run)
        runner.start()
        try:
            w.go()
            w.finish()
            runner.join(timeout=30)
            assert not runner.is_alive()
        finally:
            session.stop("test over")
            runner.join(timeout=30)
    threads, startup = {}, {}
    for line in w.lines:
        if line.startswith("threads "):
            f = dict(kv.split("=") for kv in line.split()[1:])
            threads[int(f["pid"])] = (int(f["ended"]), [int(t) for t in f["idle"].split(",")])
    workers = [int(line.split("=")[1]) for line in w.lines if line.startswith("forked child pid=")]
    # each worker prints its start-up results after its threads line: pair them in order of appearance
    order = [int(dict(kv.split("=") for kv in ln.split()[1:])["pid"]) for ln in w.lines if ln.startswith("threads ")]
    results = [json.loads(ln[len("startup "):]) for ln in w.lines if ln.startswith("startup ")]
    startup = dict(zip(order, results, strict=True))
    assert sorted(threads) == sorted(workers) and len(workers) == WORKERS
    return db, w.pid, threads, startup


def test_startup_calls_are_recorded_with_their_return_codes_and_values(traced):
    db, _, _, startup = traced
    for pid, calls in startup.items():
        got = rows(db, "SELECT op, ret_code, arg1 FROM events WHERE source = 1 AND pid = ? ORDER BY timestamp",
                   (pid,))
        want = [(op_code(name)[1], calls[name][0]) for name in workload.STARTUP]
        assert [(op, rc) for op, rc, _ in got] == want
        # values the calls wrote, read at return (only when the call succeeded)
        by_op = {op: a1 for op, _, a1 in got}
        assert by_op[op_code("cudaRuntimeGetVersion")[1]] == calls["cudaRuntimeGetVersion"][1] > 0
        assert by_op[op_code("cudaDriverGetVersion")[1]] == calls["cudaDriverGetVersion"][1]
    # arguments read at entry, whatever the call returned
    assert set(rows(db, "SELECT arg0, arg1 FROM events WHERE source = 1 AND op = ?",
                    (op_code("cudaEventRecord")[1],))) == {(workload.EVENT, workload.STREAM)}
    assert set(rows(db, "SELECT arg0 FROM events WHERE source = 1 AND op = ?",
                    (op_code("cudaHostAlloc")[1],))) == {(workload.HOST_ALLOC_SIZE,)}
    assert set(rows(db, "SELECT arg0 FROM events WHERE source = 1 AND op = ?",
                    (op_code("cudaStreamCreateWithFlags")[1],))) == {(1,)}
    # the ops table names every one of them
    names = dict(((s, o), n) for s, o, n in rows(db, "SELECT source_id, op_id, name FROM ops"))
    assert all(names[k] == name for k, (name, _) in INGERO_OPS.items())


def test_a_process_exit_for_every_process_whichever_thread_exits_last(traced):
    db, parent, threads, _ = traced
    exits = rows(db, "SELECT pid FROM events WHERE source = 3 AND op = 6")
    assert sorted(p for (p,) in exits) == sorted([parent, *threads])  # exactly one each
    # the workers' last thread out was an idle thread, not the main one (exit_group: the caller goes first)
    tids = dict(rows(db, "SELECT pid, tid FROM events WHERE source = 3 AND op = 6"))
    assert all(tids[w] in idle or tids[w] == w for w, (_, idle) in threads.items())


def test_thread_creations_are_not_forks(traced):
    db, parent, threads, _ = traced
    assert sorted(rows(db, "SELECT pid, arg1 FROM events WHERE source = 3 AND op = 7")) == sorted(
        (parent, w) for w in threads)
    created = rows(db, "SELECT pid, arg1 FROM events WHERE source = 3 AND op = ?", (op_code("thread_create")[1],))
    assert sorted(created) == sorted((w, t) for w, (ended, idle) in threads.items() for t in [ended, *idle])
    ended = rows(db, "SELECT pid, tid FROM events WHERE source = 3 AND op = ?", (op_code("thread_exit")[1],))
    for w, (t, _) in threads.items():
        assert (w, t) in ended  # the joined thread's exit, while its process lived on


def test_failing_calls_are_findings_in_every_tool(traced, tmp_path):
    from tests.replay_helpers import stdio_session, text_of

    db, _, _, startup = traced
    failed = sum(rc != 0 for calls in startup.values() for rc, _ in calls.values())
    total = sum(len(calls) for calls in startup.values())
    assert rows(db, "SELECT COUNT(*), SUM(ret_code != 0) FROM events WHERE source = 1") == [(total, failed)]
    finding = f"{failed} of {total} CUDA runtime calls returned cudaErrorInsufficientDriver (35): " \
              "this process has no usable NVIDIA driver"

    async def main():
        async with stdio_session(db, tmp_path / "audit.db") as s:
            out = {}
            for name, args in [("get_check", {}), ("get_trace_stats", {"tsc": False}),
                               ("get_trace_stats", {}), ("get_causal_chains", {}),
                               ("get_causal_chains", {"tsc": False})]:
                r = await s.call_tool(name, args)
                assert not r.is_error, (name, text_of(r))
                out[f"{name}{args}"] = text_of(r)
            return out

    out = anyio.run(main)
    assert f"[FAIL] CUDA calls in the trace: HIGH: {finding}" in out["get_check{}"]
    stats = out["get_trace_stats{'tsc': False}"]
    n_count = Counter(name for name, (rc, _) in (kv for c in startup.values() for kv in c.items()) if rc)
    assert f"errors={n_count['cudaGetDeviceCount']} (cudaErrorInsufficientDriver (35) x" in stats
    assert f"HIGH: {finding}" in stats and f"HIGH: {finding}" in out["get_trace_stats{}"]
    assert "appears healthy" not in out["get_causal_chains{}"]
    assert '"sev":"HIGH"' in out["get_causal_chains{}"] and finding in out["get_causal_chains{}"]
    assert f"[HIGH] [traced-data]{finding}" in out["get_causal_chains{'tsc': False}"]


def test_get_stacks_takes_every_op_name_stats_prints_and_source_names(traced, tmp_path):
    import subprocess
    import sys

    from tests.replay_helpers import stdio_session, text_of

    db, _, threads, _ = traced
    n_host = rows(db, "SELECT COUNT(*) FROM events WHERE source = 3")[0][0]
    n_created = rows(db, "SELECT COUNT(*) FROM events WHERE source = 3 AND op = 40")[0][0]
    # a dynamic probe's op (probe:NAME), from `ingero trace --probe` in its own process
    spec = tmp_path / "devcount.probe"
    spec.write_text("probe devcount = libcudart.so.12:cudaGetDeviceCount\n    record retval\n")
    pdb = tmp_path / "probe.db"
    r = subprocess.run([str(Path(sys.executable).parent / "ingero"), "trace", "--db", str(pdb), "--quiet", "--probe",
                        str(spec), "--", sys.executable, "-m", "ingero.workload", "--startup", "--repeat", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert rows(pdb, "SELECT COUNT(*) FROM events WHERE source = 100") == [(1,)]

    from ingero.store.schema import SOURCE_NAMES

    async def main():
        out = {}
        async with stdio_session(pdb, tmp_path / "audit-probe.db") as s:
            stats = text_of(await s.call_tool("get_trace_stats", {}))
            for args in [{"op": "probe:devcount"}, {"op": "probe:nope"}]:
                r = await s.call_tool("get_stacks", args)
                out[json.dumps(args, sort_keys=True)] = (r.is_error, text_of(r))
            # every op name get_trace_stats prints for this database, exactly as printed, and every source
            # by code and by name
            printed = json.loads(stats.split("\n\n", 1)[1])["ops"]
            for o in printed:
                r = await s.call_tool("get_stacks", {"op": o["op"], "tsc": False, "limit": 100})
                out[("op", o["op"])] = (r.is_error, text_of(r), o["n"])
            for code, name in SOURCE_NAMES.items():
                by_code = await s.call_tool("get_stacks", {"source": code})
                by_name = await s.call_tool("get_stacks", {"source": name})
                out[("source", name)] = (by_code.is_error, by_name.is_error, text_of(by_code) == text_of(by_name))
        async with stdio_session(db, tmp_path / "audit.db") as s:
            for args in [{"source": "HOST"}, {"source": "host"}, {"source": 3}, {"op": "thread_create"},
                         {"op": "cudaGetDeviceCount", "tsc": False}, {"op": "cudaGetDeviceCount", "pid": 1},
                         {"source": "hots"}, {"op": "cudaGetDevceCount"}]:
                r = await s.call_tool("get_stacks", args)
                out[json.dumps(args, sort_keys=True)] = (r.is_error, text_of(r))
        return stats, out

    stats, out = anyio.run(main)
    assert '"op":"probe:devcount"' in stats
    op_answers = {k[1]: v for k, v in out.items() if k[0] == "op" and isinstance(k, tuple)}
    assert "probe:devcount" in op_answers and "cudaGetDeviceCount" in op_answers and "sched_switch" in op_answers
    for name, (err, text, n) in op_answers.items():
        assert not err, (name, text)
        # stacks of that op, or why there are none: as many events of it as get_trace_stats counted
        if text.startswith("No stacks"):
            assert f"No stacks found: {n} {name} events, none" in text, (name, n, text)
        else:
            stacks = json.loads(text[text.index("{"):])["stacks"]
            assert len(stacks) < 100 and sum(x["n"] for x in stacks) == n, (name, n, text)
    assert {k[1]: v for k, v in out.items() if k[0] == "source"} == {
        name: (False, False, True) for name in SOURCE_NAMES.values()}
    cli = subprocess.run([str(Path(sys.executable).parent / "ingero"), "stacks", "--db", str(pdb), "--op",
                          "probe:devcount"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.startswith("No stacks found: 1 probe:devcount events"), cli
    assert out['{"op": "probe:devcount"}'][1].startswith("No stacks found: 1 probe:devcount events, none")
    err, text = out['{"op": "probe:nope"}']
    assert err and 'no probe named "nope" (probes: probe:devcount)' in text
    host = (False, f"No stacks found: {n_host} host events, none with a call stack -- host and I/O events never "
                   "carry one (stacks are captured for CUDA/driver calls and probes that record them).")
    assert out['{"source": "HOST"}'] == out['{"source": "host"}'] == out['{"source": 3}'] == host
    assert out['{"op": "thread_create"}'] == (
        False, f"No stacks found: {n_created} thread_create events, none with a call stack -- host and I/O "
               "events never carry one (stacks are captured for CUDA/driver calls and probes that record them).")
    err, text = out['{"op": "cudaGetDeviceCount", "tsc": false}']
    assert not err and "cudaGetDeviceCount" in text and '"n": ' in text
    assert out['{"op": "cudaGetDeviceCount", "pid": 1}'] == (
        False, "No stacks found: no cudaGetDeviceCount events of pid 1 (get_trace_stats lists the ops this trace "
               "has).")
    err, text = out['{"source": "hots"}']
    assert err and 'unknown source "hots"' in text and "host" in text and "validation" not in text.lower()
    err, text = out['{"op": "cudaGetDevceCount"}']
    assert err and "did you mean 'cudaGetDeviceCount'" in text
