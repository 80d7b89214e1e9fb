"""``ingero probe run`` recording every call of a tight loop (its argument and latency, printed as they
come) beside bpftrace's printf of the same fields, in the same run.

The loop (bench/native/tightloop.c) calls ``work(i)`` N times and measures itself; each tracer's output
goes to a file whose lines are counted. Reported: events delivered / calls made, the loop's calls per
second, and the per-call cost over the uninstrumented loop (ingero / bpftrace ratio). Target (issue 13):
every event delivered at >= 400k calls/s. Usage: ``python bench/bench_probe_run.py [--quick]`` (root).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
INGERO = os.path.join(os.path.dirname(sys.executable), "ingero")


def loop_ns(stderr: str) -> float:
    m = re.search(r"ns_per_call=([\d.]+)", stderr)
    if not m:
        raise RuntimeError(f"the loop printed no timing: {stderr[-500:]}")
    return float(m.group(1))


def run(cmd: list[str], out_path: Path, timeout: float = 600) -> tuple[str, int]:
    """Run a tracer (or the bare loop); (its stderr, lines it wrote to stdout)."""
    with open(out_path, "w") as out:
        p = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-1000:]}")
    with open(out_path, "rb") as f:
        lines = sum(1 for _ in f)
    return p.stderr, lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 50_000 if args.quick else 200_000
    tmp = Path(tempfile.mkdtemp(prefix="ingero-bench-run-"))
    try:
        exe = tmp / "tightloop"
        # -O0: work() starts with push %rbp, which a uprobe emulates; on this machine a uprobe on an
        # instruction it must single-step out of line (the lea of an -O2 build) costs every tracer ~20x more
        subprocess.run(["gcc", "-O0", "-o", exe, HERE / "native" / "tightloop.c"], check=True, timeout=120)
        bare_err, _ = run([str(exe), str(n)], tmp / "bare.out")
        spec = tmp / "w.probe"
        spec.write_text(f"probe w = {exe}:work(i64 i) -> i64\n    record i, latency\n")
        ing_err, ing_lines = run([INGERO, "probe", "run", str(spec), "--", str(exe), str(n)], tmp / "ingero.out")
        ing_events = ing_lines - 2  # the summary: a blank line and "probe w: ..."
        summary = re.search(r"probe w: (\d+) matched of (\d+) calls(.*)", (tmp / "ingero.out").read_text())
        bt = None
        if shutil.which("bpftrace"):
            prog = (f"uprobe:{exe}:work {{ @s[tid] = nsecs; @a[tid] = arg0; }} "
                    f"uretprobe:{exe}:work {{ printf(\"w i=%d latency=%d\\n\", @a[tid], nsecs - @s[tid]); "
                    "delete(@s[tid]); delete(@a[tid]); }")
            bt_err, bt_lines = run(["bpftrace", "-e", prog, "-c", f"{exe} {n}"], tmp / "bt.out")
            bt_events = sum(1 for line in open(tmp / "bt.out") if line.startswith("w i="))
            bt = (loop_ns(bt_err), bt_events)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = loop_ns(bare_err)
    ing_ns = loop_ns(ing_err)
    print("## probe run: recording every call of a tight loop, beside bpftrace printf\n")
    print(f"`work(i)` called {n} times in a loop that times itself; each tracer records the argument and the "
          "latency of every call and prints it (to a file). Same run, one measurement each (a shared machine).\n")
    print("| tracer | loop ns/call | calls/s | cost ns/call over bare | events delivered / made |")
    print("|---|---|---|---|---|")
    print(f"| none | {base:.1f} | {1e9 / base:,.0f} | - | - |")
    print(f"| ingero probe run (session link, bulk ring) | {ing_ns:.1f} | {1e9 / ing_ns:,.0f} | {ing_ns - base:.0f} "
          f"| {ing_events} / {n} |")
    if bt is not None:
        print(f"| bpftrace uprobe+uretprobe printf | {bt[0]:.1f} | {1e9 / bt[0]:,.0f} | {bt[0] - base:.0f} "
              f"| {bt[1]} / {n} |")
    print()
    if summary:
        print(f"ingero's own count: {summary.group(1)} matched of {summary.group(2)} calls{summary.group(3)}.")
    if bt is not None:
        print(f"Per-call cost ratio ingero / bpftrace: {(ing_ns - base) / max(bt[0] - base, 1e-9):.2f}.")
    print(f"Target: all {n} delivered at >= 400k calls/s; delivered {ing_events} at {1e9 / ing_ns:,.0f} calls/s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
