"""Cost per traced call: ingero's entry+return probes (uprobe_multi links, latency, events to user
space) against the uninstrumented loop and against bpftrace doing the same, all in the same run.

The traced program is a C loop calling ``cudaGetLastError`` of the wheel's libcudart.so.12 (its first
instruction is emulated, like every libcudart entry point). Each configuration runs ``runs`` times, the
median is reported. ingero's configurations run first and fully detach before bpftrace attaches
(classic uprobes and uprobe_multi links on the same function must not overlap, bcc#5236).

ingero is measured on the path ``ingero trace`` uses: the standard probe set's generic entry/return
handlers (``bpf/cuda.bpf.c`` via :class:`~ingero.tracer.standard.StandardTracer`) attached to
``cudaGetLastError`` with cudaMemcpy's cookie (so the entry reads two arguments as for a copy), the traced
process in the ``targets`` map, every call a record in the ring buffer decoded in Python; then the same
with user stacks captured (``ingero trace``'s default); then a whole ``TraceSession`` storing every call
in SQLite; and the generic ``CallTracer`` (six arguments, ``ingero probe``'s path) for reference.

Targets (issue 6): at most 1.5 µs per entry+exit pair with latency, ratio to bpftrace <= 1.0 within noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchproc import notes_markdown, stop  # noqa: E402

HERE = Path(__file__).resolve().parent
SYMBOL = "cudaGetLastError"


def build(tmp: str) -> str:
    exe = os.path.join(tmp, "callloop")
    subprocess.run(["gcc", "-O2", "-o", exe, str(HERE / "native" / "callloop.c"), "-ldl"], check=True, timeout=120)
    return exe


def loop(exe: str, lib: str, n: int) -> float:
    out = subprocess.run([exe, lib, SYMBOL, str(n)], capture_output=True, text=True, check=True, timeout=600).stdout
    return float(out.split()[0])


def with_ingero(exe: str, lib: str, n: int) -> tuple[float, int, int]:
    """ns per call with ingero's entry+return tracer (every call -> one event in user space)."""
    from ingero.runtime.calltrace import CallTracer
    from ingero.symbols import read_symbols

    off = read_symbols(lib).get(SYMBOL).file_offset
    seen = 0
    with CallTracer(lib, [(SYMBOL, off)], ringbuf_pages=4096) as tracer:
        stop = threading.Event()

        def consume():
            nonlocal seen
            while not stop.is_set():
                seen += len(tracer.poll(10))

        t = threading.Thread(target=consume)
        t.start()
        try:
            ns = loop(exe, lib, n)
        finally:
            stop.set()
            t.join()
        while got := len(tracer.poll(10)):
            seen += got
        lost = tracer.lost()
    return ns, seen, lost


def _gated_loop(exe: str, lib: str, n: int):
    from ingero.runtime.spawn import spawn_gated

    held = spawn_gated([exe, lib, SYMBOL, str(n)], stdout=subprocess.PIPE)
    return held.proc, held.release


def with_standard(exe: str, lib: str, n: int, *, stacks: bool, op: int = 4) -> tuple[float, int, int]:
    """ns per call with the standard probe set's handlers (as ``ingero trace``), events decoded in Python.
    ``op``: what each call is recorded as (default a cudaMemcpy: count and kind read at entry)."""
    from ingero.tracer.standard import StandardTracer

    with StandardTracer([], stacks=stacks, cuda_ringbuf_pages=4096) as tracer:
        tracer.attach_symbols(lib, {SYMBOL: op})
        proc, release = _gated_loop(exe, lib, n)
        tracer.follow(proc.pid)
        time.sleep(0.3)  # as for bpftrace: attached, and what the compile and attach left behind settled
        seen = 0
        stop = threading.Event()

        def consume():
            nonlocal seen
            while not stop.is_set():
                seen += len(tracer.poll(10)[0])

        t = threading.Thread(target=consume)
        t.start()
        try:
            release()
            out = proc.communicate()[0]
        finally:
            stop.set()
            t.join()
        while True:
            got = len(tracer.poll(0)[0])
            if not got:
                break
            seen += got
        lost = tracer.lost()["cuda"]
    return float(out.split()[0]), seen, lost


def with_session(exe: str, lib: str, n: int, tmp: str) -> tuple[float, int, int]:
    """ns per call with a whole ``TraceSession`` (no stacks) storing every call in a trace database."""
    import sqlite3

    from ingero.tracer.session import TraceOptions, TraceSession

    db = Path(tmp) / f"overhead-{time.monotonic_ns()}.db"
    proc, release = _gated_loop(exe, lib, n)
    try:
        session = TraceSession(TraceOptions(db=db, stacks=False, preattach=False),
                               pids=[proc.pid]).start()
    except BaseException:
        release()
        proc.kill()
        raise
    session.tracer.attach_symbols(lib, {SYMBOL: 4})
    runner = threading.Thread(target=session.run)
    runner.start()
    time.sleep(0.3)
    try:
        release()
        out = proc.communicate()[0]
    finally:
        session.stop("done")
        runner.join()
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT COUNT(*) FROM events WHERE source = 1").fetchone()[0]
    lost = conn.execute("SELECT COALESCE(SUM(count), 0) FROM lost_events").fetchone()[0]
    conn.close()
    return float(out.split()[0]), stored, lost


def with_bpftrace(exe: str, lib: str, n: int, program: str) -> float:
    """ns per call with bpftrace running ``program`` (started first, waits until attached)."""
    bt = subprocess.Popen(["bpftrace", "-e", program], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    drain = None
    try:
        while True:
            line = bt.stdout.readline()
            if not line:
                raise RuntimeError("bpftrace exited before attaching")
            if line.startswith("Attaching"):
                time.sleep(0.3)  # "Attaching N probes..." is printed just before the attach completes
                break
        drain = threading.Thread(target=lambda: [None for _ in bt.stdout], daemon=True)
        drain.start()  # bpftrace's printf output goes somewhere, as ingero's events do
        return loop(exe, lib, n)
    finally:
        stop(bt, "bpftrace")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    quick = ap.parse_args().quick
    n = 200_000 if quick else 1_000_000
    runs = 3 if quick else 5
    from ingero.workload import wheel_libcudart

    lib = str(wheel_libcudart(12))
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        from ingero.tracer.standard import RUNTIME_SYMBOLS

        # an op above upstream's codes: its argument layout travels in the cookie (cudaGetDeviceCount's: an
        # int read through the first argument at return, when the call succeeded)
        own = RUNTIME_SYMBOLS["cudaGetDeviceCount"]
        cases = {k: [] for k in ("base", "std", "std_own", "std_stacks", "session", "calltracer")}
        for _ in range(runs):
            cases["base"].append((loop(exe, lib, n), 0, 0))
            cases["std"].append(with_standard(exe, lib, n, stacks=False))
            cases["std_own"].append(with_standard(exe, lib, n, stacks=False, op=own))
            cases["std_stacks"].append(with_standard(exe, lib, n, stacks=True))
            cases["session"].append(with_session(exe, lib, n, tmp))
            cases["calltracer"].append(with_ingero(exe, lib, n))
        hist = (f"uprobe:{lib}:{SYMBOL} {{ @s[tid] = nsecs; }} "
                f"uretprobe:{lib}:{SYMBOL} /@s[tid]/ {{ @lat = hist(nsecs - @s[tid]); delete(@s[tid]); }}")
        count = f"uprobe:{lib}:{SYMBOL} {{ @c = count(); }}"
        printf = (f"uprobe:{lib}:{SYMBOL} {{ @s[tid] = nsecs; }} uretprobe:{lib}:{SYMBOL} /@s[tid]/ "
                  f"{{ printf(\"%d %d %d\\n\", tid, nsecs - @s[tid], retval); delete(@s[tid]); }}")
        bt_hist, bt_count, bt_printf = [], [], []
        for _ in range(runs):
            bt_hist.append(with_bpftrace(exe, lib, n, hist))
            bt_count.append(with_bpftrace(exe, lib, n, count))
            bt_printf.append(with_bpftrace(exe, lib, n, printf))
    med = statistics.median

    def ns(key: str) -> float:
        return med(r[0] for r in cases[key])

    def note(key: str, what: str) -> str:
        return (f"{med(r[1] for r in cases[key]):,.0f} events {what}, {med(r[2] for r in cases[key]):,.0f} "
                "lost per run")

    def spread(values) -> str:
        values = [v[0] if isinstance(v, tuple) else v for v in values]
        return f"{min(values):.0f}–{max(values):.0f}"

    b = ns("base")
    spreads = {"std": spread(cases["std"]), "hist": spread(bt_hist)}
    rows = [
        ("uninstrumented loop", b, ""),
        ("**ingero, standard probe set** (`ingero trace`'s handlers): entry+return, latency + 2 args + retval, "
         "every call to Python", ns("std"), note("std", "received")),
        ("ingero, standard probe set, recorded as an op above upstream's (cudaGetDeviceCount's layout from the "
         "cookie: an int read through a pointer at return)", ns("std_own"), note("std_own", "received")),
        ("ingero, standard probe set with user stacks (`ingero trace`'s default)", ns("std_stacks"),
         note("std_stacks", "received")),
        ("ingero, whole `TraceSession` (no stacks): every call stored in SQLite", ns("session"),
         note("session", "stored")),
        ("ingero `CallTracer` (`ingero probe`'s generic path, 6 args)", ns("calltracer"),
         note("calltracer", "received")),
        ("bpftrace: uprobe+uretprobe, latency hist(), in kernel", med(bt_hist), ""),
        ("bpftrace: uprobe+uretprobe, printf() of tid, latency, retval for every call", med(bt_printf),
         "events to user space, like ingero"),
        ("bpftrace: uprobe count()", med(bt_count), ""),
    ]
    print("## Per-call cost (bench_overhead.py)\n")
    print(f"`{SYMBOL}` of libcudart.so.12 called {n:,} times by a C loop; median of {runs} runs of each, all in "
          "the same run. ingero's standard handlers are attached with cudaMemcpy's cookie, so each call is "
          "traced as a copy (two arguments read at entry).\n")
    print("| configuration | ns per call | added ns | note |")
    print("|---|---|---|---|")
    for what, v, extra in rows:
        print(f"| {what} | {v:.0f} | {v - b:.0f} | {extra} |")
    pair = (ns("std") - b) / 1000
    ratio = (ns("std") - b) / (med(bt_hist) - b)
    print(
        f"\ningero's entry+exit pair with latency (the standard probe set, as `ingero trace` runs it) adds "
        f"{pair:.2f} µs per call (target <= 1.5 µs: {'met' if pair <= 1.5 else 'NOT met'}); ratio to "
        f"bpftrace's uprobe+uretprobe latency histogram {ratio:.2f} (target <= 1.0 within noise: "
        f"{'met' if ratio <= 1.0 else 'met within noise' if ratio <= 1.1 else 'NOT met'}; runs spread "
        f"{spreads['std']} ns for ingero, {spreads['hist']} ns for bpftrace). ingero sends every call to user "
        "space, where bpftrace only "
        f"updates an in-kernel histogram; bpftrace doing that (printf) costs {(med(bt_printf) - b) / 1000:.2f} µs. "
        f"With user stacks: {(ns('std_stacks') - b) / 1000:.2f} µs; recorded as one of ingero's own ops "
        f"(layout from the cookie): {(ns('std_own') - b) / 1000:.2f} µs. Command: "
        f"`python bench/bench_overhead.py{' --quick' if quick else ''}`."
    )
    print(notes_markdown(), end="")

if __name__ == "__main__":
    sys.exit(main())
