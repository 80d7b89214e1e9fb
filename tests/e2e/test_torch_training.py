"""A real PyTorch process (the fixture's torch 2.14.1, CUDA 13 build, on a machine without an NVIDIA
driver): a small CPU training loop with a DataLoader of two workers, traced from its exec. One torch run
for the whole module (an import costs several seconds of CPU).

Ground truth is what the script itself writes (tests/e2e/torch_train.py): its pid, its workers' pids, the
threads each process had (/proc/self/task), and what torch.cuda.is_available() said."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from ingero.store.schema import op_code
from ingero.tracer.session import TraceOptions, TraceSession
from tests.helpers import db_rows as rows
from tests.helpers import torch_python

pytestmark = pytest.mark.bpf

SCRIPT = Path(__file__).with_name("torch_train.py")
HOST = 3
FORK, EXIT = op_code("process_fork")[1], op_code("process_exit")[1]
THREAD_CREATE, THREAD_EXIT = op_code("thread_create")[1], op_code("thread_exit")[1]



@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(db, main pid, worker pids, {pid: tids seen by the process itself}, the script's lines)"""
    from ingero.runtime.kernel import bpf_problem
    from tests.conftest import skip_or_fail

    if bpf_problem():
        skip_or_fail(bpf_problem())
    python = torch_python()
    d = tmp_path_factory.mktemp("torch")
    db, out = d / "train.db", d / "truth.txt"
    with open(d / "stdout.txt", "w") as stdout:
        session = TraceSession(TraceOptions(db=db, chains_every_s=60), command=[str(python), str(SCRIPT), str(out)],
                               command_stdout=stdout).start()
        runner = threading.Thread(target=session.run)
        runner.start()
        try:
            runner.join(timeout=600)
            assert not runner.is_alive(), "the training script did not end within 10 minutes"
        finally:
            session.stop("test over")
            runner.join(timeout=60)
    assert session.stopped_because == "the traced processes exited"
    lines = out.read_text().splitlines()
    assert lines[-1] == "done", lines
    main = int(next(ln for ln in lines if ln.startswith("main pid=")).split("=")[1])
    workers = [int(ln.split("=")[1]) for ln in lines if ln.startswith("worker pid=")]
    seen: dict[int, set[int]] = {}
    for ln in lines:
        if ln.startswith("tasks "):
            f = dict(kv.split("=") for kv in ln.split()[1:])
            seen.setdefault(int(f["pid"]), set()).update(int(t) for t in f["tids"].split(","))
    assert main == session.pids[0] and len(workers) == 2 and set(seen) == {main, *workers}
    assert "cuda available=False" in lines
    return db, main, workers, seen


def test_startup_cuda_calls_with_their_error_names(traced):
    db, main, _, _ = traced
    calls = rows(db, "SELECT o.name, e.ret_code, e.pid FROM events e JOIN ops o ON o.source_id = e.source "
                     "AND o.op_id = e.op WHERE e.source = 1 ORDER BY e.timestamp")
    names = [n for n, _, _ in calls]
    # torch.cuda.is_available(): the device count fails for want of a driver, the error is read back
    assert "cudaGetDeviceCount" in names and "cudaGetLastError" in names
    assert {(n, rc) for n, rc, _ in calls if n in ("cudaGetDeviceCount", "cudaGetLastError")} == {
        ("cudaGetDeviceCount", 35), ("cudaGetLastError", 35)}
    assert {pid for *_, pid in calls} == {main}


def test_a_process_exit_for_the_main_process_and_every_worker(traced):
    db, main, workers, _ = traced
    exits = [pid for (pid,) in rows(db, "SELECT pid FROM events WHERE source = ? AND op = ?", (HOST, EXIT))]
    forked = {c for (c,) in rows(db, "SELECT arg1 FROM events WHERE source = ? AND op = ?", (HOST, FORK))}
    assert set(workers) <= forked
    # every process of the traced tree that was born in it, and the main one, exited exactly once
    assert sorted(exits) == sorted(forked | {main})


def test_thread_creations_are_told_apart_from_forks(traced):
    db, main, workers, seen = traced
    created = rows(db, "SELECT pid, arg1 FROM events WHERE source = ? AND op = ?", (HOST, THREAD_CREATE))
    forked = {c for (c,) in rows(db, "SELECT arg1 FROM events WHERE source = ? AND op = ?", (HOST, FORK))}
    threads = {tid for _, tid in created}
    assert threads and not threads & forked and not threads & {main, *workers}
    # every thread the processes saw in themselves (but their main threads) was recorded as created there
    for pid, tids in seen.items():
        assert tids - {pid} <= {t for p, t in created if p == pid}, pid
    # and each of them ended: as a thread_exit, or as the process_exit of its process if it went last
    ended = set(rows(db, "SELECT pid, tid FROM events WHERE source = ? AND op IN (?, ?)",
                     (HOST, THREAD_EXIT, EXIT)))
    assert {(p, t) for p, t in created} <= ended


def test_the_missing_driver_is_a_finding_over_a_real_mcp_session(traced, tmp_path):
    from tests.replay_helpers import stdio_session, text_of

    db, *_ = traced
    (total, failed), = rows(db, "SELECT COUNT(*), SUM(ret_code = 35) FROM events WHERE source = 1")
    assert failed >= 2 and rows(db, "SELECT COUNT(*) FROM events WHERE source = 1 AND ret_code NOT IN (0, 35)") \
        == [(0,)]
    finding = (f"{failed} of {total} CUDA runtime calls returned cudaErrorInsufficientDriver (35): this process "
               "has no usable NVIDIA driver")

    async def main():
        async with stdio_session(db, tmp_path / "audit.db") as s:
            out = {}
            for name, args in [("get_check", {}), ("get_causal_chains", {}), ("get_causal_chains", {"tsc": False}),
                               ("get_trace_stats", {"tsc": False})]:
                r = await s.call_tool(name, args)
                assert not r.is_error, (name, text_of(r))
                out[f"{name}{args}"] = text_of(r)
            return out

    out = anyio.run(main)
    assert f"[FAIL] CUDA calls in the trace: HIGH: {finding}" in out["get_check{}"]
    assert '"sev":"HIGH"' in out["get_causal_chains{}"] and finding in out["get_causal_chains{}"]
    assert f"1. [HIGH] [traced-data]{finding}[/traced-data]" in out["get_causal_chains{'tsc': False}"]
    assert "appears healthy" not in out["get_causal_chains{}"]
    stats = out["get_trace_stats{'tsc': False}"]
    assert "cudaGetDeviceCount" in stats and "errors=1 (cudaErrorInsufficientDriver (35) x1)" in stats
