"""A process held at the open of a CUDA library goes on while the trace's main loop is stalled.

`ingero trace -- CMD` holds the command at each open of a watched library (bpf/libwatch.bpf.c) until the
probes are on that file. The binding and the release run on the watcher's own thread, so a main loop that
does not come round (here: the live view's callback blocks, as a terminal paused with Ctrl-S would block
it) never leaves the command stopped. Ground truth: the command's own clock around its dlopen and its own
count of calls, against the events the trace stored once the loop ran again."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ingero.runtime.libwatch import HOLD_MAX_S

pytestmark = pytest.mark.bpf

# waits for a file, then loads libcudart and calls cudaMalloc N times; prints its own figures
PROGRAM = textwrap.dedent("""
    import ctypes, json, os, sys, time
    lib_path, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    while not os.path.exists(go):
        time.sleep(0.01)
    t0 = time.monotonic()
    lib = ctypes.CDLL(lib_path)
    t1 = time.monotonic()
    ptr = ctypes.c_void_p()
    rcs = [lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(4096)) for _ in range(n)]
    print(json.dumps({"pid": os.getpid(), "open_s": t1 - t0, "calls": len(rcs), "rc": sorted(set(rcs))}),
          flush=True)
""")
CALLS = 25


def test_a_held_process_goes_on_while_the_main_loop_is_stalled(need_bpf, tmp_path: Path):
    import sqlite3

    from ingero.tracer.ops import RUNTIME_SYMBOLS
    from ingero.tracer.session import TraceOptions, TraceSession
    from ingero.workload import wheel_libcudart

    (tmp_path / "prog.py").write_text(PROGRAM)
    go = tmp_path / "go"
    out = tmp_path / "out.txt"
    db = tmp_path / "t.db"
    with out.open("w") as stdout:
        session = TraceSession(TraceOptions(db=db, preattach=False), command=[
            sys.executable, "-S", str(tmp_path / "prog.py"), str(wheel_libcudart(12)), str(go), str(CALLS)],
            command_stdout=stdout).start()
    stalled, resume = threading.Event(), threading.Event()

    def live_view(_snapshot) -> None:  # the main loop's callback, blocked until the test lets it go
        stalled.set()
        resume.wait(60)

    runner = threading.Thread(target=session.run, args=(live_view,))
    runner.start()
    try:
        assert stalled.wait(30), "the main loop never came round"
        go.touch()  # from now on the main loop is blocked: the open, the hold and the release happen meanwhile
        t0 = time.monotonic()
        session.child.wait(timeout=HOLD_MAX_S + 10)
        finished_s = time.monotonic() - t0
        assert not resume.is_set() and runner.is_alive()  # the loop was stalled the whole time
    finally:
        resume.set()
        runner.join(60)
    facts = json.loads(out.read_text().splitlines()[-1])
    assert facts["calls"] == CALLS and facts["rc"] == [35], facts
    # the open returned well before the stalled loop came round (it never did until the test let it go);
    # the hold lasted what attaching the probes to the file takes
    assert facts["open_s"] < HOLD_MAX_S, facts
    assert finished_s < HOLD_MAX_S + 5, finished_s
    snap = session.snapshot()
    assert snap.unlinked == {}, snap.unlinked  # bound before it went on, not let go at the bound
    assert snap.lib_held >= 1 and snap.lib_held_max_ms < HOLD_MAX_S * 1000, snap
    conn = sqlite3.connect(db)
    try:
        stored = conn.execute("SELECT COUNT(*) FROM events WHERE source = 1 AND op = ? AND pid = ?",
                              (RUNTIME_SYMBOLS["cudaMalloc"], facts["pid"])).fetchone()[0]
    finally:
        conn.close()
    # held at the open until the probes were on the file: every call after it was traced
    assert stored == CALLS, (stored, facts)


def test_a_binding_that_cannot_finish_lets_the_process_go_at_the_bound(need_bpf, tmp_path: Path):
    """The main loop stuck inside the DSL probes' tick (its writer stalled) holds their lock, which binding a
    new library needs: the held command still goes on after HOLD_MAX_S, and the trace says its first calls
    may be missing. Here the test holds that lock itself, as the stuck tick would."""
    from ingero.tracer.session import TraceOptions, TraceSession
    from ingero.workload import wheel_libcudart

    (tmp_path / "prog.py").write_text(PROGRAM)
    go = tmp_path / "go"
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        session = TraceSession(TraceOptions(db=tmp_path / "t.db", preattach=False), command=[
            sys.executable, "-S", str(tmp_path / "prog.py"), str(wheel_libcudart(12)), str(go), str(CALLS)],
            command_stdout=stdout).start()
    runner = threading.Thread(target=session.run)
    runner.start()
    try:
        with session.dynamic._lock:  # what a tick stuck on a stalled writer holds
            go.touch()
            session.child.wait(timeout=HOLD_MAX_S + 20)
    finally:
        runner.join(60)
    facts = json.loads(out.read_text().splitlines()[-1])
    assert facts["calls"] == CALLS, facts
    # stopped at the open for the bound, not longer (and not shorter: the binding could not finish)
    assert HOLD_MAX_S - 0.5 <= facts["open_s"] < HOLD_MAX_S + 5, facts
    why = session.snapshot().unlinked.get(facts["pid"], "")
    assert why.startswith(f"let go {HOLD_MAX_S:g} s after it opened ") and "first calls into it may be missing" in why
