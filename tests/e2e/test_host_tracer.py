"""Host tracepoints on real processes, as the standard set of ``ingero trace`` records them: scheduler,
page allocations, fork/exec/exit, block I/O, with the process tree followed in the kernel."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

from ingero.store.schema import SOURCE_HOST, SOURCE_IO
from ingero.tracer.standard import StandardTracer
from tests.helpers import Workload

pytestmark = pytest.mark.bpf


def collect(tracer: StandardTracer, proc) -> list:
    events = []
    while proc.poll() is None:
        events += tracer.poll(20)[1]
    return events + tracer.poll(50)[1]


def test_scheduler_memory_and_forked_child(need_bpf):
    with Workload("--fork", "--hold", "0.2") as w, StandardTracer([w.pid]) as tracer:
        w.expect("waiting calls")
        w.go()
        child = int(w.expect("forked child pid=").split("=")[1])
        w.finish()
        events = collect(tracer, w.proc)
        assert tracer.lost()["host"] == 0, tracer.lost()
    ops = Counter((e.source, e.op_name) for e in events)
    assert ops[(SOURCE_HOST, "process_fork")] >= 1
    forks = [e for e in events if e.op_name == "process_fork" and e.pid == w.pid]
    assert [f.arg1 for f in forks] == [child]
    exits = {e.pid for e in events if e.op_name == "process_exit"}
    assert exits == {w.pid, child}  # the child was followed in the kernel from its fork
    # sched_switch of the workload's own thread: it slept 0.2 s (--hold), so one off-CPU interval is long
    switches = [e for e in events if e.op_name == "sched_switch" and e.pid == w.pid]
    assert switches and all(e.tid == w.pid and e.duration_ns > 0 for e in switches)
    assert max(e.duration_ns for e in switches) >= 150_000_000
    allocs = [e for e in events if e.op_name == "mm_page_alloc"]
    assert allocs and all(e.arg0 >= 4096 and e.arg0 % 4096 == 0 for e in allocs)
    assert {e.pid for e in allocs} <= {w.pid, child}
    # nothing from processes outside the tree (waker pids aside, which may be anyone, e.g. swapper)
    assert {e.pid for e in events if e.op_name != "sched_wakeup"} <= {w.pid, child}


def test_exec_and_direct_block_reads(need_bpf):
    import os
    import tempfile

    # a real file on a real disk (/var/tmp, not a tmpfs), read with O_DIRECT so the reads reach the device
    # from the process's own context
    with tempfile.NamedTemporaryFile(dir="/var/tmp", delete=False) as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    try:
        proc = subprocess.Popen(
            ["sh", "-c", f"read go; exec dd if={f.name} of=/dev/null bs=4096 count=16 iflag=direct"],
            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        with StandardTracer([proc.pid]) as tracer:
            proc.stdin.write(b"go\n")
            proc.stdin.close()
            events = collect(tracer, proc)
    finally:
        os.unlink(f.name)
    assert proc.returncode == 0
    assert [e.pid for e in events if e.op_name == "process_exec"] == [proc.pid]
    assert [e.comm for e in events if e.op_name == "process_exec"] == ["dd"]
    reads = [e for e in events if e.source == SOURCE_IO and e.op_name == "block_read"]
    assert reads and all(e.pid == proc.pid and e.duration_ns > 0 for e in reads)
    # 16 blocks of 4 KiB = 128 sectors however merged (more if dd itself was read from disk at exec)
    assert sum(e.arg0 for e in reads) >= 16 * 8
