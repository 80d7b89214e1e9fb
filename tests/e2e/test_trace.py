"""`ingero trace` for real: the standard probe set on the CUDA test workload, into a database that the
standard MCP tools then serve."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from ingero import workload
from ingero.tracer.session import TraceOptions, TraceSession
from tests.helpers import Workload
from tests.helpers import db_rows as rows

pytestmark = pytest.mark.bpf

OPS = {"cudaMalloc": 1, "cudaFree": 2, "cudaLaunchKernel": 3, "cudaMemcpy": 4, "cudaStreamSynchronize": 5,
       "cudaDeviceSynchronize": 6, "cudaMemcpyAsync": 7}


def wait_for(cond, timeout=10.0, what="condition"):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def running(session: TraceSession) -> Iterator[threading.Thread]:
    """``session.run`` on a thread of its own; stopped and joined when the block ends, however it ends."""
    runner = threading.Thread(target=session.run)
    runner.start()
    try:
        yield runner
    finally:
        session.stop("test over")
        runner.join(timeout=20)


def ran_to_the_end(runner: threading.Thread, w: Workload) -> None:
    """The workload finishes and the session, which stops when its traced processes have exited, with it."""
    w.finish()
    runner.join(timeout=20)
    assert not runner.is_alive()


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """Trace a running workload that loads libcudart late (dlopen after the trace started) and makes its
    calls in a forked child; returns (db, parent pid, child pid)."""
    from ingero.runtime.kernel import bpf_problem
    from tests.conftest import skip_or_fail

    if bpf_problem():
        skip_or_fail(bpf_problem())
    db = tmp_path_factory.mktemp("trace") / "run.db"
    repeat = 3
    with Workload("--repeat", str(repeat), "--fork", "--hold", "0.2", wait_load=True) as w:
        w.expect("waiting load")
        # no pre-attached copies: the late-loaded library must be found by the tracer itself
        session = TraceSession(TraceOptions(db=db, chains_every_s=0.5, preattach=False), pids=[w.pid]).start()
        with running(session) as runner:
            assert session.snapshot().libraries == []  # nothing CUDA is mapped yet
            w.go()
            w.expect("waiting calls")
            wait_for(lambda: session.snapshot().libraries, what="the late-loaded libcudart to be probed")
            w.go()
            child = int(w.expect("forked child pid=").split("=")[1])
            ran_to_the_end(runner, w)
    assert session.stopped_because == "the traced processes exited"
    return db, w.pid, child, repeat


def test_exact_cuda_calls_of_the_forked_child(traced):
    db, parent, child, repeat = traced
    _exact_calls(db, child, repeat)


def test_exact_cuda_calls_without_stacks(need_bpf, tmp_path):
    """Without stacks the calls are stored straight from their ring records (ingero.tracer.calls): the same
    rows, and each call's thread name as the kernel has it."""
    db = tmp_path / "nostacks.db"
    repeat = 3
    with Workload("--repeat", str(repeat), "--fork", "--hold", "0.2") as w:
        w.expect("waiting calls")
        with open(f"/proc/{w.pid}/comm") as f:
            comm = f.read().strip()  # the forked child keeps it
        session = TraceSession(TraceOptions(db=db, stacks=False), pids=[w.pid]).start()
        with running(session) as runner:
            w.go()
            child = int(w.expect("forked child pid=").split("=")[1])
            ran_to_the_end(runner, w)
    _exact_calls(db, child, repeat)
    assert rows(db, "SELECT DISTINCT comm, stack_hash, gpu_id, cgroup_id FROM events WHERE source = 1") == [
        (comm, 0, 0, 0)]
    ids = [r[0] for r in rows(db, "SELECT id FROM events ORDER BY rowid")]
    assert ids == [f"{ids[0].rsplit(':', 1)[0]}:{i}" for i in range(1, len(ids) + 1)]  # numbered in order
    assert session.snapshot().by_op == Counter(dict(rows(
        db, "SELECT o.name, COUNT(*) FROM events e JOIN ops o ON o.source_id = e.source AND o.op_id = e.op "
            "GROUP BY o.name")))


def _exact_calls(db: Path, child: int, repeat: int) -> None:
    got = Counter(dict(rows(db, "SELECT op, COUNT(*) FROM events WHERE source = 1 GROUP BY op")))
    want = Counter({OPS[name]: n for name, n in workload.expected_counts(repeat).items()})
    assert got == want
    assert {r[0] for r in rows(db, "SELECT DISTINCT pid FROM events WHERE source = 1")} == {child}
    assert rows(db, "SELECT DISTINCT ret_code FROM events WHERE source = 1") == [(35,)]
    assert rows(db, "SELECT MIN(duration) > 0 FROM events WHERE source = 1") == [(1,)]
    sizes = [r[0] for r in rows(db, "SELECT arg0 FROM events WHERE source = 1 AND op = 1 ORDER BY timestamp")]
    assert sizes == list(workload.MALLOC_SIZES) * repeat
    copies = rows(db, "SELECT arg0, arg1 FROM events WHERE source = 1 AND op = 4 ORDER BY timestamp")
    assert copies == [(c.args["count"], c.args["kind"]) for c in workload.PLAN if c.name == "cudaMemcpy"] * repeat
    # cudaLaunchKernel: arg0 = the function pointer, arg1 = the stream, read from the stack at entry
    assert rows(db, "SELECT DISTINCT arg0, arg1 FROM events WHERE source = 1 AND op = 3") == [
        (workload.KERNEL_FUNC, workload.STREAM)]
    assert rows(db, "SELECT DISTINCT arg0 FROM events WHERE source = 1 AND op = 5") == [(workload.STREAM,)]
    assert sorted(rows(db, "SELECT DISTINCT arg0, arg1 FROM events WHERE source = 1 AND op = 7")) == sorted(
        (c.args["count"], c.args["kind"]) for c in workload.PLAN if c.name == "cudaMemcpyAsync")


def test_stacks_are_resolved_to_symbol_names(traced):
    db, *_ = traced
    frames = {r[0]: json.loads(r[1]) for r in rows(
        db, "SELECT e.op, s.frames FROM events e JOIN stack_traces s ON s.hash = e.stack_hash "
            "WHERE e.source = 1 GROUP BY e.op")}
    assert set(frames) == set(OPS.values())
    for op, fr in frames.items():
        name = next(n for n, o in OPS.items() if o == op)
        assert fr[0]["s"] == f"{name}+0x0" and fr[0]["f"] == "libcudart.so.12"


def test_host_events_of_the_workload(traced):
    db, parent, child, _ = traced
    switches = rows(db, "SELECT pid, tid, duration FROM events WHERE source = 3 AND op = 1 AND pid = ?", (parent,))
    assert switches and all(tid == parent and d > 0 for _, tid, d in switches)
    assert max(d for *_, d in switches) >= 150_000_000  # --hold 0.2: one long sleep
    assert rows(db, "SELECT pid, arg1 FROM events WHERE source = 3 AND op = 7") == [(parent, child)]
    assert sorted(r[0] for r in rows(db, "SELECT pid FROM events WHERE source = 3 AND op = 6")) == sorted(
        [parent, child])
    assert rows(db, "SELECT COALESCE(SUM(count), 0) FROM lost_events") == [(0,)]
    assert rows(db, "SELECT lost_events FROM sessions") == [(0,)]


def test_the_database_serves_every_standard_tool(traced, tmp_path):
    from tests.replay_helpers import stdio_session, text_of

    db, *_ = traced

    async def main():
        async with stdio_session(db, tmp_path / "audit.db") as s:
            out = {}
            for name, args in [("get_check", {}), ("get_trace_stats", {"tsc": False}), ("get_causal_chains", {}),
                               ("run_demo", {"scenario": "incident"}), ("get_test_report", {}),
                               ("run_sql", {"query": "SELECT COUNT(*) AS n FROM events WHERE source = 1"}),
                               ("get_stacks", {"tsc": False})]:
                r = await s.call_tool(name, args)
                assert not r.is_error, (name, text_of(r))
                out[name] = text_of(r)
            return out

    out = anyio.run(main)
    assert "cudaMalloc" in out["get_trace_stats"] and "sched_switch" in out["get_trace_stats"]
    assert "39" in out["run_sql"]
    assert "cudaMalloc" in out["get_stacks"]


def test_cli_trace_command_and_clean_exit(need_bpf, tmp_path):
    import subprocess

    db = tmp_path / "cli.db"
    ingero = str(Path(sys.executable).parent / "ingero")
    r = subprocess.run([ingero, "trace", "--db", str(db), "--quiet", "--", sys.executable, "-m", "ingero.workload",
                        "--hold", "0.5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "stopped: the traced processes exited" in r.stdout and f"wrote {db}" in r.stdout
    # the program was traced from its first instruction: its exec and its page allocations are there
    assert rows(db, "SELECT COUNT(*) FROM events WHERE source = 3 AND op = 5") == [(1,)]
    assert rows(db, "SELECT COUNT(*) > 0 FROM events WHERE source = 3 AND op = 3") == [(1,)]
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0


def test_selective_storage_counts_everything_and_stores_some(need_bpf, tmp_path):
    import subprocess

    db = tmp_path / "selective.db"
    ingero = str(Path(sys.executable).parent / "ingero")
    r = subprocess.run([ingero, "trace", "--db", str(db), "--quiet", "--selective", "--", sys.executable, "-m",
                        "ingero.workload", "--repeat", "4"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "stored)" in r.stdout
    # every event is counted in the aggregates, page allocations are never stored
    assert rows(db, "SELECT COUNT(*) FROM events WHERE source = 3 AND op = 3") == [(0,)]
    allocs = rows(db, "SELECT SUM(count), SUM(stored), SUM(sum_arg0) FROM event_aggregates WHERE source = 3 AND op = 3")
    assert allocs[0][0] > 0 and allocs[0][1] == 0 and allocs[0][2] % 4096 == 0
    counted = dict(rows(db, "SELECT op, SUM(count) FROM event_aggregates WHERE source = 1 GROUP BY op"))
    assert counted == {OPS[n]: c for n, c in workload.expected_counts(4).items()}
    stored = dict(rows(db, "SELECT op, COUNT(*) FROM events WHERE source = 1 GROUP BY op"))
    assert stored == counted  # within the 10 s warm-up every CUDA call is also stored
    out = subprocess.run([ingero, "stats", "--db", str(db)], capture_output=True, text=True).stdout
    n = rows(db, "SELECT COUNT(*) FROM events")[0][0]
    total = rows(db, "SELECT SUM(count) FROM event_aggregates")[0][0]
    assert f"{n} stored events of {total} counted" in out


def test_a_dsl_probe_given_with_probe_records_its_events(need_bpf, tmp_path):
    import subprocess

    spec = tmp_path / "mallocs.probe"
    spec.write_text("probe mallocs = libcudart.so.12:cudaMalloc\n    where size >= 1KiB\n"
                    "    record size, retval, latency\n"
                    "probe alloc_total = libcudart.so.12:cudaMalloc\n    aggregate count, sum(size)\n")
    db = tmp_path / "probe.db"
    ingero = str(Path(sys.executable).parent / "ingero")
    r = subprocess.run([ingero, "trace", "--db", str(db), "--quiet", "--probe", str(spec), "--", sys.executable,
                        "-m", "ingero.workload", "--repeat", "3", "--workers", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    workers = {int(line.split("=")[1]) for line in r.stdout.splitlines() if line.startswith("forked child pid=")}
    assert len(workers) == 2
    [(pid_, name, status, reason, source), total] = rows(
        db, "SELECT id, name, status, end_reason, source FROM probes ORDER BY id")
    assert (name, status, reason, source) == ("mallocs", "detached", "the traced processes exited", 100)
    # an aggregating probe's final in-kernel results are kept: 2 workers x 3 runs x (1 MiB + 4 MiB + 256 B)
    assert total[1] == "alloc_total"
    assert rows(db, "SELECT key, count, aggs FROM probe_aggregates WHERE probe_id = ?", (total[0],)) == [
        ("{}", 18, f'{{"sum(size)":{6 * ((5 << 20) + 256)}}}')]
    # the forked workers make the calls: the probe follows the traced tree, not just the root pid.
    # 2 of the 3 mallocs per run are >= 1 KiB (1 MiB and 4 MiB; not the 256 B one)
    for w in workers:
        got = rows(db, "SELECT arg0, ret_code, duration > 0 FROM events WHERE source = 100 AND pid = ? "
                       "ORDER BY timestamp", (w,))
        assert got == [(1 << 20, 35, 1), (4 << 20, 35, 1)] * 3
    assert rows(db, "SELECT COUNT(*) FROM events WHERE source = 100") == [(12,)]
    view = rows(db, "SELECT size, retval FROM probe_mallocs ORDER BY size")
    assert view == [(1 << 20, 35)] * 6 + [(4 << 20, 35)] * 6
    assert rows(db, "SELECT name FROM ops WHERE source_id = 100 AND op_id = ?", (pid_,)) == [("mallocs",)]
    # ... and the standard set saw all 2 x 3 x 3 cudaMalloc calls next to it
    assert rows(db, "SELECT COUNT(*) FROM events WHERE source = 1 AND op = 1") == [(18,)]
