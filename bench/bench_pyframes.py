"""Cost of Python frames in stacks: per traced call, a Python caller 10 and 30 frames deep, all in one run.

A Python program (the venv's interpreter) recurses to depth D and there calls ``cudaGetLastError`` of the
wheel's libcudart.so.12 through ctypes N times, timing the loop itself. Configurations, each on the same
program: untraced; the standard probe set's entry/return handlers (as ``ingero trace``) without stacks;
with native user stacks (``--stacks``, Python frames off); with native stacks and the Python frames walked in
the kernel (the default). Each configuration's tracer is compiled once and measures every depth; each
figure is the median of ``runs`` runs. Target (issue 12): Python frames add at most 1 µs per call at 30
frames.

Two measures: the caller's own wall time per call (includes everything, and on a loaded machine the
scheduling noise), and the kernel's own accounting of the time spent in the entry and return programs per
call (``run_time_ns / run_cnt`` of each program from ``/proc/self/fdinfo``, with BPF run-time statistics
switched on for the run by ``BPF_ENABLE_STATS``): the second is where the Python frame walk runs, and is
not disturbed by other processes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchproc import notes_markdown, stop  # noqa: E402

SYMBOL = "cudaGetLastError"
DEPTHS = (10, 30)

CALLER = """
import ctypes, sys, time
lib = ctypes.CDLL(sys.argv[1])
fn = getattr(lib, sys.argv[2])
n, depth = int(sys.argv[3]), int(sys.argv[4])

def calls():
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n

def nest(d):
    return calls() if d <= 1 else nest(d - 1)

print("ready", flush=True)
sys.stdin.readline()
print(nest(depth - 1), flush=True)   # <module> + depth - 1 functions: `depth` Python frames at the call
"""


def enable_bpf_stats() -> int:
    """``bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)``: run-time statistics while the returned fd is open."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(0, 0)
    fd = libc.syscall(321, 32, ctypes.byref(attr), ctypes.sizeof(attr))  # SYS_bpf, BPF_ENABLE_STATS
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return fd


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded BPF program."""
    vals = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            vals[k.strip()] = v.strip()
    return int(vals.get("run_time_ns", 0)), int(vals.get("run_cnt", 0))


def run_once(lib: str, n: int, depth: int, tracer=None) -> tuple[float, int]:
    """ns per call of one run (and the calls the tracer saw, 0 untraced)."""
    proc = subprocess.Popen([sys.executable, "-c", CALLER, lib, SYMBOL, str(n), str(depth)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen = 0
        stop_ev = threading.Event()
        consumer = None
        if tracer is not None:
            tracer.follow(proc.pid)

            def consume():
                nonlocal seen
                while not stop_ev.is_set():
                    seen += len(tracer.poll(10)[0])

            consumer = threading.Thread(target=consume)
            consumer.start()
            time.sleep(0.2)
        proc.stdin.write("\n")
        proc.stdin.flush()
        ns = float(proc.stdout.readline())
        proc.wait(timeout=60)
        if consumer is not None:
            stop_ev.set()
            consumer.join()
            while got := len(tracer.poll(0)[0]):
                seen += got
        return ns, seen
    finally:
        stop(proc, "the Python caller")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    quick = ap.parse_args().quick
    n = 50_000 if quick else 200_000
    runs = 3 if quick else 5
    from ingero.tracer.standard import StandardTracer
    from ingero.workload import wheel_libcudart

    lib = str(wheel_libcudart(12))
    import os

    results: dict[tuple[str, int], float] = {}
    kernel: dict[tuple[str, int], float] = {}  # ns in the entry + return programs per call
    seen_ok = True
    stats_fd = enable_bpf_stats()
    configs = [("untraced", None), ("traced, no stacks", (False, False)),
               ("traced, native stacks", (True, False)), ("traced, native + Python stacks", (True, True))]
    for name, cfg in configs:
        tracer = None
        if cfg is not None:
            tracer = StandardTracer([], stacks=cfg[0], python_frames=cfg[1], cuda_ringbuf_pages=4096).start()
            tracer.attach_symbols(lib, {SYMBOL: 4})
        try:
            for depth in DEPTHS:
                vals, kvals = [], []
                for _ in range(runs):
                    before = [prog_stats(f.fd) for f in tracer._fns] if tracer is not None else []
                    ns, seen = run_once(lib, n, depth, tracer)
                    vals.append(ns)
                    if tracer is not None:
                        after = [prog_stats(f.fd) for f in tracer._fns]
                        t = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
                        cnt = after[0][1] - before[0][1]
                        kvals.append(t / max(cnt, 1))
                        if seen != n:
                            seen_ok = False
                results[name, depth] = statistics.median(vals)
                kernel[name, depth] = statistics.median(kvals) if kvals else 0.0
        finally:
            if tracer is not None:
                tracer.close()
    os.close(stats_fd)
    print("## Python frames in stacks (bench_pyframes.py)\n")
    print(f"`{SYMBOL}` of libcudart.so.12 called {n:,} times through ctypes by Python {sys.version.split()[0]} "
          f"code {' and '.join(map(str, DEPTHS))} frames deep; median ns per call of {runs} runs, all "
          "configurations in the same run.\n")
    print("| configuration | " + " | ".join(f"{d} frames: in-kernel ns per call" for d in DEPTHS) + " | "
          + " | ".join(f"{d} frames: caller's ns per call (added)" for d in DEPTHS) + " |")
    print("|---|" + "---|" * (2 * len(DEPTHS)))
    for name, _ in configs:
        cells = [f"{kernel[name, d]:.0f}" if name != "untraced" else "-" for d in DEPTHS]
        wall = [f"{results[name, d]:.0f} ({results[name, d] - results['untraced', d]:+.0f})" for d in DEPTHS]
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(wall) + " |")
    py = {d: kernel["traced, native + Python stacks", d] - kernel["traced, native stacks", d] for d in DEPTHS}
    print(f"\nIn the kernel, the Python frames add {py[10]:.0f} ns per call at 10 frames and {py[30]:.0f} ns at 30 "
          f"frames over native-only stacks (target: at most 1000 ns at 30 frames: "
          f"{'met' if py[30] <= 1000 else 'NOT met'}). The caller's wall time per call includes the uprobe "
          "traps and whatever else the machine ran meanwhile (load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end of this run). "
          + ("Every call was seen by the tracer." if seen_ok else "NOTE: some runs saw fewer events than calls."))
    print(notes_markdown())


if __name__ == "__main__":
    main()
