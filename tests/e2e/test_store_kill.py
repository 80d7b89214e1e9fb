"""End to end: SIGKILL a process mid-write; every committed row is still read, by the analysis and over MCP.

A child process writes batches (CUDA events with stacks, sched_switch storms, probe events with their
values) in a loop and prints the count committed after each ``add_events`` returns. The parent kills it
with SIGKILL mid-stream, then opens the database as ``ingero mcp --db`` would: the reader must see a
non-empty ``-wal`` (read from a copy, never ignored) and at least the last count the child reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import anyio

from ingero.analysis import causal_chains, top_stacks, trace_stats
from ingero.store import TraceReader
from tests.replay_helpers import ROOT, folder_fingerprint, stdio_session, text_of

CHILD = textwrap.dedent("""
    import sys
    from ingero.store import Event, EventWriter, Frame, ProbeField, ProbeInfo, SessionInfo
    from ingero.store.clock import ktime_now
    from ingero.store.schema import SOURCE_PROBE

    w = EventWriter(sys.argv[1], node="killed", session=SessionInfo(command="child"))
    probe = w.register_probe(ProbeInfo("copies", fields=(ProbeField("count"), ProbeField("latency"))))
    stack = w.add_stack([Frame(0x10, "cudaStreamSynchronize+0x20", "/x/libcudart.so.12")])
    k = ktime_now()
    n = 0
    while True:
        batch = []
        for i in range(500):
            t = k + n * 1000
            n += 1
            if i % 5 == 0:
                batch.append(Event(t, 100, 100, SOURCE_PROBE, probe.op, 3000 + i, values=(i, 3000 + i)))
            elif i % 5 == 1:
                # a slow tail every 50 calls: a tail chain for the replay path
                batch.append(Event(t, 100, 100, 1, 5, 900_000 if i % 50 == 1 else 20_000, stack_hash=stack))
            else:
                batch.append(Event(t, 100, 101, 3, 1, 40_000, arg1=7))
        print(w.add_events(batch), flush=True)
""")


def test_sigkill_mid_write_keeps_every_committed_row(tmp_path):
    db = tmp_path / "killed.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    reported = 0
    deadline = time.monotonic() + 30
    try:
        assert child.stdout is not None
        while reported < 40_000:
            line = child.stdout.readline()
            assert line, f"the child died: rc={child.poll()}"
            reported = int(line)
            assert time.monotonic() < deadline
        child.send_signal(signal.SIGKILL)
        # whatever it reported before dying was committed too
        for line in child.stdout:
            reported = int(line)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    wal = db.with_name(db.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 0
    before = folder_fingerprint(tmp_path)

    with TraceReader.open(db) as r:
        assert r.mode.kind == "wal-copy"
        n = r.count("events")
        assert n >= reported
        assert n % 500 == 0                                   # whole batches: one transaction each
        assert r.count("probe_values") == n // 5
        assert r.query("SELECT stopped_at FROM sessions") == [(0,)]
        st = trace_stats(r)
        assert st.stored_events == n
        assert st.op("cudaStreamSync").count == n // 5 and st.op("sched_switch").count == 3 * n // 5
        assert st.op("probe:copies").count == n // 5
        chains = causal_chains(r)
        assert chains.path == "replay" and chains.chains[0].cuda_op == "cudaStreamSync"
        stacks = top_stacks(r, op="cudaStreamSync")
        assert stacks[0].count == n // 5 and stacks[0].frames[0].startswith("cudaStreamSynchronize+0x20")

    async def main() -> tuple[str, str]:
        async with stdio_session(db, tmp_path / "audit.db") as s:
            stats = text_of(await s.call_tool("get_trace_stats", {"tsc": False}))
            sql = text_of(await s.call_tool("run_sql", {"query": "SELECT COUNT(*) AS n FROM probe_copies"}))
            return stats, sql

    stats, sql = anyio.run(main)
    assert "cudaStreamSync" in stats and "sched_switch" in stats
    assert f"[{n // 5}]" in sql.replace(" ", "")
    after = folder_fingerprint(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith("killed")} == before   # nothing beside it changed
